"""VideoTaskSensor against the real sidecar and simulated upstream, with the
Airflow STAND-IN of tests/airflow_stub as its base classes and exceptions
(Airflow cannot be installed here; see README "Airflow")."""

import asyncio
import importlib
import json
from datetime import timedelta

import pytest

import harness
from harness import DONE_AT_ONCE, HOLD_PROCESSING, HOLD_QUEUED
from airflow.exceptions import (  # the stand-in
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    TaskDeferred,
)
from videotask_airflow.sensors import VideoTaskSensor
from videotask_airflow.triggers import VideoTaskTrigger

CONTEXT = {}  # the sensor does not read the Airflow context


def sensor(task_id, target, **kwargs):
    return VideoTaskSensor(task_id="wait", video_task_id=task_id, target=target, **kwargs)


def defer(s):
    """execute() must defer: the TaskDeferred it raises."""
    with pytest.raises(TaskDeferred) as e:
        s.execute(CONTEXT)
    return e.value


async def run_in_triggerer(deferred):
    """What the triggerer does with a deferral: rebuild the trigger from its
    serialized form, run it, and hand the first event back."""
    classpath, kwargs = deferred.trigger.serialize()
    module, _, name = classpath.rpartition(".")
    trigger = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger yielded nothing")


def test_finished_task_returns_without_deferring(sim, sidecar):
    sim.set_task("se-done", DONE_AT_ONCE)
    result = sensor("se-done", sidecar.target).execute(CONTEXT)
    assert result["status"] == "VIDEO_TASK_STATUS_COMPLETED"
    assert result["videoUrl"] == "https://cdn.invalid/videos/se-done.mp4"
    assert result["actualDuration"] == "8s"
    json.dumps(result)  # goes to XCom


def test_failed_task_fails_without_retry(sim, sidecar):
    sim.set_task("se-failed", {"queued_polls": 0, "processing_polls": 0, "fails": True,
                               "error": "face not allowed"})
    with pytest.raises(AirflowFailException, match="face not allowed"):
        sensor("se-failed", sidecar.target).execute(CONTEXT)


@pytest.mark.parametrize("task_id", ["se-unknown", "bad id", "", None])
def test_unknown_or_invalid_id_fails_without_retry(sidecar, task_id):
    with pytest.raises(AirflowFailException):
        sensor(task_id, sidecar.target).execute(CONTEXT)


def test_rejected_key_fails_without_retry(sim, sidecar):
    sim.set_task("se-unauthorized", HOLD_QUEUED)
    sim.fault({"id": "se-unauthorized", "kind": "unauthorized", "count": -1})
    with pytest.raises(AirflowFailException) as e:
        sensor("se-unauthorized", sidecar.target).execute(CONTEXT)
    assert harness.API_KEY not in str(e.value)


async def test_running_task_defers_and_resumes_with_the_task(sim, sidecar):
    sim.set_task("se-deferred", HOLD_PROCESSING)
    s = sensor("se-deferred", sidecar.target, timeout=7200)
    deferred = defer(s)
    assert isinstance(deferred.trigger, VideoTaskTrigger)
    assert deferred.method_name == "execute_complete"
    assert deferred.timeout == timedelta(hours=2)
    assert deferred.trigger.serialize()[1] == {
        "video_task_id": "se-deferred", "target": sidecar.target, "give_up_after": 60.0}
    running = asyncio.ensure_future(run_in_triggerer(deferred))
    try:
        await harness.eventually(lambda: harness.metric_is(sidecar, "videotask_active_watches", 1),
                                 10, "the trigger's watch")
        await sim.complete("se-deferred")
        payload = await asyncio.wait_for(running, 30)
    finally:
        await harness.cancel(running)
    result = getattr(s, deferred.method_name)(CONTEXT, payload)
    assert result["videoUrl"] == "https://cdn.invalid/videos/se-deferred.mp4"
    assert result["id"] == "se-deferred"


