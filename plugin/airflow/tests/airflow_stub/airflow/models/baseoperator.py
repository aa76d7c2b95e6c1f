"""Stand-in for BaseOperator (tests only): Airflow 2's airflow.models.baseoperator
and Airflow 3's airflow.sdk.bases.operator, at the points videotask_airflow
relies on. Behaviour that differs between the majors follows airflow._stub."""

import logging

from airflow import _stub
from airflow.exceptions import (
    AirflowException,
    TaskDeferralError,
    TaskDeferralTimeout,
    TaskDeferred,
)
from airflow.models.trigger import TRIGGER_FAIL_REPR, TriggerFailureReason


class BaseOperator:
    template_fields = ()
    # Airflow 2.10+ (and 3.x) BaseOperator class attributes: an operator that
    # sets start_trigger_args can be started from the triggerer.
    start_trigger_args = None
    start_from_trigger = False

    def __init__(self, *, task_id, retries=0, **kwargs):
        if kwargs:
            # BaseOperator.__init__ rejects unknown arguments: AirflowException
            # in 2.x (airflow/models/baseoperator.py), TypeError in 3.x
            # (task-sdk/src/airflow/sdk/bases/operator.py).
            error = AirflowException if _stub.major() == 2 else TypeError
            raise error(
                "Invalid arguments were passed to %s (task_id: %s). Invalid arguments were:\n"
                "**kwargs: %s" % (type(self).__name__, task_id, kwargs))
        self.task_id = task_id
        self.retries = retries

    @property
    def log(self):
        return logging.getLogger("airflow.task.operators." + type(self).__name__)

    def render_template_fields(self, context, jinja_env=None):
        """Renders every template field in place (airflow.template.templater,
        the stand-in's: not Jinja)."""
        from airflow.template.templater import render_template_fields

        render_template_fields(self, context)

    def defer(self, *, trigger, method_name, kwargs=None, timeout=None):
        raise TaskDeferred(trigger=trigger, method_name=method_name, kwargs=kwargs,
                           timeout=timeout)

    def resume_execution(self, next_method, next_kwargs, context):
        """What the task runs instead of execute() when it comes back from a
        deferral. "__fail__" means the scheduler or the triggerer failed the
        deferral: 2.x (BaseOperator.next_callable) raises TaskDeferralError
        whatever the error; 3.x (BaseOperator.resume_execution) raises
        TaskDeferralTimeout for TriggerFailureReason.TRIGGER_TIMEOUT and
        TaskDeferralError otherwise. Else next_method is called with the
        context and next_kwargs (the trigger's payload is next_kwargs["event"])."""
        next_kwargs = next_kwargs or {}
        if next_method == TRIGGER_FAIL_REPR:
            error = next_kwargs.get("error", "Unknown")
            if _stub.major() == 3 and error == TriggerFailureReason.TRIGGER_TIMEOUT:
                raise TaskDeferralTimeout(error)
            raise TaskDeferralError(error)
        return getattr(self, next_method)(context, **next_kwargs)
