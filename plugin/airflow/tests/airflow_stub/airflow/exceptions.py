"""Stand-in for airflow.exceptions (tests only): the classes videotask_airflow
and the stand-in's operators use, with Airflow's hierarchy (airflow/exceptions.py
in 2.x; task-sdk/src/airflow/sdk/exceptions.py in 3.x, re-exported by
airflow.exceptions)."""


class AirflowException(Exception):
    """Airflow fails the task and retries it if it has retries left."""


class AirflowFailException(AirflowException):
    """Airflow fails the task without retrying."""


class AirflowSensorTimeout(AirflowException):
    """A sensor ran out of its timeout (not retried)."""


class AirflowSkipException(AirflowException):
    """The task is marked SKIPPED."""


class AirflowRescheduleException(AirflowException):
    """A sensor in reschedule mode gives its slot back until reschedule_date."""

    def __init__(self, reschedule_date):
        super().__init__()
        self.reschedule_date = reschedule_date


class TaskDeferralError(AirflowException):
    """A deferral failed: raised by resume_execution for next_method "__fail__"."""


class TaskDeferralTimeout(AirflowException):
    """Airflow 3: a deferral that timed out (3.x resume_execution raises it)."""


class TaskDeferred(BaseException):
    """Raised by BaseOperator.defer(): the task hands `trigger` to the triggerer."""

    def __init__(self, *, trigger, method_name, kwargs=None, timeout=None):
        super().__init__()
        self.trigger = trigger
        self.method_name = method_name
        self.kwargs = kwargs
        self.timeout = timeout
