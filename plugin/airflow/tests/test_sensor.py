"""VideoTaskSensor against the real sidecar and simulated upstream, driven as
Airflow drives it (tests/engine.py: execute, the triggerer, resume_execution,
the scheduler's deferral timeout, start_from_trigger), on the Airflow
STAND-IN of tests/airflow_stub (Airflow cannot be installed here). Every test
runs twice: with the stand-in behaving like Airflow 2.10 and like Airflow 3."""

import asyncio
import datetime
import json
from datetime import timedelta

import pytest

import engine
import harness
from airflow import _stub
from airflow.exceptions import (  # the stand-in
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
)
from harness import DONE_AT_ONCE, HOLD_PROCESSING, HOLD_QUEUED
from videotask import client
from videotask_airflow.sensors import VideoTaskSensor
from videotask_airflow.triggers import VideoTaskTrigger


@pytest.fixture(scope="module")
def sidecar(sim):
    """This module's sidecar polls every 50 ms (the session's every 200 ms):
    every test runs twice, and most wait for a few polls."""
    s = harness.Sidecar(sim, extra_args=["--poll_interval=50ms"])
    yield s
    s.stop()


@pytest.fixture(autouse=True, params=[2, 3], ids=["airflow2", "airflow3"])
def major(request):
    _stub.use_major(request.param)
    yield request.param
    _stub.use_major(3)


def T(name):
    """A task id of this major's run (the sidecar remembers finished tasks)."""
    return "%s-a%d" % (name, _stub.major())


def sensor(task_id, target, **kwargs):
    return VideoTaskSensor(task_id="wait", video_task_id=task_id, target=target, **kwargs)


def deferrable(task_id, target, **kwargs):
    return sensor(task_id, target, deferrable=True, **kwargs)


def deferred(s):
    """Runs the task: it must defer; the TaskDeferred."""
    outcome = engine.run_task(s)
    assert outcome.state == "deferred", outcome
    return outcome.deferred


async def trigger_fires(sim, sidecar, task_id, deferral, finish):
    """Runs the deferral's trigger as the triggerer does until `finish`
    (sim.complete or a failure) makes it fire; (next_method, next_kwargs)."""
    running = asyncio.ensure_future(engine.run_in_triggerer(deferral))
    try:
        await harness.eventually(lambda: harness.metric_is(sidecar, "videotask_active_watches", 1),
                                 10, "the trigger's watch")
        await finish(task_id)
        return await asyncio.wait_for(running, 30)
    finally:
        await harness.cancel(running)


async def completed(sidecar, task_id):
    """Whether the sidecar's GetVideoTask answers COMPLETED (it answers from
    its state until the next poll)."""
    task = await client.get_video_task(task_id, target=sidecar.target)
    return task.status == client.COMPLETED


def failed_at_once(sim, task_id, error):
    sim.set_task(task_id, {"queued_polls": 0, "processing_polls": 0, "fails": True,
                           "error": error})


# The first GetVideoTask.

def test_finished_task_returns_without_deferring(sim, sidecar):
    sim.set_task(T("se-done"), DONE_AT_ONCE)
    outcome = engine.run_task(deferrable(T("se-done"), sidecar.target))
    assert outcome.state == "success", outcome
    assert outcome.result["status"] == "VIDEO_TASK_STATUS_COMPLETED"
    assert outcome.result["videoUrl"] == "https://cdn.invalid/videos/%s.mp4" % T("se-done")
    assert outcome.result["actualDuration"] == "8s"
    json.dumps(outcome.result)  # goes to XCom


def test_failed_task_fails_without_retry(sim, sidecar):
    failed_at_once(sim, T("se-failed"), "face not allowed")
    outcome = engine.run_task(deferrable(T("se-failed"), sidecar.target, retries=3))
    assert outcome.state == "failed", outcome
    assert isinstance(outcome.error, AirflowFailException)
    assert "face not allowed" in str(outcome.error)


@pytest.mark.parametrize("task_id", ["se-unknown", "bad id", "", None])
def test_unknown_or_invalid_id_fails_without_retry(sidecar, task_id):
    task_id = T(task_id) if task_id == "se-unknown" else task_id
    outcome = engine.run_task(deferrable(task_id, sidecar.target, retries=3))
    assert outcome.state == "failed" and isinstance(outcome.error, AirflowFailException), outcome


