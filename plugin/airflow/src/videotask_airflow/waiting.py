"""VideoTaskWaitMixin: how an operator waits for a video task, shared by
VideoTaskSensor and meant for any operator that must wait for one (an
operator that creates the video and then waits uses the same steps).

The wait: one GetVideoTask; a task already finished ends at once; otherwise
the operator defers to VideoTaskTrigger (bounded by the deferral timeout) or,
when not deferrable, watches the task in the worker. Every outcome, whichever
path brought it, ends through the operator's resume_execution("execute_complete",
{"event": payload}), the call Airflow makes when a trigger fires, so that
soft_fail and the other rules of the operator's base class apply the same way
on every path:

- completed: the task as a dict in the proto's JSON mapping (XCom);
- failed video, unknown or invalid id, rejected key: AirflowFailException
  (not retried);
- sidecar unavailable: AirflowException (Airflow's retries apply);
- the wait's timeout, in the worker or as a deferral the scheduler timed out
  (next_method "__fail__"): AirflowSensorTimeout (not retried), on Airflow 2
  as on 3.

soft_fail (and never_fail, Airflow 3) turn every failure into
AirflowSkipException.

The class that mixes this in sets: target, deferrable, give_up_after
(worker outage bound, seconds), trigger_give_up_after (None: the deferral
timeout bounds the trigger), get_timeout, and wait_timeout() (seconds);
it may override waited_for(context) (how messages name the task).
"""

import time
from datetime import timedelta

import grpc

from videotask.client import (
    COMPLETED,
    FAILED,
    HEARTBEAT,
    VideoTaskError,
    await_video_task_sync,
    format_duration,
    get_video_task_sync,
    status_name,
)
from videotask_airflow._airflow import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
)
from videotask_airflow.triggers import VideoTaskTrigger, event_for_error, event_for_task

__all__ = ["DEFERRAL_TIMEOUT_ERRORS", "VideoTaskWaitMixin"]

#: next_method of a task the scheduler or the triggerer failed while deferred.
TRIGGER_FAIL = "__fail__"

#: next_kwargs["error"] of a deferral that timed out: Airflow 2.x's
#: SchedulerJobRunner.check_trigger_timeouts writes "Trigger/execution
#: timeout"; Airflow 3's writes TriggerFailureReason.TRIGGER_TIMEOUT, a str
#: Enum whose value is "Trigger timeout" (compared with ==: the Enum hashes
#: by its name, so a set lookup would miss it).
DEFERRAL_TIMEOUT_ERRORS = ("Trigger/execution timeout", "Trigger timeout")

# Errors of the first GetVideoTask that are final; others (the worker's
# sidecar unavailable, ...) leave the waiting to the trigger or the watch.
_FINAL_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
})

_NOT_RETRIED = frozenset({"failed", "not_found", "invalid_argument", "failed_precondition"})


def is_deferral_timeout(next_method, next_kwargs):
    """Whether Airflow resumes the task because its deferral timed out."""
    if next_method != TRIGGER_FAIL:
        return False
    error = (next_kwargs or {}).get("error")
    return any(error == known for known in DEFERRAL_TIMEOUT_ERRORS)