async def test_deferred_failure_fails_without_retry(sim, sidecar):
    sim.set_task("se-deferred-fails", HOLD_PROCESSING)
    s = sensor("se-deferred-fails", sidecar.target)
    running = asyncio.ensure_future(run_in_triggerer(defer(s)))
    try:
        await harness.eventually(lambda: harness.metric_is(sidecar, "videotask_active_watches", 1),
                                 10, "the trigger's watch")
        await sim.fail("se-deferred-fails", "quota exceeded")
        payload = await asyncio.wait_for(running, 30)
    finally:
        await harness.cancel(running)
    with pytest.raises(AirflowFailException, match="quota exceeded"):
        s.execute_complete(CONTEXT, payload)


def test_unreachable_sidecar_on_the_worker_still_defers():
    # The first Get fails (no sidecar beside the worker): the trigger decides.
    target = "127.0.0.1:%d" % harness.closed_port()
    deferred = defer(sensor("se-x", target, get_timeout=1))
    assert deferred.trigger.serialize()[1]["target"] == target


@pytest.mark.parametrize("status,exception", [
    ("failed", AirflowFailException),
    ("not_found", AirflowFailException),
    ("invalid_argument", AirflowFailException),
    ("failed_precondition", AirflowFailException),
    ("unavailable", AirflowException),
    ("something new", AirflowException),
])
def test_execute_complete_outcomes(status, exception):
    s = sensor("se-x", None)
    event = {"id": "se-x", "status": status, "task": None, "message": "the words of " + status}
    with pytest.raises(exception, match="the words of") as e:
        s.execute_complete(CONTEXT, event)
    if exception is AirflowException:
        assert not isinstance(e.value, AirflowFailException), "unavailable is retried"


@pytest.mark.parametrize("event", [None, "completed", {"id": "se-x"}])
def test_execute_complete_rejects_malformed_events(event):
    with pytest.raises(AirflowException, match="unexpected trigger event"):
        sensor("se-x", None).execute_complete(CONTEXT, event)


def test_not_deferrable_waits_in_the_worker(sim, sidecar):
    sim.set_task("se-worker", {"queued_polls": 2, "processing_polls": 2})
    result = sensor("se-worker", sidecar.target, deferrable=False, timeout=30).execute(CONTEXT)
    assert result["status"] == "VIDEO_TASK_STATUS_COMPLETED"
    assert result["videoUrl"] == "https://cdn.invalid/videos/se-worker.mp4"


def test_not_deferrable_failure_fails_without_retry(sim, sidecar):
    sim.set_task("se-worker-fails", {"queued_polls": 2, "processing_polls": 0, "fails": True,
                                     "error": "nsfw"})
    with pytest.raises(AirflowFailException, match="nsfw"):
        sensor("se-worker-fails", sidecar.target, deferrable=False, timeout=30).execute(CONTEXT)


def test_not_deferrable_times_out_with_the_sensor(sim, sidecar):
    sim.set_task("se-worker-slow", HOLD_QUEUED)
    with pytest.raises(AirflowSensorTimeout):
        sensor("se-worker-slow", sidecar.target, deferrable=False, timeout=1).execute(CONTEXT)


def test_not_deferrable_unreachable_sidecar_is_retried():
    target = "127.0.0.1:%d" % harness.closed_port()
    s = sensor("se-x", target, deferrable=False, timeout=30, give_up_after=1, get_timeout=1)
    with pytest.raises(AirflowException, match="unreachable") as e:
        s.execute(CONTEXT)
    assert not isinstance(e.value, (AirflowFailException, AirflowSensorTimeout))


def test_target_from_the_environment(sim, sidecar, monkeypatch):
    sim.set_task("se-env", DONE_AT_ONCE)
    monkeypatch.setenv("VIDEOTASK_TARGET", sidecar.target)
    s = VideoTaskSensor(task_id="wait", video_task_id="se-env")
    assert s.execute(CONTEXT)["id"] == "se-env"
    assert s.deferrable is True


def test_templated_fields_and_arguments():
    assert set(VideoTaskSensor.template_fields) >= {"video_task_id", "target"}
    with pytest.raises(TypeError):
        VideoTaskSensor(task_id="wait")  # video_task_id is required
    with pytest.raises(AirflowException, match="Invalid arguments"):
        VideoTaskSensor(task_id="wait", video_task_id="x", not_an_argument=1)
