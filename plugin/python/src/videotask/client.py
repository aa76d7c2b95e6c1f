"""An asyncio client of videotask.v1.VideoTaskService (no workflow engine needed).

    task = await await_video_task("proj_123", give_up_after=60, on_event=print)
    task = await_video_task_sync("proj_123")          # from synchronous code

`await_video_task` watches the task through the sidecar until it is COMPLETED
or FAILED and returns it (a failed video is a result, not an error). It has the
reconnect rules of the C++ client (plugin/client.h) and the Temporal package
(plugin/temporal/src/client.ts):

- it opens a new stream on UNAVAILABLE, RESOURCE_EXHAUSTED, CANCELLED and
  DEADLINE_EXCEEDED sent by the server (only the caller's own `timeout` is a
  timeout), and on a stream that ends without a final state, after an
  exponential backoff with jitter and a wait for the channel to be READY;
- it gives up with UNAVAILABLE once the sidecar has been unhealthy for
  `give_up_after` seconds: the outage clock starts with the call and restarts
  only when a stream was healthy (it brought a status not reported before, or
  stayed open 10 s), so a flapping sidecar runs the budget out too;
  `give_up_after=None` never gives up (the caller's `timeout`, or its
  cancellation, is then the only bound);
- when the give-up point or the timeout comes and the sidecar was never
  reached, the error is UNAVAILABLE "sidecar at ADDR unreachable for Ns";
- INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION and any other code are
  final;
- a resumed stream's SNAPSHOT that repeats the last reported status is not
  reported again; one whose status changed while disconnected is reported as
  a TRANSITION from the last reported status;
- cancelling the awaiting asyncio task closes the stream at once.

`create_video_task` (and `create_video_task_sync`) asks the sidecar to
create a task at the vendor, exactly once per `request_id` (CreateVideoTask;
docs/create.md): the body is converted to a google.protobuf.Struct here,
refusing what JSON cannot carry or a double cannot hold exactly (integers
beyond 2**53), and the sidecar sends integral numbers as integers.

Errors are `VideoTaskError` (a gRPC status code and message).
"""

import asyncio
import inspect
import logging
import math
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import Mapping

import grpc
from google.protobuf import json_format, struct_pb2

from videotask._proto import video_task_pb2 as pb
from videotask._proto import video_task_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_TARGET",
    "VideoTaskError",
    "await_video_task",
    "await_video_task_sync",
    "body_to_struct",
    "close_shared_channels",
    "create_video_task",
    "create_video_task_sync",
    "get_video_task",
    "get_video_task_sync",
    "new_request_id",
    "resolve_target",
    "shared_channel",
    "status_name",
    "task_to_dict",
]

log = logging.getLogger(__name__)

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_GIVE_UP_AFTER = 60.0
DEFAULT_INITIAL_BACKOFF = 0.2
DEFAULT_MAX_BACKOFF = 10.0
DEFAULT_GET_TIMEOUT = 10.0
#: CreateVideoTask's default deadline: the sidecar retries what surely created
#: nothing (429, 503, no connection) within it, and one vendor request may
#: take up to 30 s.
DEFAULT_CREATE_TIMEOUT = 60.0
#: The largest integer a Struct number (a double) holds exactly.
MAX_EXACT_INTEGER = 2 ** 53
#: A stream open at least this long was healthy (ends the outage), messages or not.
HEALTHY_STREAM = 10.0
#: The longest single wait for a channel state change (re-checks the give-up point).
_READY_WAIT_SLICE = 1.0
#: How long the status of a finished or cancelled stream is waited for.
_FINISH_WAIT = 1.0

QUEUED = pb.VIDEO_TASK_STATUS_QUEUED
PROCESSING = pb.VIDEO_TASK_STATUS_PROCESSING
COMPLETED = pb.VIDEO_TASK_STATUS_COMPLETED
FAILED = pb.VIDEO_TASK_STATUS_FAILED
UNSPECIFIED = pb.VIDEO_TASK_STATUS_UNSPECIFIED

SNAPSHOT = pb.WatchVideoTaskResponse.EVENT_TYPE_SNAPSHOT
TRANSITION = pb.WatchVideoTaskResponse.EVENT_TYPE_TRANSITION
HEARTBEAT = pb.WatchVideoTaskResponse.EVENT_TYPE_HEARTBEAT

