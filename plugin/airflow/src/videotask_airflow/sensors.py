"""VideoTaskSensor: waits for a video task, deferring to the triggerer.

    wait = VideoTaskSensor(
        task_id="wait_for_video",
        video_task_id="{{ ti.xcom_pull('create_video') }}",
        timeout=2 * 60 * 60,          # the sensor's limit, seconds
        deferrable=True,              # default: [operators] default_deferrable
    )

Three ways to wait, one set of outcomes (videotask_airflow.waiting):

- deferrable (deferrable=True, or [operators] default_deferrable): one
  GetVideoTask, then the trigger waits in the triggerer, bounded by the
  sensor's `timeout`; the worker slot is free meanwhile. With
  start_from_trigger=True (Airflow 2.10+) the scheduler hands the trigger to
  the triggerer directly and no worker runs until the trigger fires;
- in the worker (not deferrable, mode="poke"): a stream from the worker's
  sidecar, held for the whole wait, giving up after `give_up_after` seconds of
  sidecar outage;
- mode="reschedule" (not deferrable): Airflow's BaseSensorOperator.execute
  pokes (one GetVideoTask each) every `poke_interval` (with
  `exponential_backoff` and `max_wait` as Airflow computes them) and gives
  the slot back in between.

Outcomes: the completed task as a dict (XCom: `videoUrl`, `actualDuration`,
...); a failed video, unknown or invalid id or rejected key raise
AirflowFailException; an unavailable sidecar AirflowException (retried);
the timeout AirflowSensorTimeout. soft_fail (and never_fail on Airflow 3)
skip instead of failing; silent_fail waits through sidecar outages.
"""

from datetime import timedelta

from videotask.client import DEFAULT_GET_TIMEOUT, DEFAULT_GIVE_UP_AFTER
from videotask_airflow._airflow import (
    BaseSensorOperator,
    PokeReturnValue,
    StartTriggerArgs,
    default_deferrable,
)
from videotask_airflow.waiting import VideoTaskWaitMixin

__all__ = ["VideoTaskSensor"]


def _is_literal(value):
    """A value Airflow will not render: a string without Jinja markup, or None."""
    return value is None or (isinstance(value, str) and "{{" not in value and "{%" not in value)


class VideoTaskSensor(VideoTaskWaitMixin, BaseSensorOperator):
    """Waits until a video-generation task has finished.

    Args:
      video_task_id: the vendor's task id (templated).
      target: the sidecar address (templated); default $VIDEOTASK_TARGET, else
        127.0.0.1:50051, read where each step runs (worker or triggerer).
      deferrable: wait in the triggerer (True) or in the worker (False);
        default: Airflow's [operators] default_deferrable (False when unset).
      start_from_trigger: Airflow 2.10+: start in the triggerer without a
        worker. Needs a literal video_task_id and target (the scheduler builds
        the trigger without rendering templates); ignored by Airflow 3's
        scheduler, where the sensor defers from a worker as usual.
      give_up_after: seconds of sidecar outage after which a wait in the
        worker ends "unavailable" (retried); default 60.
      trigger_give_up_after: the same for the trigger; default None: the
        trigger waits through outages and the sensor's timeout bounds it.
      get_timeout: time limit of each GetVideoTask, seconds.
      **kwargs: BaseSensorOperator's (task_id, timeout, mode, poke_interval,
        soft_fail, retries, ...).
    """

    template_fields = ("video_task_id", "target")

    def __init__(self, *, video_task_id, target=None, deferrable=None, start_from_trigger=False,
                 give_up_after=DEFAULT_GIVE_UP_AFTER, trigger_give_up_after=None,
                 get_timeout=DEFAULT_GET_TIMEOUT, **kwargs):
        super().__init__(**kwargs)
        self.video_task_id = video_task_id
        self.target = target
        self.give_up_after = give_up_after
        self.trigger_give_up_after = trigger_give_up_after
        self.get_timeout = get_timeout
        if self.reschedule:
            if deferrable or start_from_trigger:
                raise ValueError(
                    "VideoTaskSensor %s: mode='reschedule' pokes from a worker; it cannot be "
                    "deferrable or start_from_trigger (pass one or the other)" % self.task_id)
            deferrable = False
        elif deferrable is None:
            deferrable = start_from_trigger or default_deferrable()
        elif start_from_trigger and not deferrable:
            raise ValueError("VideoTaskSensor %s: start_from_trigger needs deferrable=True"
                             % self.task_id)
        self.deferrable = bool(deferrable)
        if start_from_trigger:
            self._start_from_trigger()

    def _start_from_trigger(self):
        if StartTriggerArgs is None:
            raise ValueError("VideoTaskSensor %s: start_from_trigger needs Airflow 2.10 or later"
                             % self.task_id)
        if not (_is_literal(self.video_task_id) and isinstance(self.video_task_id, str)
                and _is_literal(self.target)):
            raise ValueError(
                "VideoTaskSensor %s: start_from_trigger needs a literal video_task_id and "
                "target: the scheduler builds the trigger from them without rendering "
                "templates or resolving XComs (got %r, %r)"
                % (self.task_id, self.video_task_id, self.target))
        trigger = self.video_task_trigger(self.video_task_id)
        # Per instance: BaseOperator's class attribute is shared.
        self.start_trigger_args = StartTriggerArgs(
            trigger_cls=trigger.serialize()[0],
            trigger_kwargs=trigger.serialize()[1],
            next_method="execute_complete",
            next_kwargs=None,
            timeout=timedelta(seconds=self.wait_timeout()),
        )
        self.start_from_trigger = True

    def wait_timeout(self):
        return self.timeout

    def execute(self, context):
        if self.reschedule:
            # BaseSensorOperator.execute: poke() every poke_interval
            # (exponential_backoff, max_wait), AirflowRescheduleException in
            # between, the timeout counted from the first reschedule.
            return super().execute(context)
        return self.wait_for_video_task(context, self.video_task_id)

    def poke(self, context):
        """One GetVideoTask: False while the task runs, else
        PokeReturnValue(True, the completed task) or the outcome's exception
        (an unreachable sidecar included: AirflowException, retried)."""
        payload = self.check_video_task(self.video_task_id, unavailable_is_final=True)
        if payload is None:
            return False
        return PokeReturnValue(True, self.finish_video_task(context, payload))