def test_rejected_key_fails_without_retry(sim, sidecar):
    sim.set_task(T("se-unauthorized"), HOLD_QUEUED)
    sim.fault({"id": T("se-unauthorized"), "kind": "unauthorized", "count": -1})
    outcome = engine.run_task(deferrable(T("se-unauthorized"), sidecar.target, retries=3))
    assert outcome.state == "failed" and isinstance(outcome.error, AirflowFailException), outcome
    assert harness.API_KEY not in str(outcome.error)


def test_unreachable_sidecar_on_the_worker_still_defers():
    # The first Get fails (no sidecar beside the worker): the trigger decides.
    target = "127.0.0.1:%d" % harness.closed_port()
    deferral = deferred(deferrable("se-x", target, get_timeout=0.2))
    assert deferral.trigger.serialize()[1]["target"] == target


# Deferred: the trigger, the triggerer, resume_execution.

async def test_running_task_defers_and_resumes_with_the_task(sim, sidecar):
    sim.set_task(T("se-deferred"), HOLD_PROCESSING)
    deferral = deferred(deferrable(T("se-deferred"), sidecar.target, timeout=7200))
    assert isinstance(deferral.trigger, VideoTaskTrigger)
    assert deferral.method_name == "execute_complete"
    assert deferral.timeout == timedelta(hours=2)
    # No give_up_after: the deferral's timeout bounds the trigger, not a
    # 60 s outage (a triggerer restart re-creates triggers before a late sidecar).
    assert deferral.trigger.serialize()[1] == {
        "video_task_id": T("se-deferred"), "target": sidecar.target, "give_up_after": None}
    next_method, next_kwargs = await trigger_fires(sim, sidecar, T("se-deferred"), deferral,
                                                   sim.complete)
    # A new operator instance, as after a deferral.
    outcome = engine.run_task(deferrable(T("se-deferred"), sidecar.target), next_method=next_method,
                              next_kwargs=next_kwargs)
    assert outcome.state == "success", outcome
    assert outcome.result["videoUrl"] == "https://cdn.invalid/videos/%s.mp4" % T("se-deferred")


async def test_deferred_failure_fails_without_retry(sim, sidecar):
    sim.set_task(T("se-deferred-fails"), HOLD_PROCESSING)
    s = deferrable(T("se-deferred-fails"), sidecar.target, retries=3)
    resume = await trigger_fires(sim, sidecar, T("se-deferred-fails"), deferred(s),
                                 lambda task_id: sim.fail(task_id, "quota exceeded"))
    outcome = engine.run_task(s, next_method=resume[0], next_kwargs=resume[1])
    assert outcome.state == "failed" and isinstance(outcome.error, AirflowFailException), outcome
    assert "quota exceeded" in str(outcome.error)


def test_deferral_timeout_is_a_sensor_timeout_not_retried(sim, sidecar):
    """Airflow 2.x resumes a timed-out deferral with "__fail__", which its
    BaseOperator turns into TaskDeferralError, an AirflowException: retried
    (retries=3 made a 2 h timeout up to 8 h). Both majors must end with
    AirflowSensorTimeout."""
    sim.set_task(T("se-deferral-timeout"), HOLD_QUEUED)
    s = deferrable(T("se-deferral-timeout"), sidecar.target, timeout=7200, retries=3)
    deferred(s)
    next_method, next_kwargs = engine.deferral_timed_out()
    outcome = engine.run_task(s, next_method=next_method, next_kwargs=next_kwargs)
    assert outcome.state == "failed", outcome
    assert isinstance(outcome.error, AirflowSensorTimeout), outcome
    assert "did not finish within 2h" in str(outcome.error)


def test_a_trigger_that_crashed_is_retried():
    # Not a timeout: Airflow's own "__fail__" path (TaskDeferralError) applies.
    s = deferrable("se-x", None, retries=1)
    outcome = engine.run_task(s, next_method="__fail__", next_kwargs={"error": "Trigger failure"})
    assert outcome.state == "up_for_retry", outcome


@pytest.mark.parametrize("status,state,exception", [
    ("failed", "failed", AirflowFailException),
    ("not_found", "failed", AirflowFailException),
    ("invalid_argument", "failed", AirflowFailException),
    ("failed_precondition", "failed", AirflowFailException),
    ("unavailable", "up_for_retry", AirflowException),
    ("something new", "up_for_retry", AirflowException),
])
def test_trigger_event_outcomes(status, state, exception):
    event = {"id": "se-x", "status": status, "task": None, "message": "the words of " + status}
    outcome = engine.run_task(deferrable("se-x", None, retries=1), next_method="execute_complete",
                              next_kwargs={"event": event})
    assert outcome.state == state, outcome
    assert type(outcome.error) is exception and "the words of" in str(outcome.error)