#: Channel options: keep long-lived streams verified, reconnect quickly after a restart.
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)

# Worth a new stream: the sidecar restarting or draining (UNAVAILABLE, or
# CANCELLED when it closed the connection), a slow-watcher cut
# (RESOURCE_EXHAUSTED), a DEADLINE_EXCEEDED that is not the caller's, or a
# stream that ended without a final state (OK). The caller's cancellation and
# timeout are handled before this is asked.
_RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.OK,
})


class VideoTaskError(Exception):
    """An await or get that ended with a gRPC status other than OK."""

    def __init__(self, code, details):
        super().__init__("%s: %s" % (code.name, details))
        self.code = code
        self.details = details


def resolve_target(target=None):
    """`target` if given, else $VIDEOTASK_TARGET, else 127.0.0.1:50051."""
    return target or os.environ.get("VIDEOTASK_TARGET") or DEFAULT_TARGET


def status_name(status):
    """"COMPLETED" for VIDEO_TASK_STATUS_COMPLETED, and so on."""
    return pb.VideoTaskStatus.Name(status).replace("VIDEO_TASK_STATUS_", "")


def task_to_dict(task):
    """The task in the proto's JSON mapping (camelCase, default values left out),
    e.g. {"id", "model", "status": "VIDEO_TASK_STATUS_COMPLETED", "videoUrl",
    "actualDuration": "8s", "createTime": "2025-...Z", "observeTime": ...}, as
    the `videotask` CLI prints it."""
    return json_format.MessageToDict(task)


def event_to_dict(event):
    """A WatchVideoTaskResponse in the proto's JSON mapping."""
    return json_format.MessageToDict(event)


# One channel per event loop and target: every await in a loop (e.g. the 500
# triggers of a triggerer) shares one HTTP/2 connection. grpc.aio channels
# belong to the loop they were made in.
_channels = weakref.WeakKeyDictionary()
_channels_lock = threading.Lock()


def shared_channel(target=None):
    """The channel of the running event loop to `target` (made on first use)."""
    target = resolve_target(target)
    loop = asyncio.get_running_loop()
    with _channels_lock:
        per_loop = _channels.setdefault(loop, {})
        channel = per_loop.get(target)
        if channel is None:
            channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            per_loop[target] = channel
        return channel


async def close_shared_channels():
    """Closes the running loop's shared channels (calls in flight are cancelled)."""
    loop = asyncio.get_running_loop()
    with _channels_lock:
        per_loop = _channels.pop(loop, {})
    if per_loop:
        await _settle_cancelled_calls()
    for channel in per_loop.values():
        await channel.close()


def _is_status_task(task):
    coro = task.get_coro()
    return getattr(coro, "__qualname__", "").endswith("_handle_status_once_received")


async def _settle_cancelled_calls(limit=2.0):
    """Waits (at most `limit` seconds) until grpc.aio has taken the final
    status of every cancelled call. A cancelled call is done at once, but
    grpc.aio (1.51) still waits for the status in a task of its own; closing
    the channel while hundreds of those are pending makes the event loop's
    shutdown hang in grpc.aio."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while loop.time() < end and any(_is_status_task(t) for t in asyncio.all_tasks(loop)):
        await asyncio.sleep(0.01)


def _check_id(video_task_id):
    if not isinstance(video_task_id, str):
        raise VideoTaskError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the video task id must be a string, not %s" % type(video_task_id).__name__)


def _seconds(name, value, allow_none=False):
    """A positive finite number of seconds as a float; INVALID_ARGUMENT otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise VideoTaskError(grpc.StatusCode.INVALID_ARGUMENT,
                             "%s must be a positive number of seconds, not %r" % (name, value))
    return float(value)


