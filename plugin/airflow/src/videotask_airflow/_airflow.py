"""The parts of Airflow this package uses, from Airflow 3 or Airflow 2.7+.

- Operator bases: Airflow 3's Task SDK (`airflow.sdk`), else Airflow 2's
  `airflow.models.baseoperator` and `airflow.sensors.base`. PokeReturnValue
  is taken from the module that defines BaseSensorOperator
  (`airflow.sdk.bases.sensor` / `airflow.sensors.base`).
- Exceptions: `airflow.sdk.exceptions` (Airflow 3.2+, where importing them from
  `airflow.exceptions` is deprecated and warns), else `airflow.exceptions`
  (2.x, 3.0, 3.1).
- Configuration: `airflow.sdk.configuration.conf` when the SDK has it, else
  `airflow.configuration.conf`.
- Triggers: `airflow.triggers.base` in both; StartTriggerArgs from 2.10 on
  (None before).
"""

import importlib

try:  # Airflow 3
    from airflow.sdk import BaseOperator, BaseSensorOperator
except ImportError:  # Airflow 2.7+
    from airflow.models.baseoperator import BaseOperator
    from airflow.sensors.base import BaseSensorOperator

PokeReturnValue = importlib.import_module(BaseSensorOperator.__module__).PokeReturnValue

try:  # Airflow 3.2+
    from airflow.sdk.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowSensorTimeout,
        AirflowSkipException,
    )
except ImportError:  # Airflow 2.x, 3.0, 3.1
    from airflow.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowSensorTimeout,
        AirflowSkipException,
    )

try:  # newer Task SDKs have their own configuration module
    from airflow.sdk.configuration import conf
except ImportError:
    from airflow.configuration import conf

from airflow.triggers.base import BaseTrigger, TriggerEvent

try:  # Airflow 2.10+
    from airflow.triggers.base import StartTriggerArgs
except ImportError:
    StartTriggerArgs = None

__all__ = [
    "AirflowException",
    "AirflowFailException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "BaseOperator",
    "BaseSensorOperator",
    "BaseTrigger",
    "PokeReturnValue",
    "StartTriggerArgs",
    "TriggerEvent",
    "conf",
    "default_deferrable",
]


def default_deferrable():
    """[operators] default_deferrable, as Airflow's own deferrable operators
    read it (False when unset)."""
    return conf.getboolean("operators", "default_deferrable", fallback=False)