@pytest.mark.parametrize("event", [None, "completed", {"id": "se-x"}])
def test_malformed_trigger_events_are_retried(event):
    outcome = engine.run_task(deferrable("se-x", None, retries=1), next_method="execute_complete",
                              next_kwargs={"event": event})
    assert outcome.state == "up_for_retry", outcome
    assert "unexpected trigger event" in str(outcome.error)


# soft_fail / never_fail: the same outcome on every path.

@pytest.mark.parametrize("path", ["first-get", "trigger", "worker"])
async def test_soft_fail_skips_a_failed_video_on_every_path(sim, sidecar, path):
    """Before, the failure found by the first Get (and in the worker) raised
    AirflowFailException while the trigger's went through
    BaseSensorOperator.resume_execution, which skips with soft_fail."""
    task_id = T("se-soft-" + path)
    if path == "first-get":
        failed_at_once(sim, task_id, "nsfw")
        outcome = engine.run_task(deferrable(task_id, sidecar.target, soft_fail=True))
    elif path == "worker":
        sim.set_task(task_id, {"queued_polls": 1, "processing_polls": 0, "fails": True,
                               "error": "nsfw"})
        outcome = engine.run_task(sensor(task_id, sidecar.target, deferrable=False, timeout=30,
                                         soft_fail=True))
    else:
        sim.set_task(task_id, HOLD_PROCESSING)
        s = deferrable(task_id, sidecar.target, soft_fail=True)
        resume = await trigger_fires(sim, sidecar, task_id, deferred(s),
                                     lambda t: sim.fail(t, "nsfw"))
        outcome = engine.run_task(s, next_method=resume[0], next_kwargs=resume[1])
    assert outcome.state == "skipped", outcome
    assert "nsfw" in str(outcome.error)


@pytest.mark.parametrize("path", ["trigger", "worker"])
def test_soft_fail_skips_a_timeout_on_every_path(sim, sidecar, path):
    sim.set_task(T("se-soft-timeout"), HOLD_QUEUED)
    if path == "worker":
        s = sensor(T("se-soft-timeout"), sidecar.target, deferrable=False, timeout=0.3,
                   soft_fail=True)
        outcome = engine.run_task(s)
    else:
        next_method, next_kwargs = engine.deferral_timed_out()
        outcome = engine.run_task(deferrable(T("se-soft-timeout"), None, soft_fail=True),
                                  next_method=next_method, next_kwargs=next_kwargs)
    assert outcome.state == "skipped", outcome


@pytest.mark.parametrize("how", ["unavailable-in-worker", "deferral-timeout", "failed-event"])
def test_never_fail_skips_every_failure(major, how):
    if major == 2:
        # Airflow 2 has no never_fail: BaseOperator rejects the argument.
        with pytest.raises(AirflowException, match="Invalid arguments"):
            sensor("se-x", None, never_fail=True)
        return
    if how == "unavailable-in-worker":
        target = "127.0.0.1:%d" % harness.closed_port()
        s = sensor("se-x", target, deferrable=False, timeout=30, give_up_after=0.3,
                   get_timeout=0.2, never_fail=True, retries=1)
        outcome = engine.run_task(s)
    elif how == "deferral-timeout":
        next_method, next_kwargs = engine.deferral_timed_out()
        outcome = engine.run_task(deferrable("se-x", None, never_fail=True),
                                  next_method=next_method, next_kwargs=next_kwargs)
    else:
        event = {"id": "se-x", "status": "failed", "task": None, "message": "failed: nsfw"}
        outcome = engine.run_task(deferrable("se-x", None, never_fail=True),
                                  next_method="execute_complete", next_kwargs={"event": event})
    assert outcome.state == "skipped", outcome


