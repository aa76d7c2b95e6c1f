"""Stand-in for airflow.sdk.exceptions (Airflow 3.2+, where airflow.exceptions
warns on these names): the same classes as the stand-in's airflow.exceptions,
as in 3.2 where airflow.exceptions hands out the SDK's classes."""

from airflow.exceptions import (  # noqa: F401
    AirflowException,
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferralError,
    TaskDeferralTimeout,
    TaskDeferred,
)