def format_duration(seconds):
    """Like absl::FormatDuration of the C++ client, truncated to 0.1 s (1 ms
    below a second): "1s", "1.5s", "250ms", "1m30s", "2h"."""
    if seconds < 1:
        return "%dms" % int(seconds * 1000)
    tenths = int(round(seconds * 10, 6))
    hours, tenths = divmod(tenths, 36000)
    minutes, tenths = divmod(tenths, 600)
    out = ("%dh" % hours if hours else "") + ("%dm" % minutes if minutes else "")
    if tenths:
        out += ("%d" % (tenths // 10)) + ((".%d" % (tenths % 10)) if tenths % 10 else "") + "s"
    return out


def _describe_not_ready(state):
    """Why a channel that is not READY has not connected, for error messages."""
    return {
        grpc.ChannelConnectivity.TRANSIENT_FAILURE: "cannot connect",
        grpc.ChannelConnectivity.CONNECTING: "connecting: no HTTP/2 answer",
        grpc.ChannelConnectivity.SHUTDOWN: "channel shut down",
    }.get(state, "not connected")


def _unreachable(target, duration, detail):
    return VideoTaskError(
        grpc.StatusCode.UNAVAILABLE,
        "sidecar at %s unreachable for %s (%s)" % (target, format_duration(duration), detail))


async def _maybe_await(result):
    if inspect.isawaitable(result):
        await result


#: A sidecar refuses a stream (draining, full) within a round trip on the
#: pod's loopback; one it has not refused this long it has taken.
_REFUSAL_TIME = 0.1


async def await_video_task(video_task_id, *, target=None, give_up_after=DEFAULT_GIVE_UP_AFTER,
                           timeout=None, on_event=None, last_status=UNSPECIFIED,
                           initial_backoff=DEFAULT_INITIAL_BACKOFF,
                           max_backoff=DEFAULT_MAX_BACKOFF, on_reconnect=None, channel=None):
    """Watches the task until it is COMPLETED or FAILED and returns it (a VideoTask).

    Args:
      video_task_id: the vendor's task id (1-128 characters of [A-Za-z0-9_-];
        the sidecar answers INVALID_ARGUMENT otherwise).
      target: the sidecar, "host:port" or "unix:PATH"; see resolve_target().
      give_up_after: seconds of outage after which it gives up (UNAVAILABLE);
        None: never (bound the await with `timeout` or by cancelling it).
      timeout: overall limit in seconds (DEADLINE_EXCEEDED), None for none.
      on_event: called with each WatchVideoTaskResponse once: SNAPSHOT,
        TRANSITIONs and HEARTBEATs, in order (may be a coroutine function).
        What it raises ends the await (the stream is closed) and propagates.
      last_status: a status already reported earlier (not reported again).
      on_reconnect: called with (code, details, delay_seconds) before each
        reconnect backoff.
      channel: a grpc.aio channel to use; default: shared_channel(target).

    Raises:
      VideoTaskError: INVALID_ARGUMENT (a bad id, or a timeout or
        give_up_after that is not a positive number), NOT_FOUND,
        FAILED_PRECONDITION, another final gRPC code, UNAVAILABLE (an outage
        of give_up_after; "sidecar at ADDR unreachable for Ns (...)" when the
        sidecar never opened a stream before the give-up point or the
        timeout), DEADLINE_EXCEEDED (the timeout, the sidecar reachable).
      asyncio.CancelledError: when the awaiting task is cancelled; the stream
        is closed first.
    """
    _check_id(video_task_id)
    give_up_after = _seconds("give_up_after", give_up_after, allow_none=True)
    timeout = _seconds("timeout", timeout, allow_none=True)
    outage_limit = math.inf if give_up_after is None else give_up_after
    initial_backoff = _seconds("initial_backoff", initial_backoff)
    max_backoff = _seconds("max_backoff", max_backoff)
    target = resolve_target(target)
    if channel is None:
        channel = shared_channel(target)
    stub = pb_grpc.VideoTaskServiceStub(channel)
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = math.inf if timeout is None else start + timeout
    backoff = initial_backoff
    # When the current outage began: the start, or the end of the last
    # healthy stream.
    outage_start = start
    last_reported = last_status
    # Whether the sidecar ever opened a stream (sent a message on it, or held
    # it open until the deadline or for HEALTHY_STREAM), and when the last
    # such stream ended (inf while one is open).
    ever_opened = False
    last_open_end = math.inf
    last_error = ""

    def why_unreachable():
        return last_error or _describe_not_ready(channel.get_state(try_to_connect=False))

    def timed_out(now):
        if not ever_opened:
            return _unreachable(target, timeout, why_unreachable())
        message = "video task %s did not finish within %s" % (video_task_id,
                                                             format_duration(timeout))
        if now > last_open_end:
            message += " (the sidecar at %s was unreachable for its last %s)" % (
                target, format_duration(now - last_open_end))
        return VideoTaskError(grpc.StatusCode.DEADLINE_EXCEEDED, message)

    def give_up():
        if not ever_opened:
            return _unreachable(target, give_up_after, why_unreachable())
        return VideoTaskError(
            grpc.StatusCode.UNAVAILABLE,
            "sidecar at %s unavailable after retries: %s" % (target, why_unreachable()))

    while True:
        # Wait for the channel to be ready (it connects and reconnects on its
        # own schedule; a stream started before would fail at once, and one
        # started on a connection that never answers would hang until the
        # deadline). Ends at the give-up point or the deadline.
        give_up_at = outage_start + outage_limit
        state = await _wait_for_ready(channel, loop, min(give_up_at, deadline))
        now = loop.time()
        if now >= deadline:
            raise timed_out(now)
        if state != grpc.ChannelConnectivity.READY or now >= give_up_at:
            raise give_up()
        request = pb.WatchVideoTaskRequest(id=video_task_id)
        stream_start = loop.time()
        try:
            call = stub.WatchVideoTask(
                request, timeout=None if deadline == math.inf else deadline - stream_start)
        except grpc.aio.UsageError as e:  # the channel was closed
            raise VideoTaskError(grpc.StatusCode.CANCELLED, "channel closed: %s" % e) from None
        progressed = False  # this stream reported a status not reported before
        got_message = False
        final_task = None
        code, details = grpc.StatusCode.OK, "the stream ended before the task finished"
        try:
            async for msg in call:
                if not got_message:
                    got_message = ever_opened = True
                    last_open_end = math.inf
                status = msg.task.status
                is_change = msg.type != HEARTBEAT
                if is_change and status == last_reported:
                    pass  # the SNAPSHOT of a resumed stream repeats what was reported
                elif on_event is not None:
                    if msg.type == SNAPSHOT and last_reported != UNSPECIFIED:
                        # Changed while disconnected: report the change, not a new start.
                        change = pb.WatchVideoTaskResponse()
                        change.CopyFrom(msg)
                        change.type = TRANSITION
                        change.previous_status = last_reported
                        await _maybe_await(on_event(change))
                    else:
                        await _maybe_await(on_event(msg))
                if is_change and status != last_reported:
                    progressed = True
                    last_reported = status
                if status in (COMPLETED, FAILED):
                    final_task = msg.task
                    break
        except grpc.aio.AioRpcError as e:
            code, details = e.code(), e.details() or ""
        finally:
            if not call.done():
                if final_task is None:
                    # Cancellation, or an exception from on_event: end the
                    # stream at once.
                    call.cancel()
                await _finish(call)
        if final_task is not None:
            return final_task
        now = loop.time()
        if code != grpc.StatusCode.OK:
            last_error = "%s: %s" % (code.name, details)
        # A stream the sidecar took (not refused at once) and held until the
        # deadline or for a while was opened, even if no message came yet (the
        # first one waits for the first upstream poll, and the sidecar's
        # headers come with it).
        lasted = now - stream_start >= HEALTHY_STREAM
        held_to_deadline = (now >= deadline and code == grpc.StatusCode.DEADLINE_EXCEEDED
                            and deadline - stream_start >= _REFUSAL_TIME)
        if got_message or lasted or held_to_deadline:
            ever_opened = True
            last_open_end = now
        if now >= deadline:
            raise timed_out(now)
        if code not in _RETRYABLE:
            raise VideoTaskError(code, details)
        if progressed or lasted:
            outage_start = now  # a healthy stream: the outage starts now
            backoff = initial_backoff
        give_up_at = outage_start + outage_limit
        if now >= give_up_at:
            raise give_up()
        # Exponential backoff with jitter, not past the give-up point or the deadline.
        delay = max(0.0, min(random.uniform(0.5, 1.0) * backoff, give_up_at - now, deadline - now))
        log.warning("video task %s: stream ended (%s: %s); reconnecting to %s in %.2fs",
                    video_task_id, code.name, details, target, delay)
        if on_reconnect is not None:
            await _maybe_await(on_reconnect(code, details, delay))
        await asyncio.sleep(delay)
        backoff = min(backoff * 2, max_backoff)


async def _finish(call):
    """Waits for the call's status, which follows the final message at once; a
    call whose status never comes is cancelled after _FINISH_WAIT."""
    try:
        await asyncio.wait_for(call.code(), _FINISH_WAIT)
    except asyncio.TimeoutError:
        call.cancel()


async def _unary(method, request, target, channel, timeout):
    """One unary call of the sidecar at `target` (default: resolve_target),
    made once its channel is ready, all within `timeout` seconds. Raises
    VideoTaskError."""
    timeout = _seconds("timeout", timeout)
    target = resolve_target(target)
    if channel is None:
        channel = shared_channel(target)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = await _wait_for_ready(channel, loop, deadline)
    if state != grpc.ChannelConnectivity.READY:
        raise _unreachable(target, timeout, _describe_not_ready(state))
    stub = pb_grpc.VideoTaskServiceStub(channel)
    try:
        return await getattr(stub, method)(request, timeout=max(deadline - loop.time(), 0.001))
    except grpc.aio.AioRpcError as e:
        raise VideoTaskError(e.code(), e.details() or "") from None


async def _wait_for_ready(channel, loop, until):
    """Waits until the channel is READY or SHUTDOWN (then the next call fails
    by itself) or `until` (loop time) passes; returns the last state seen."""
    while True:
        state = channel.get_state(try_to_connect=True)
        if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.SHUTDOWN):
            return state
        remaining = until - loop.time()
        if remaining <= 0:
            return state
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state),
                                   min(remaining, _READY_WAIT_SLICE))
        except asyncio.TimeoutError:
            pass


