"""VideoTaskTrigger: awaits a video task in Airflow's triggerer.

The trigger watches the task through the sidecar (videotask.client, on
grpc.aio: nothing in run() blocks the event loop, and every trigger of a
triggerer shares one connection per sidecar address) and yields exactly one
TriggerEvent whose payload is

    {"id": "<the task id>",
     "status": "completed" | "failed" | "not_found" | "invalid_argument"
               | "failed_precondition" | "unavailable",
     "task": <the task in the proto's JSON mapping (videoUrl,
              actualDuration, ...), or None>,
     "message": "<what happened, with the vendor's or the sidecar's words>"}

When the triggerer cancels it (reassignment to another triggerer, shutdown),
the stream is closed at once and nothing else is done: watching has no side
effect upstream, so two copies of one trigger running at once are harmless
(the sidecar polls the vendor once per task however many watch it).
"""

import grpc

from videotask.client import (
    COMPLETED,
    FAILED,
    HEARTBEAT,
    VideoTaskError,
    await_video_task,
    status_name,
    task_to_dict,
)
from videotask_airflow._airflow import BaseTrigger, TriggerEvent

__all__ = ["VideoTaskTrigger", "event_for_error", "event_for_task"]

_ERROR_STATUSES = {
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_argument",
    grpc.StatusCode.NOT_FOUND: "not_found",
    grpc.StatusCode.FAILED_PRECONDITION: "failed_precondition",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
}


def event_for_task(task):
    """The event payload of a task that finished (COMPLETED or FAILED)."""
    if task.status == COMPLETED:
        status, message = "completed", "video task %s completed" % task.id
    elif task.status == FAILED:
        status = "failed"
        message = "video task %s failed" % task.id
        if task.error:
            message += ": " + task.error
    else:  # not final: a caller's mistake, never sent by the trigger
        raise ValueError("video task %s is %s, not finished" % (task.id, status_name(task.status)))
    return {"id": task.id, "status": status, "task": task_to_dict(task), "message": message}


def event_for_error(video_task_id, error):
    """The event payload of an await that ended with a VideoTaskError. Codes
    other than the four named ones are reported as "unavailable" (worth a
    retry), with the code in the message."""
    status = _ERROR_STATUSES.get(error.code)
    message = error.details
    if status is None:
        status, message = "unavailable", "%s: %s" % (error.code.name, error.details)
    return {
        "id": video_task_id if isinstance(video_task_id, str) else repr(video_task_id),
        "status": status,
        "task": None,
        "message": message,
    }


class VideoTaskTrigger(BaseTrigger):
    """Waits for a video task through the sidecar; yields one TriggerEvent.

    Args:
      video_task_id: the vendor's task id.
      target: the sidecar address. None (the default) means $VIDEOTASK_TARGET
        of the triggerer process, else 127.0.0.1:50051: it is resolved where
        the trigger runs, since the triggerer has its own sidecar.
      give_up_after: seconds of sidecar outage after which the event is
        "unavailable"; None (the default) waits through any outage, so that
        the deferral's timeout bounds the wait: a triggerer restart
        re-creates every trigger at once, possibly before its sidecar is up.
    """

    def __init__(self, video_task_id, target=None, give_up_after=None):
        super().__init__()
        self.video_task_id = video_task_id
        self.target = target
        self.give_up_after = give_up_after

    def serialize(self):
        return (
            "videotask_airflow.triggers.VideoTaskTrigger",
            {
                "video_task_id": self.video_task_id,
                "target": self.target,
                "give_up_after": self.give_up_after,
            },
        )

    def _on_event(self, event):
        if event.type == HEARTBEAT:
            self.log.debug("video task %s: still %s", self.video_task_id,
                           status_name(event.task.status))
        else:
            self.log.info("video task %s: %s", self.video_task_id, status_name(event.task.status))

    async def run(self):
        try:
            task = await await_video_task(
                self.video_task_id,
                target=self.target,
                give_up_after=self.give_up_after,
                on_event=self._on_event,
            )
        except VideoTaskError as e:
            payload = event_for_error(self.video_task_id, e)
        else:
            payload = event_for_task(task)
        yield TriggerEvent(payload)