class VideoTaskWaitMixin:
    """Waits for a video task; mix in before the Airflow operator base."""

    def wait_timeout(self):
        """The wait's limit in seconds (a sensor's `timeout`)."""
        raise NotImplementedError

    def waited_for(self, context):
        """What is waited for, in messages: "video task ID"."""
        return "video task %s" % getattr(self, "video_task_id", "?")

    def _skips_failures(self):
        """soft_fail, or never_fail (Airflow 3 sensors)."""
        return bool(getattr(self, "soft_fail", False) or getattr(self, "never_fail", False))

    def _tolerates_outages(self):
        """silent_fail: an unavailable sidecar is waited for, within the timeout."""
        return bool(getattr(self, "silent_fail", False))

    # The steps.

    def video_task_trigger(self, video_task_id):
        """The trigger this operator defers to."""
        give_up = None if self._tolerates_outages() else self.trigger_give_up_after
        return VideoTaskTrigger(video_task_id=video_task_id, target=self.target,
                                give_up_after=give_up)

    def check_video_task(self, video_task_id, unavailable_is_final=False):
        """One GetVideoTask: the final payload if the task has finished or the
        Get's error is final (with unavailable_is_final, any error), else None."""
        try:
            task = get_video_task_sync(video_task_id, target=self.target, timeout=self.get_timeout)
        except VideoTaskError as e:
            if unavailable_is_final or e.code in _FINAL_CODES:
                return event_for_error(video_task_id, e)
            self.log.warning("GetVideoTask %s: %s; waiting for the task anyway", video_task_id, e)
            return None
        if task.status in (COMPLETED, FAILED):
            return event_for_task(task)
        self.log.info("video task %s is %s", video_task_id, status_name(task.status))
        return None

    def wait_for_video_task(self, context, video_task_id):
        """The whole wait: returns the completed task as a dict, raises
        TaskDeferred (deferrable) or the outcome's exception."""
        payload = self.check_video_task(video_task_id)
        if payload is None:
            if self.deferrable:
                self.defer(trigger=self.video_task_trigger(video_task_id),
                           method_name="execute_complete",
                           timeout=timedelta(seconds=self.wait_timeout()))
            payload = self._wait_in_worker(video_task_id)
        return self.finish_video_task(context, payload)

    def finish_video_task(self, context, payload):
        """Ends with `payload` the way a fired trigger does."""
        return self.resume_execution("execute_complete", {"event": payload}, context)

    def _wait_in_worker(self, video_task_id):
        def on_event(event):
            if event.type != HEARTBEAT:
                self.log.info("video task %s: %s", video_task_id, status_name(event.task.status))

        timeout = self.wait_timeout()
        start = time.monotonic()
        try:
            task = await_video_task_sync(
                video_task_id,
                target=self.target,
                give_up_after=None if self._tolerates_outages() else self.give_up_after,
                timeout=timeout,
                on_event=on_event,
            )
        except VideoTaskError as e:
            # The wait's time is up: DEADLINE_EXCEEDED, or UNAVAILABLE when the
            # sidecar was never reached before the timeout.
            if e.code == grpc.StatusCode.DEADLINE_EXCEEDED or time.monotonic() - start >= timeout:
                raise self._timed_out("video task %s: not finished within %s: %s" % (
                    video_task_id, format_duration(timeout), e.details)) from None
            return event_for_error(video_task_id, e)
        return event_for_task(task)

    def _timed_out(self, message):
        """The exception of a wait that ran out of time: AirflowSensorTimeout
        (not retried), or AirflowSkipException with soft_fail/never_fail."""
        if self._skips_failures():
            return AirflowSkipException(message)
        return AirflowSensorTimeout(message)

    # What Airflow calls.

    def resume_execution(self, next_method, next_kwargs, context):
        """Airflow's entry point after a deferral (and this mixin's for every
        outcome). A deferral the scheduler timed out ends as a timeout on both
        majors (Airflow 2's BaseOperator would raise TaskDeferralError, which
        Airflow retries); never_fail turns any other failure into a skip."""
        if is_deferral_timeout(next_method, next_kwargs):
            raise self._timed_out("%s did not finish within %s" % (
                self.waited_for(context), format_duration(self.wait_timeout())))
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowSkipException:
            raise
        except AirflowException as e:
            if getattr(self, "never_fail", False):
                raise AirflowSkipException(str(e)) from e
            raise

    def execute_complete(self, context, event=None):
        """Returns the completed task as a dict; raises for any other outcome."""
        default_id = getattr(self, "video_task_id", None)
        if not isinstance(event, dict) or "status" not in event:
            raise AirflowException("video task %s: unexpected trigger event %r"
                                   % (default_id, event))
        status = event["status"]
        if status == "completed":
            return event["task"]
        message = event.get("message") or status
        task_id = event.get("id", default_id)
        if str(task_id) not in message:
            message = "video task %s: %s" % (task_id, message)
        if status in _NOT_RETRIED:
            raise AirflowFailException(message)
        raise AirflowException(message)
