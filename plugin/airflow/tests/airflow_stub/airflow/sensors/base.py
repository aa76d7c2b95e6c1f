"""Stand-in for BaseSensorOperator (tests only): Airflow 2's airflow.sensors.base
(2.10) and Airflow 3's airflow.sdk.bases.sensor, at the points
videotask_airflow relies on. Behaviour that differs between the majors
follows airflow._stub; the code is the stand-in's own, written from the
behaviour of the functions named in each docstring."""

import datetime
import logging
import time

from airflow import _stub
from airflow.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferralError,
    TaskDeferralTimeout,
)
from airflow.models.baseoperator import BaseOperator

log = logging.getLogger(__name__)


class PokeReturnValue:
    """poke()'s answer with the XCom value the sensor returns when done."""

    def __init__(self, is_done, xcom_value=None):
        self.is_done = is_done
        self.xcom_value = xcom_value

    def __bool__(self):
        return self.is_done


def _seconds(name, value):
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    raise AirflowException(
        "Operator arg `%s` must be timedelta object or a non-negative number" % name)


class BaseSensorOperator(BaseOperator):
    valid_modes = ("poke", "reschedule")

    def __init__(self, *, poke_interval=60, timeout=60 * 60 * 24 * 7, soft_fail=False,
                 mode="poke", exponential_backoff=False, max_wait=None, silent_fail=False,
                 **kwargs):
        # never_fail exists in 3.x only; 2.x's BaseOperator rejects it as an
        # unknown argument.
        never_fail = kwargs.pop("never_fail", False) if _stub.major() == 3 else False
        super().__init__(**kwargs)
        self.poke_interval = _seconds("poke_interval", poke_interval)
        self.timeout = _seconds("timeout", timeout)
        self.soft_fail = soft_fail
        self.mode = mode
        self.exponential_backoff = exponential_backoff
        self.max_wait = max_wait
        self.silent_fail = silent_fail
        if _stub.major() == 3:
            if soft_fail and never_fail:
                raise ValueError(
                    "soft_fail and never_fail are mutually exclusive, you can not provide both.")
            self.never_fail = never_fail
        if self.mode not in self.valid_modes:
            raise AirflowException("The mode must be one of %s, received '%s'."
                                   % (list(self.valid_modes), self.mode))

    @property
    def reschedule(self):
        return self.mode == "reschedule"

    def poke(self, context):
        raise AirflowException("Override me.")

    def execute(self, context):
        """BaseSensorOperator.execute: poke until done, then return the
        PokeReturnValue's xcom_value. What poke() raises: soft_fail (and
        never_fail in 3.x) skip AirflowSensorTimeout/AirflowFailException;
        another exception is logged and ignored with silent_fail, skipped with
        soft_fail (2.x) or never_fail (3.x), else raised. Past `timeout`
        (counted in reschedule mode from the first reschedule of this try,
        which 2.x reads with TaskReschedule.find_for_task_instance and 3.x
        with ti.get_first_reschedule_date; the stand-in's ti has the latter)
        it raises AirflowSensorTimeout, or skips with soft_fail. In
        reschedule mode a poke that is not done raises
        AirflowRescheduleException(now + poke_interval); the stand-in does
        not mirror exponential_backoff's jitter (Airflow computes it in
        _get_next_poke_interval)."""
        major = _stub.major()
        never_fail = getattr(self, "never_fail", False)
        if self.reschedule:
            started = context["ti"].get_first_reschedule_date(context) or _utcnow()

            def run_duration():
                return (_utcnow() - started).total_seconds()
        else:
            start = time.monotonic()

            def run_duration():
                return time.monotonic() - start
        while True:
            try:
                result = self.poke(context)
            except (AirflowSensorTimeout, AirflowFailException) as e:
                if self.soft_fail or never_fail:
                    raise AirflowSkipException("Skipping due to soft_fail/never_fail.") from e
                raise
            except AirflowSkipException:
                raise
            except Exception as e:
                if self.silent_fail:
                    log.error("Sensor poke failed: %s", e)
                    result = False
                elif (self.soft_fail if major == 2 else never_fail):
                    raise AirflowSkipException("Skipping due to soft_fail/never_fail.") from e
                else:
                    raise
            if result:
                return result.xcom_value if isinstance(result, PokeReturnValue) else None
            if run_duration() > self.timeout:
                message = "Sensor has timed out; run duration of %s seconds exceeds %s." % (
                    run_duration(), self.timeout)
                if self.soft_fail:
                    raise AirflowSkipException(message)
                raise AirflowSensorTimeout(message)
            if self.reschedule:
                raise AirflowRescheduleException(
                    _utcnow() + datetime.timedelta(seconds=self.poke_interval))
            time.sleep(self.poke_interval)

    def resume_execution(self, next_method, next_kwargs, context):
        """BaseSensorOperator.resume_execution: 3.x turns TaskDeferralTimeout
        into AirflowSensorTimeout; both majors turn any AirflowException
        (TaskDeferralError included) into AirflowSkipException when
        soft_fail is set."""
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except TaskDeferralTimeout as e:
            if _stub.major() == 2:  # 2.x has no TaskDeferralTimeout path
                raise
            raise AirflowSensorTimeout(*e.args) from e
        except (AirflowException, TaskDeferralError) as e:
            if self.soft_fail:
                raise AirflowSkipException(str(e)) from e
            raise


def _utcnow():
    return datetime.datetime.now(datetime.timezone.utc)
