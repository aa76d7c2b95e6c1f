"""Stand-in for the parts of airflow.models.trigger (Airflow 3) the tests use:
the "__fail__" marker and TriggerFailureReason, the str Enum 3.x's scheduler
(check_trigger_timeouts) and triggerer put in next_kwargs["error"]
(airflow-core/src/airflow/models/trigger.py)."""

import enum

TRIGGER_FAIL_REPR = "__fail__"


class TriggerFailureReason(str, enum.Enum):
    TRIGGER_TIMEOUT = "Trigger timeout"
    TRIGGER_FAILURE = "Trigger failure"