def test_silent_fail_waits_through_an_outage_until_the_timeout():
    # Without silent_fail the worker gives up after give_up_after (retried);
    # with it the unreachable sidecar is waited for until the sensor's timeout.
    target = "127.0.0.1:%d" % harness.closed_port()
    kwargs = dict(deferrable=False, timeout=0.6, give_up_after=0.2, get_timeout=0.2, retries=1)
    outcome = engine.run_task(sensor("se-x", target, **kwargs))
    assert outcome.state == "up_for_retry" and "unreachable for 200ms" in str(outcome.error)
    outcome = engine.run_task(sensor("se-x", target, silent_fail=True, **kwargs))
    assert outcome.state == "failed", outcome
    assert isinstance(outcome.error, AirflowSensorTimeout)
    assert "unreachable for 600ms" in str(outcome.error)
    s = deferrable("se-x", target, silent_fail=True, trigger_give_up_after=5)
    assert s.video_task_trigger("se-x").give_up_after is None


# In the worker (deferrable=False, mode="poke").

def test_not_deferrable_waits_in_the_worker(sim, sidecar):
    sim.set_task(T("se-worker"), {"queued_polls": 1, "processing_polls": 1})
    outcome = engine.run_task(sensor(T("se-worker"), sidecar.target, deferrable=False, timeout=30))
    assert outcome.state == "success", outcome
    assert outcome.result["videoUrl"] == "https://cdn.invalid/videos/%s.mp4" % T("se-worker")


def test_not_deferrable_failure_fails_without_retry(sim, sidecar):
    sim.set_task(T("se-worker-fails"), {"queued_polls": 1, "processing_polls": 0, "fails": True,
                                     "error": "nsfw"})
    outcome = engine.run_task(sensor(T("se-worker-fails"), sidecar.target, deferrable=False,
                                     timeout=30, retries=3))
    assert outcome.state == "failed" and isinstance(outcome.error, AirflowFailException), outcome
    assert "nsfw" in str(outcome.error)


def test_not_deferrable_times_out_with_the_sensor(sim, sidecar):
    sim.set_task(T("se-worker-slow"), HOLD_QUEUED)
    outcome = engine.run_task(sensor(T("se-worker-slow"), sidecar.target, deferrable=False,
                                     timeout=0.3, retries=3))
    assert outcome.state == "failed" and isinstance(outcome.error, AirflowSensorTimeout), outcome


def test_not_deferrable_unreachable_sidecar_is_retried():
    target = "127.0.0.1:%d" % harness.closed_port()
    s = sensor("se-x", target, deferrable=False, timeout=30, give_up_after=0.2, get_timeout=0.2,
               retries=1)
    outcome = engine.run_task(s)
    assert outcome.state == "up_for_retry", outcome
    assert type(outcome.error) is AirflowException and "unreachable" in str(outcome.error)


# deferrable's default: [operators] default_deferrable.

def test_deferrable_follows_default_deferrable(sim, sidecar, monkeypatch):
    sim.set_task(T("se-default"), {"queued_polls": 1, "processing_polls": 0})
    monkeypatch.delenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", raising=False)
    s = sensor(T("se-default"), sidecar.target, timeout=30)
    assert s.deferrable is False  # no triggerer needed unless configured
    assert engine.run_task(s).state == "success"
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "true")
    sim.set_task("se-default-2", HOLD_QUEUED)
    assert deferred(sensor("se-default-2", sidecar.target)).method_name == "execute_complete"
    assert sensor("se-x", None, deferrable=False).deferrable is False


# mode="reschedule": BaseSensorOperator.execute, one GetVideoTask per poke.

async def test_reschedule_mode_pokes_and_returns_the_task(sim, sidecar):
    sim.set_task(T("se-resched"), HOLD_PROCESSING)
    # timeout=5: a sensor that ignored the mode would wait in the worker and
    # time out instead of giving its slot back.
    s = sensor(T("se-resched"), sidecar.target, mode="reschedule", poke_interval=300, timeout=5)
    before = engine.utcnow()
    outcome = engine.run_task(s)
    assert outcome.state == "up_for_reschedule", outcome
    wait = (outcome.error.reschedule_date - before).total_seconds()
    assert 300 <= wait < 310, wait
    await sim.complete(T("se-resched"))
    await harness.eventually(lambda: completed(sidecar, T("se-resched")), 10, "the completion")
    ctx = engine.context(first_reschedule_date=before)
    outcome = engine.run_task(sensor(T("se-resched"), sidecar.target, mode="reschedule",
                                     poke_interval=300), ctx)
    assert outcome.state == "success", outcome
    assert outcome.result["videoUrl"] == "https://cdn.invalid/videos/%s.mp4" % T("se-resched")