async def get_video_task(video_task_id, *, target=None, timeout=DEFAULT_GET_TIMEOUT, channel=None):
    """The task's current state (one GetVideoTask; the sidecar answers from its
    state when fresh, else with one upstream request). Waits up to `timeout`
    for the channel to connect ("sidecar at ADDR unreachable for Ns" when it
    does not). Raises VideoTaskError."""
    _check_id(video_task_id)
    return await _unary("GetVideoTask", pb.GetVideoTaskRequest(id=video_task_id),
                        target, channel, timeout)


def _run_blocking(coroutine_function):
    """Runs coroutine_function() in a new event loop: in this thread, or in a
    helper thread when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine_function())
    outcome = {}

    def run():
        try:
            outcome["value"] = asyncio.run(coroutine_function())
        except BaseException as e:  # handed to the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=run, name="videotask-await", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def await_video_task_sync(video_task_id, *, target=None, **kwargs):
    """await_video_task() for synchronous callers: blocks until the task ends
    (same arguments, on_event called in the waiting thread)."""
    target = resolve_target(target)

    async def main():
        async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            try:
                return await await_video_task(video_task_id, target=target, channel=channel,
                                              **kwargs)
            finally:
                await _settle_cancelled_calls()

    return _run_blocking(main)


def get_video_task_sync(video_task_id, *, target=None, timeout=DEFAULT_GET_TIMEOUT):
    """get_video_task() for synchronous callers."""
    _check_id(video_task_id)
    timeout = _seconds("timeout", timeout)
    target = resolve_target(target)
    start = time.monotonic()
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise _unreachable(target, timeout, "cannot connect") from None
        stub = pb_grpc.VideoTaskServiceStub(channel)
        try:
            return stub.GetVideoTask(pb.GetVideoTaskRequest(id=video_task_id),
                                     timeout=max(timeout - (time.monotonic() - start), 0.001))
        except grpc.RpcError as e:
            raise VideoTaskError(e.code(), e.details() or "") from None


# CreateVideoTask.

def new_request_id():
    """A random request_id ("py-" + 32 hex digits), for a caller without a
    stable retry identity: keep it and pass it again on every retry."""
    return "py-" + uuid.uuid4().hex


def _invalid(message):
    return VideoTaskError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _to_value(value, path, out):
    """Sets the struct_pb2.Value `out` from a JSON-like Python value."""
    if value is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):  # before int: bool is an int
        out.bool_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, int):
        if abs(value) > MAX_EXACT_INTEGER:
            raise _invalid("body%s: the integer %d is beyond 2**53, which a protobuf Struct "
                           "number (a double) cannot hold exactly; pass it as a string"
                           % (path, value))
        out.number_value = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _invalid("body%s: %r is not a JSON number" % (path, value))
        out.number_value = value
    elif isinstance(value, Mapping):
        _to_struct(value, path, out.struct_value)
    elif isinstance(value, (list, tuple)):
        items = out.list_value
        items.SetInParent()  # an empty list stays a list
        for i, item in enumerate(value):
            _to_value(item, "%s[%d]" % (path, i), items.values.add())
    else:
        raise _invalid("body%s: a %s is not JSON (use strings, numbers, booleans, None, "
                       "dicts and lists)" % (path, type(value).__name__))


def _to_struct(mapping, path, out):
    out.SetInParent()  # an empty object stays an object
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise _invalid("body%s: the key %r is not a string" % (path, key))
        _to_value(value, "%s[%r]" % (path, key), out.fields[key])


def body_to_struct(body):
    """The create body (a dict of JSON values) as a google.protobuf.Struct.

    Raises VideoTaskError INVALID_ARGUMENT, naming the place, for what JSON
    cannot carry (a non-string key, a datetime, NaN) and for integers beyond
    2**53 (a Struct number is a double). Integral numbers reach the vendor as
    integers (the sidecar writes 10 and 10.0 as `10`); a string stays a
    string: "10" is sent as "10", not 10."""
    if not isinstance(body, Mapping):
        raise _invalid("the body must be a dict (a JSON object), not %s" % type(body).__name__)
    struct = struct_pb2.Struct()
    _to_struct(body, "", struct)
    return struct


def _create_request(family, body, request_id):
    if not isinstance(family, str):
        raise _invalid("the family must be a string, not %s" % type(family).__name__)
    if not isinstance(request_id, str):
        raise _invalid("the request_id must be a string, not %s" % type(request_id).__name__)
    return pb.CreateVideoTaskRequest(request_id=request_id, family=family,
                                     body=body_to_struct(body))


async def create_video_task(family, body, *, request_id, target=None,
                            timeout=DEFAULT_CREATE_TIMEOUT, channel=None):
    """Creates a video task at the vendor through the sidecar, exactly once
    per `request_id` while the sidecar remembers it (CreateVideoTask), and
    returns it (a VideoTask, QUEUED; watch it with await_video_task).

    Args:
      family: the vendor's model family (`videos`, `kyyvideo2`, `sora`, ...).
      body: the family's request body, a dict of JSON values (body_to_struct).
      request_id: the idempotency key, 1-128 printable ASCII characters: the
        same for every retry of one video (new_request_id() makes a random one).
      target: the sidecar; see resolve_target().
      timeout: the call's deadline in seconds: first the wait for the
        channel, then the sidecar's create with its own retries of answers
        that surely created nothing.

    Raises:
      VideoTaskError with the sidecar's code: INVALID_ARGUMENT (a bad
        request, or the vendor refused it: its message), ALREADY_EXISTS (the
        key was used with another family or body), ABORTED (the outcome is
        unknown: the vendor may have created it; the same key returns ABORTED
        again and is never sent twice), RESOURCE_EXHAUSTED (the spend guard;
        nothing sent), FAILED_PRECONDITION (the vendor rejects the API key),
        PERMISSION_DENIED (creates are off on this listener), UNAVAILABLE
        (nothing created: the sidecar unreachable, "sidecar at ADDR
        unreachable for Ns", or the vendor busy until the deadline),
        DEADLINE_EXCEEDED (another call of this key was still creating it:
        retry to learn its outcome).
    """
    request = _create_request(family, body, request_id)
    return await _unary("CreateVideoTask", request, target, channel, timeout)


def create_video_task_sync(family, body, *, request_id, target=None,
                           timeout=DEFAULT_CREATE_TIMEOUT):
    """create_video_task() for synchronous callers."""
    request = _create_request(family, body, request_id)
    timeout = _seconds("timeout", timeout)
    target = resolve_target(target)
    start = time.monotonic()
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise _unreachable(target, timeout, "cannot connect") from None
        stub = pb_grpc.VideoTaskServiceStub(channel)
        try:
            return stub.CreateVideoTask(request,
                                        timeout=max(timeout - (time.monotonic() - start), 0.001))
        except grpc.RpcError as e:
            raise VideoTaskError(e.code(), e.details() or "") from None
