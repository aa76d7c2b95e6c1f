"""VideoGenerateOperator: creates a video through the videotask sidecar,
exactly once per task instance, then waits for it as VideoTaskSensor does.

    generate = VideoGenerateOperator(
        task_id="generate_video",
        family="videos",
        body={"model": "videos", "prompt": "{{ params.prompt }}", "duration": 10},
        deferrable=True,            # default: [operators] default_deferrable
        timeout=2 * 60 * 60,        # the wait's limit, seconds
        retries=3,                  # only what surely created nothing is retried
    )
    # downstream: ti.xcom_pull("generate_video")["videoUrl"]

execute() calls CreateVideoTask (docs/create.md) with a request_id derived
from the task instance's identity: dag_id, task_id, run_id and map_index
(Airflow's task_instance primary key; try_number is not part of it), so
every retry of the task asks for the same video and the sidecar sends the
vendor at most one create for it, also when a worker died after the vendor
accepted. Then the wait of VideoTaskWaitMixin: one GetVideoTask, then a
deferral to VideoTaskTrigger (method_name "execute_complete", the sensor's)
or, not deferrable, a watch from the worker. The result is the sensor's:
the completed task as a dict (videoUrl, actualDuration, archive, ...).

Create outcomes (the sidecar's code -> the task):
- ABORTED, the outcome is unknown (the vendor may have created the video):
  VideoCreateOutcomeUnknown, an AirflowFailException: not retried, since a
  retry with the same request_id only gets ABORTED again;
- INVALID_ARGUMENT (a bad body or the vendor's refusal), ALREADY_EXISTS (the
  request_id was used with another family or body), FAILED_PRECONDITION (the
  vendor rejects the API key), PERMISSION_DENIED (creates are off on that
  listener): VideoCreateRefused, an AirflowFailException: not retried;
- RESOURCE_EXHAUSTED (the sidecar's spend guard, --max_creates_per_hour;
  nothing sent), UNAVAILABLE (nothing created: the sidecar unreachable, the
  vendor busy until the deadline), DEADLINE_EXCEEDED (no answer within
  create_timeout: the sidecar remembers the outcome of what it sent) and
  anything else: AirflowException, retried by Airflow's `retries` with the
  same request_id, so a retry never creates a second video for the key.
"""

import hashlib
import json
from collections.abc import Mapping
from datetime import timedelta

import grpc

from videotask.client import (
    DEFAULT_CREATE_TIMEOUT,
    DEFAULT_GET_TIMEOUT,
    DEFAULT_GIVE_UP_AFTER,
    VideoTaskError,
    create_video_task_sync,
    format_duration,
)
from videotask_airflow._airflow import (
    AirflowException,
    AirflowFailException,
    BaseOperator,
    default_deferrable,
)
from videotask_airflow.waiting import VideoTaskWaitMixin

__all__ = [
    "DEFAULT_TIMEOUT",
    "VideoCreateOutcomeUnknown",
    "VideoCreateRefused",
    "VideoGenerateOperator",
    "request_id_for",
]

#: The wait's default limit after the create, seconds.
DEFAULT_TIMEOUT = 2 * 60 * 60.0

#: The prefix of derived request ids (and the derivation's version).
REQUEST_ID_PREFIX = "airflow-v1-"


class VideoCreateOutcomeUnknown(AirflowFailException):
    """The create was sent and its answer lost (ABORTED): the vendor may have
    created the video. Not retried; `code` is the gRPC code's name."""

    code = "ABORTED"


