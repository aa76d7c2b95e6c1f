"""Stand-in for airflow.sdk, Airflow 3's Task SDK (tests only): the operator
bases (in the real SDK defined in airflow.sdk.bases.*; here the same classes
as the 2.x paths, whose behaviour follows airflow._stub)."""

from airflow.models.baseoperator import BaseOperator  # noqa: F401
from airflow.sensors.base import BaseSensorOperator, PokeReturnValue  # noqa: F401
