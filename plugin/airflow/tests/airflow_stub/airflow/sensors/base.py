"""Stand-in for airflow.sensors.base (tests only)."""

import datetime
import logging

from airflow.exceptions import AirflowException, TaskDeferred


class BaseSensorOperator:
    """The few BaseSensorOperator/BaseOperator behaviours the sensor relies on."""

    template_fields = ()

    def __init__(self, *, task_id, timeout=60 * 60 * 24 * 7, poke_interval=60, mode="poke",
                 soft_fail=False, retries=0, **kwargs):
        if kwargs:
            # Airflow's BaseOperator rejects unknown arguments the same way.
            raise AirflowException(
                "Invalid arguments were passed to %s (task_id: %s). Invalid arguments were:\n"
                "**kwargs: %s" % (type(self).__name__, task_id, kwargs))
        self.task_id = task_id
        if isinstance(timeout, datetime.timedelta):
            timeout = timeout.total_seconds()
        self.timeout = float(timeout)
        self.poke_interval = poke_interval
        self.mode = mode
        self.soft_fail = soft_fail
        self.retries = retries

    @property
    def log(self):
        return logging.getLogger("airflow.task.operators." + type(self).__name__)

    def poke(self, context):
        raise AirflowException("Override me.")

    def defer(self, *, trigger, method_name, kwargs=None, timeout=None):
        raise TaskDeferred(trigger=trigger, method_name=method_name, kwargs=kwargs,
                           timeout=timeout)
