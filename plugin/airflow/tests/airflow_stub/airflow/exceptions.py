"""Stand-in for airflow.exceptions (tests only)."""


class AirflowException(Exception):
    """Airflow fails the task and retries it if it has retries left."""


class AirflowFailException(AirflowException):
    """Airflow fails the task without retrying."""


class AirflowSensorTimeout(AirflowException):
    """A sensor ran out of its timeout (not retried)."""


class TaskDeferred(BaseException):
    """Raised by BaseOperator.defer(): the task hands `trigger` to the triggerer."""

    def __init__(self, *, trigger, method_name, kwargs=None, timeout=None):
        super().__init__()
        self.trigger = trigger
        self.method_name = method_name
        self.kwargs = kwargs
        self.timeout = timeout
