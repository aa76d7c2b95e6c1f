"""VideoTaskTrigger's run() against the real sidecar and simulated upstream.

Its base classes come from the Airflow STAND-IN in tests/airflow_stub (Airflow
cannot be installed here); run() itself does not depend on them.
"""

import asyncio
import importlib
import json
import signal

import pytest

import harness
from harness import HOLD_PROCESSING, HOLD_QUEUED
from airflow.triggers.base import BaseTrigger, TriggerEvent  # the stand-in
from videotask_airflow.triggers import VideoTaskTrigger

LIMIT = 30.0


async def run_trigger(trigger, limit=LIMIT):
    """Every event the trigger yields until its generator ends."""

    async def collect():
        return [event async for event in trigger.run()]

    return await asyncio.wait_for(collect(), limit)


def round_trip(trigger):
    """What Airflow does: serialize, store as JSON, import the class path, rebuild."""
    classpath, kwargs = trigger.serialize()
    kwargs = json.loads(json.dumps(kwargs))
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


def test_serialize_round_trip():
    trigger = VideoTaskTrigger(video_task_id="proj_123", target="127.0.0.1:50051",
                               give_up_after=90)
    assert isinstance(trigger, BaseTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "videotask_airflow.triggers.VideoTaskTrigger"
    assert kwargs == {"video_task_id": "proj_123", "target": "127.0.0.1:50051",
                      "give_up_after": 90}
    rebuilt = round_trip(trigger)
    assert type(rebuilt) is VideoTaskTrigger
    assert rebuilt.serialize() == trigger.serialize()
    # No target: resolved where the trigger runs (the triggerer's $VIDEOTASK_TARGET).
    # No give_up_after: the trigger waits through sidecar outages (the
    # deferral's timeout bounds it).
    assert round_trip(VideoTaskTrigger("proj_1")).serialize()[1] == {
        "video_task_id": "proj_1", "target": None, "give_up_after": None}


async def test_completed(sim, sidecar):
    sim.set_task("tr-completes", {"queued_polls": 1, "processing_polls": 1})
    events = await run_trigger(round_trip(VideoTaskTrigger("tr-completes", target=sidecar.target)))
    assert len(events) == 1 and isinstance(events[0], TriggerEvent)
    payload = events[0].payload
    json.dumps(payload)  # JSON-safe
    assert payload["id"] == "tr-completes"
    assert payload["status"] == "completed"
    assert payload["task"]["videoUrl"] == "https://cdn.invalid/videos/tr-completes.mp4"
    assert payload["task"]["actualDuration"] == "8s"
    assert payload["task"]["status"] == "VIDEO_TASK_STATUS_COMPLETED"
    assert payload["message"] == "video task tr-completes completed"


async def test_failed(sim, sidecar):
    sim.set_task("tr-fails", {"queued_polls": 0, "processing_polls": 0, "fails": True,
                              "error": "content policy"})
    [event] = await run_trigger(VideoTaskTrigger("tr-fails", target=sidecar.target))
    assert event.payload["status"] == "failed"
    assert event.payload["task"]["error"] == "content policy"
    assert event.payload["message"] == "video task tr-fails failed: content policy"


async def test_not_found(sidecar):
    [event] = await run_trigger(VideoTaskTrigger("tr-never-created", target=sidecar.target))
    assert event.payload["status"] == "not_found"
    assert event.payload["task"] is None
    assert event.payload["id"] == "tr-never-created"


async def test_invalid_id(sidecar):
    [event] = await run_trigger(VideoTaskTrigger("no spaces allowed", target=sidecar.target))
    assert event.payload["status"] == "invalid_argument"
    assert event.payload["task"] is None


async def test_rejected_key(sim, sidecar):
    sim.set_task("tr-unauthorized", HOLD_QUEUED)
    sim.fault({"id": "tr-unauthorized", "kind": "unauthorized", "count": -1})
    [event] = await run_trigger(VideoTaskTrigger("tr-unauthorized", target=sidecar.target))
    assert event.payload["status"] == "failed_precondition"
    assert harness.API_KEY not in json.dumps(event.payload)


async def test_unreachable_sidecar_is_unavailable():
    target = "127.0.0.1:%d" % harness.closed_port()
    [event] = await run_trigger(VideoTaskTrigger("tr-x", target=target, give_up_after=1))
    assert {k: v for k, v in event.payload.items() if k != "message"} == {
        "id": "tr-x", "status": "unavailable", "task": None}
    assert event.payload["message"].startswith("sidecar at %s unreachable for 1s (" % target)


@pytest.mark.parametrize("bad", [0, -5, "soon"])
async def test_bad_give_up_after_is_an_invalid_argument_event(bad):
    [event] = await run_trigger(VideoTaskTrigger("tr-x", give_up_after=bad))
    assert event.payload["status"] == "invalid_argument"
    assert "give_up_after" in event.payload["message"]


async def test_target_from_the_triggerers_environment(sidecar, sim, monkeypatch):
    sim.set_task("tr-env", harness.DONE_AT_ONCE)
    monkeypatch.setenv("VIDEOTASK_TARGET", sidecar.target)
    [event] = await run_trigger(round_trip(VideoTaskTrigger("tr-env")))
    assert event.payload["status"] == "completed"


async def test_sidecar_restart_mid_watch_one_event_nothing_repeated(sim, start_sidecar, caplog):
    caplog.set_level("INFO")

    def changes():  # what the trigger logged about the task's status
        return [r.getMessage() for r in caplog.records
                if r.name.endswith("VideoTaskTrigger") and "tr-restart" in r.getMessage()]

    sim.set_task("tr-restart", HOLD_QUEUED)
    first = start_sidecar()
    trigger = VideoTaskTrigger("tr-restart", target=first.target, give_up_after=20)
    running = asyncio.ensure_future(run_trigger(trigger))
    try:
        await harness.eventually(lambda: harness.truthy(changes()), 10, "the SNAPSHOT")
        first.proc.signal(signal.SIGTERM)
        assert await asyncio.get_running_loop().run_in_executor(None, first.proc.wait, 10) == 0
        second = start_sidecar(listen="127.0.0.1:%d" % first.port)
        await harness.eventually(lambda: harness.metric_is(second, "videotask_active_watches", 1),
                                 10, "the watch on the new sidecar")
        await sim.complete("tr-restart")
        events = await running
    finally:
        await harness.cancel(running)
    assert [e.payload["status"] for e in events] == ["completed"]
    assert any("reconnecting" in r.getMessage() for r in caplog.records)
    assert changes() == ["video task tr-restart: QUEUED", "video task tr-restart: COMPLETED"]


async def test_cancellation_closes_the_stream_and_stops_upstream_work(sim, sidecar):
    sim.set_task("tr-cancelled", HOLD_PROCESSING)
    running = asyncio.ensure_future(run_trigger(VideoTaskTrigger("tr-cancelled",
                                                                 target=sidecar.target)))
    await harness.eventually(lambda: harness.metric_is(sidecar, "videotask_open_streams", 1), 10,
                             "the stream")
    await harness.eventually(lambda: polled(sim, "tr-cancelled"), 10, "a poll")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    running.cancel()  # what the triggerer does on reassignment or shutdown
    with pytest.raises(asyncio.CancelledError):
        await running
    # Promptly; a stream left open would stay open (the task is held).
    await harness.eventually(lambda: harness.metric_is(sidecar, "videotask_open_streams", 0), 5.0,
                             "the stream to close")
    assert loop.time() - t0 < 5.0
    # No watcher, no polling: the task's polls stop (the sidecar polls every 200 ms).
    before = (await sim.counts())["tasks"]["tr-cancelled"]
    await asyncio.sleep(1.0)
    assert (await sim.counts())["tasks"]["tr-cancelled"] <= before + 1  # one may be in flight


async def polled(sim, task_id):
    return (await sim.counts())["tasks"].get(task_id, 0) > 0


async def test_two_copies_of_one_trigger_are_harmless(sim, sidecar):
    sim.set_task("tr-twice", HOLD_PROCESSING)
    trigger = VideoTaskTrigger("tr-twice", target=sidecar.target)
    copies = [asyncio.ensure_future(run_trigger(round_trip(trigger))) for _ in range(2)]
    try:
        await harness.eventually(lambda: harness.metric_is(sidecar, "videotask_active_watches", 2),
                                 10, "both watches")
        # One task polled for both.
        assert await sidecar.metric("videotask_watched_tasks") == 1
        await sim.complete("tr-twice")
        results = await asyncio.gather(*copies)
    finally:
        await harness.cancel(*copies)
    assert [[e.payload["status"] for e in r] for r in results] == [["completed"], ["completed"]]
    assert results[0][0].payload == results[1][0].payload


async def test_archived_video_is_in_the_payload(tmp_path):
    """With --archive_dir, the event's task carries the archive (videos served by the sim)."""
    video_sim = harness.Sim("empty", extra_args=("--video_urls_on_sim",))
    try:
        sc = harness.Sidecar(
            video_sim, extra_args=("--archive_dir=%s" % tmp_path, "--archive_allow_loopback")
        )
        try:
            video_sim.set_task("tr-archived", {"queued_polls": 1, "processing_polls": 1})
            events = await run_trigger(VideoTaskTrigger("tr-archived", target=sc.target))
            assert len(events) == 1
            payload = events[0].payload
            assert payload["status"] == "completed", payload
            archive = payload["task"]["archive"]
            assert archive["uri"] == "file://%s/tr-archived.mp4" % tmp_path, archive
            assert len(archive["sha256"]) == 64
            assert int(archive["sizeBytes"]) == (tmp_path / "tr-archived.mp4").stat().st_size
            json.dumps(payload)
        finally:
            sc.stop()
    finally:
        video_sim.stop()