class VideoCreateRefused(AirflowFailException):
    """The create was refused and nothing was created (the vendor's refusal or
    a bad request, the request_id used with another body, a rejected API key,
    creates not allowed). Not retried; `code` is the gRPC code's name."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def _seconds(name, value):
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("VideoGenerateOperator: %s must be a positive number of seconds or a "
                         "timedelta, not %r" % (name, value))
    return float(value)


def request_id_for(context):
    """The request_id of the task instance running with `context`: stable
    across its tries, different for another DAG, task, run or map index.

    From context["ti"]: dag_id, task_id, run_id and map_index, the columns of
    Airflow 2's task_instance primary key (airflow/models/taskinstance.py)
    and fields of Airflow 3's TaskInstance (task-sdk/src/airflow/sdk/api/
    datamodels/_generated.py; map_index -1, or None, when not mapped). The
    key is "airflow-v1-" + the SHA-256 of the four as a JSON array: at most
    128 printable characters whatever the ids' lengths (each may have 250)."""
    ti = context["ti"]
    map_index = getattr(ti, "map_index", -1)
    identity = [ti.dag_id, ti.task_id, ti.run_id, -1 if map_index is None else int(map_index)]
    digest = hashlib.sha256(json.dumps(identity, separators=(",", ":")).encode("utf-8"))
    return REQUEST_ID_PREFIX + digest.hexdigest()