@pytest.mark.parametrize("soft_fail", [False, True])
def test_reschedule_mode_times_out_from_the_first_reschedule(sim, sidecar, soft_fail):
    sim.set_task(T("se-resched-slow"), HOLD_QUEUED)
    long_ago = engine.utcnow() - datetime.timedelta(hours=3)
    s = sensor(T("se-resched-slow"), sidecar.target, mode="reschedule", timeout=7200,
               soft_fail=soft_fail, retries=3)
    outcome = engine.run_task(s, engine.context(first_reschedule_date=long_ago))
    if soft_fail:
        assert outcome.state == "skipped", outcome
    else:
        assert outcome.state == "failed" and isinstance(outcome.error, AirflowSensorTimeout)


def test_reschedule_mode_outcomes(sim, sidecar):
    failed_at_once(sim, T("se-resched-fails"), "nsfw")
    outcome = engine.run_task(sensor(T("se-resched-fails"), sidecar.target, mode="reschedule",
                                     retries=3))
    assert outcome.state == "failed" and isinstance(outcome.error, AirflowFailException), outcome
    target = "127.0.0.1:%d" % harness.closed_port()
    outcome = engine.run_task(sensor("se-x", target, mode="reschedule", get_timeout=0.2,
                                     retries=1))
    assert outcome.state == "up_for_retry" and "unreachable" in str(outcome.error), outcome


def test_reschedule_mode_cannot_be_deferrable(monkeypatch):
    with pytest.raises(ValueError, match="reschedule"):
        sensor("se-x", None, mode="reschedule", deferrable=True)
    # A deployment-wide default_deferrable yields to an explicit mode.
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "true")
    assert sensor("se-x", None, mode="reschedule").deferrable is False


# start_from_trigger (Airflow 2.10+).

async def test_start_from_trigger(sim, sidecar, major):
    sim.set_task(T("se-from-trigger"), HOLD_PROCESSING)
    s = sensor(T("se-from-trigger"), sidecar.target, start_from_trigger=True, timeout=3600)
    assert s.deferrable is True
    deferral = engine.start_from_trigger(s)
    if major == 3:
        # Airflow 3's scheduler does not start tasks from the triggerer: the
        # worker runs execute(), which defers.
        assert deferral is None
        deferral = deferred(s)
    assert deferral.timeout == timedelta(hours=1)
    assert deferral.trigger.serialize() == VideoTaskTrigger(
        T("se-from-trigger"), target=sidecar.target).serialize()
    resume = await trigger_fires(sim, sidecar, T("se-from-trigger"), deferral, sim.complete)
    outcome = engine.run_task(s, next_method=resume[0], next_kwargs=resume[1])
    assert outcome.state == "success", outcome
    assert outcome.result["id"] == T("se-from-trigger")


@pytest.mark.parametrize("kwargs", [
    {"video_task_id": "{{ ti.xcom_pull('create_video') }}"},
    {"video_task_id": "proj_1", "target": "{{ var.value.sidecar }}"},
    {"video_task_id": "proj_1", "deferrable": False},
    {"video_task_id": "proj_1", "mode": "reschedule"},
])
def test_start_from_trigger_refuses_what_it_cannot_do(kwargs):
    with pytest.raises(ValueError, match="start_from_trigger"):
        VideoTaskSensor(task_id="wait", start_from_trigger=True, **kwargs)
    # Not asked for: no start_trigger_args, the scheduler sends it to a worker.
    assert VideoTaskSensor(task_id="wait", video_task_id="x").start_trigger_args is None


# Arguments.

def test_target_from_the_environment(sim, sidecar, monkeypatch):
    sim.set_task(T("se-env"), DONE_AT_ONCE)
    monkeypatch.setenv("VIDEOTASK_TARGET", sidecar.target)
    outcome = engine.run_task(VideoTaskSensor(task_id="wait", video_task_id=T("se-env")))
    assert outcome.state == "success" and outcome.result["id"] == T("se-env")


def test_templated_fields_and_arguments(major):
    assert set(VideoTaskSensor.template_fields) >= {"video_task_id", "target"}
    with pytest.raises(TypeError):
        VideoTaskSensor(task_id="wait")  # video_task_id is required
    # BaseOperator rejects unknown arguments: AirflowException in 2.x, TypeError in 3.x.
    expected = AirflowException if major == 2 else TypeError
    with pytest.raises(expected, match="Invalid arguments"):
        VideoTaskSensor(task_id="wait", video_task_id="x", not_an_argument=1)

