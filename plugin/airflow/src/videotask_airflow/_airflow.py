"""The parts of Airflow this package uses, from Airflow 3 or Airflow 2.7+.

Airflow 3 moved the operator bases to the Task SDK (`airflow.sdk`); Airflow 2
has them in `airflow.sensors.base`. Triggers and exceptions keep their paths
in both.
"""

try:  # Airflow 3
    from airflow.sdk import BaseSensorOperator
except ImportError:  # Airflow 2.7+
    from airflow.sensors.base import BaseSensorOperator

from airflow.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    TaskDeferred,
)
from airflow.triggers.base import BaseTrigger, TriggerEvent

__all__ = [
    "AirflowException",
    "AirflowFailException",
    "AirflowSensorTimeout",
    "BaseSensorOperator",
    "BaseTrigger",
    "TaskDeferred",
    "TriggerEvent",
]
