"""VideoTaskSensor: waits for a video task, deferring to the triggerer.

    wait = VideoTaskSensor(
        task_id="wait_for_video",
        video_task_id="{{ ti.xcom_pull('create_video') }}",
        timeout=2 * 60 * 60,          # the sensor's limit, seconds
    )

execute() asks the sidecar once (GetVideoTask) and returns at once when the
task has already finished; otherwise it defers to VideoTaskTrigger (bounded
by the sensor's `timeout`) and frees its worker slot. With deferrable=False
it waits in the worker instead (for deployments without a triggerer), with the
same outcomes:

- completed: returns the task as a dict in the proto's JSON mapping, so XCom
  carries `videoUrl`, `actualDuration`, ...;
- failed video, unknown id, invalid id, rejected key: AirflowFailException
  (not retried) with the vendor's or the sidecar's message;
- sidecar unavailable: AirflowException (Airflow's retries apply);
- the sensor's timeout: AirflowSensorTimeout.

The sensor overrides execute(), so `mode="reschedule"` does not apply;
`poke()` is one GetVideoTask for callers that want it.
"""

from datetime import timedelta

import grpc

from videotask_airflow._airflow import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    BaseSensorOperator,
)
from videotask_airflow.client import (
    COMPLETED,
    DEFAULT_GET_TIMEOUT,
    DEFAULT_GIVE_UP_AFTER,
    FAILED,
    HEARTBEAT,
    VideoTaskError,
    await_video_task_sync,
    get_video_task_sync,
    status_name,
)
from videotask_airflow.triggers import VideoTaskTrigger, event_for_error, event_for_task

__all__ = ["VideoTaskSensor"]

# Errors of the first GetVideoTask that are final; others (the worker's
# sidecar unavailable, ...) leave the waiting to the trigger or the watch.
_FINAL_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
})

_NOT_RETRIED = frozenset({"failed", "not_found", "invalid_argument", "failed_precondition"})


class VideoTaskSensor(BaseSensorOperator):
    """Waits until a video-generation task has finished.

    Args:
      video_task_id: the vendor's task id (templated).
      target: the sidecar address (templated); default $VIDEOTASK_TARGET, else
        127.0.0.1:50051, read where each step runs (worker or triggerer).
      deferrable: wait in the triggerer (default) or, when False, in the worker.
      give_up_after: seconds of sidecar outage before "unavailable".
      get_timeout: time limit of the first GetVideoTask, seconds.
      **kwargs: BaseSensorOperator's (task_id, timeout, retries, ...).
    """

    template_fields = ("video_task_id", "target")

    def __init__(self, *, video_task_id, target=None, deferrable=True,
                 give_up_after=DEFAULT_GIVE_UP_AFTER, get_timeout=DEFAULT_GET_TIMEOUT, **kwargs):
        super().__init__(**kwargs)
        self.video_task_id = video_task_id
        self.target = target
        self.deferrable = deferrable
        self.give_up_after = give_up_after
        self.get_timeout = get_timeout

    def _check_once(self):
        """The final payload if the task has finished (or the Get's error is
        final), else None."""
        try:
            task = get_video_task_sync(self.video_task_id, target=self.target,
                                       timeout=self.get_timeout)
        except VideoTaskError as e:
            if e.code in _FINAL_CODES:
                return event_for_error(self.video_task_id, e)
            self.log.warning("GetVideoTask %s: %s; waiting for the task anyway",
                             self.video_task_id, e)
            return None
        if task.status in (COMPLETED, FAILED):
            return event_for_task(task)
        self.log.info("video task %s is %s", self.video_task_id, status_name(task.status))
        return None

    def poke(self, context):
        payload = self._check_once()
        if payload is None:
            return False
        self.execute_complete(context, payload)
        return True

    def execute(self, context):
        payload = self._check_once()
        if payload is None:
            if self.deferrable:
                self.defer(
                    trigger=VideoTaskTrigger(
                        video_task_id=self.video_task_id,
                        target=self.target,
                        give_up_after=self.give_up_after,
                    ),
                    method_name="execute_complete",
                    timeout=timedelta(seconds=self.timeout),
                )
            payload = self._wait_in_worker()
        return self.execute_complete(context, payload)

    def _wait_in_worker(self):
        def on_event(event):
            if event.type != HEARTBEAT:
                self.log.info("video task %s: %s", self.video_task_id,
                              status_name(event.task.status))

        try:
            task = await_video_task_sync(
                self.video_task_id,
                target=self.target,
                give_up_after=self.give_up_after,
                timeout=self.timeout,
                on_event=on_event,
            )
        except VideoTaskError as e:
            if e.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise AirflowSensorTimeout(
                    "video task %s: %s" % (self.video_task_id, e.details)) from None
            return event_for_error(self.video_task_id, e)
        return event_for_task(task)

    def execute_complete(self, context, event=None):
        """Returns the completed task as a dict; raises for any other outcome."""
        if not isinstance(event, dict) or "status" not in event:
            raise AirflowException("video task %s: unexpected trigger event %r"
                                   % (self.video_task_id, event))
        status = event["status"]
        if status == "completed":
            return event["task"]
        message = event.get("message") or status
        task_id = event.get("id", self.video_task_id)
        if str(task_id) not in message:
            message = "video task %s: %s" % (task_id, message)
        if status in _NOT_RETRIED:
            raise AirflowFailException(message)
        raise AirflowException(message)