class VideoGenerateOperator(VideoTaskWaitMixin, BaseOperator):
    """Creates one video per task instance through the sidecar and waits for it.

    Args:
      family: the vendor's model family (templated): `videos`, `kyyvideo2`,
        `sora`, ... (the path segment of its create endpoint).
      body: the family's request body (templated): a dict whose strings are
        rendered (nested dicts and lists too), or a str that renders to a JSON
        object (then its numbers are numbers). A rendered "{{ ... }}" in a
        dict is a string: "10", not 10, unless the DAG sets
        render_template_as_native_obj=True. Integral numbers reach the vendor
        as integers (10 and 10.0 alike).
      request_id: the idempotency key (templated); default: derived from dag
        id, task id, run id and map index (request_id_for), the same for every
        try. Give one to choose what counts as "the same video".
      target: the sidecar address (templated); default $VIDEOTASK_TARGET, else
        127.0.0.1:50051, read where each step runs (worker or triggerer).
      create_target: the sidecar that creates (templated); default `target`.
        The key lives in that sidecar's memory, so a retry is deduplicated
        only when it reaches the same one: point every worker's creates at
        one shared sidecar here, and keep `target` (the waits) local.
      deferrable: wait in the triggerer (True) or in the worker (False);
        default: Airflow's [operators] default_deferrable (False when unset).
      timeout: the wait's limit after the create (seconds or a timedelta;
        2 h): the deferral's timeout, or the worker's; AirflowSensorTimeout
        (not retried) after it.
      create_timeout: the CreateVideoTask call's deadline, seconds (60): the
        sidecar retries answers that surely created nothing within it.
      give_up_after: seconds of sidecar outage after which a wait in the
        worker ends "unavailable" (retried); default 60.
      trigger_give_up_after: the same for the trigger; default None (the
        deferral's timeout bounds it).
      get_timeout: time limit of the first GetVideoTask, seconds.
      **kwargs: BaseOperator's (task_id, retries, retry_delay, ...).
    """

    template_fields = ("family", "body", "request_id", "target", "create_target")
    template_fields_renderers = {"body": "json"}
    ui_color = "#e8f4fd"

    def __init__(self, *, family, body, request_id=None, target=None, create_target=None,
                 deferrable=None, timeout=DEFAULT_TIMEOUT, create_timeout=DEFAULT_CREATE_TIMEOUT,
                 give_up_after=DEFAULT_GIVE_UP_AFTER, trigger_give_up_after=None,
                 get_timeout=DEFAULT_GET_TIMEOUT, **kwargs):
        super().__init__(**kwargs)
        self.family = family
        self.body = body
        self.request_id = request_id
        self.target = target
        self.create_target = create_target
        self.deferrable = bool(default_deferrable() if deferrable is None else deferrable)
        self.timeout = _seconds("timeout", timeout)
        self.create_timeout = _seconds("create_timeout", create_timeout)
        self.give_up_after = give_up_after
        self.trigger_give_up_after = trigger_give_up_after
        self.get_timeout = get_timeout
        self.video_task_id = None  # set once created

    def wait_timeout(self):
        return self.timeout

    def waited_for(self, context):
        if self.video_task_id:
            return "video task %s" % self.video_task_id
        try:
            return "the video task of request_id %s" % self._request_id(context)
        except Exception:  # a message must not hide the timeout it reports
            return "the video task of %s" % self.task_id

    def _request_id(self, context):
        if self.request_id is None or self.request_id == "":
            return request_id_for(context)
        if not isinstance(self.request_id, str):
            raise AirflowFailException("VideoGenerateOperator %s: request_id must render to a "
                                       "string, not %s" % (self.task_id,
                                                           type(self.request_id).__name__))
        if "{{" in self.request_id or "{%" in self.request_id:
            # Airflow keeps a template field whose rendering is empty as it
            # was (Templater._do_render_template_fields sets only truthy
            # results): used as a key, the template's text would be shared by
            # every task instance whose template renders empty.
            raise AirflowFailException(
                "VideoGenerateOperator %s: request_id %r was not rendered (Airflow leaves a "
                "template field that renders empty as it was); nothing was sent. Make it render "
                "to a non-empty key, or leave request_id unset for the derived one"
                % (self.task_id, self.request_id))
        return self.request_id

    def _body(self):
        """The rendered body as a dict: a str is parsed as JSON."""
        body = self.body
        if isinstance(body, (str, bytes)):
            try:
                body = json.loads(body)
            except ValueError as e:
                raise VideoCreateRefused(
                    "VideoGenerateOperator %s: the body rendered to a string that is not JSON "
                    "(%s); nothing was sent" % (self.task_id, e), "INVALID_ARGUMENT") from None
        if not isinstance(body, Mapping):
            raise VideoCreateRefused(
                "VideoGenerateOperator %s: the body must be a dict or a JSON object, not %s; "
                "nothing was sent" % (self.task_id, type(body).__name__), "INVALID_ARGUMENT")
        return body

    def execute(self, context):
        request_id = self._request_id(context)
        body = self._body()
        self.log.info("creating a video of family %s (request_id %s)", self.family, request_id)
        try:
            task = create_video_task_sync(self.family, body, request_id=request_id,
                                          target=self.create_target or self.target,
                                          timeout=self.create_timeout)
        except VideoTaskError as e:
            raise self._create_failed(e, request_id) from None
        self.video_task_id = task.id
        self.log.info("video task %s (request_id %s): waiting for it%s", task.id, request_id,
                      " in the triggerer" if self.deferrable else " in the worker")
        return self.wait_for_video_task(context, task.id)

    def _create_failed(self, e, request_id):
        """The exception for a CreateVideoTask that failed with `e`."""
        what = "create of a %s video (request_id %s)" % (self.family, request_id)
        code = e.code
        if code == grpc.StatusCode.ABORTED:
            return VideoCreateOutcomeUnknown(
                "%s: the outcome is unknown, the vendor may have created the video (and may "
                "bill it): %s. Not retried: a retry with this request_id gets the same answer "
                "and never sends a second create. If a possible duplicate is acceptable, run "
                "the task with another request_id (the operator's request_id argument)"
                % (what, e.details))
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return VideoCreateRefused("%s refused, nothing was created: %s" % (what, e.details),
                                      code.name)
        if code == grpc.StatusCode.ALREADY_EXISTS:
            return VideoCreateRefused(
                "%s: this request_id was used before with another family or body (did the "
                "body render differently in this try?); nothing was sent: %s. For another "
                "video give the task another request_id" % (what, e.details), code.name)
        if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED):
            return VideoCreateRefused("%s: %s: %s" % (what, code.name, e.details), code.name)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return AirflowException(
                "%s: the sidecar's spend guard refused it, nothing was sent: %s. Retried as "
                "Airflow's retries allow (the same request_id: no duplicate)" % (what, e.details))
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return AirflowException(
                "%s: no answer within create_timeout (%s): %s. The sidecar still waits for a "
                "request it sent and remembers its outcome: a retry, with the same "
                "request_id, gets it without a second create" % (
                    what, format_duration(self.create_timeout), e.details))
        return AirflowException("%s: %s: %s (retried as Airflow's retries allow, with the same "
                                "request_id)" % (what, code.name, e.details))
