"""videotask.client against the real sidecar and the real simulated upstream."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import grpc
import pytest

import harness
from harness import DONE_AT_ONCE, HOLD_PROCESSING, HOLD_QUEUED
from videotask import client
from videotask.client import VideoTaskError, await_video_task, status_name

LIMIT = 30.0  # every await's bound in these tests, seconds


def short(status):
    return status_name(status)


class Recorder:
    """on_event that records "PREVIOUS>STATUS" for SNAPSHOTs and TRANSITIONs."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def changes(self):
        return ["%s>%s" % (short(e.previous_status), short(e.task.status))
                for e in self.events if e.type != client.HEARTBEAT]


async def bounded(coro, limit=LIMIT):
    return await asyncio.wait_for(coro, limit)


async def test_completed_task_is_returned_with_every_change_once(sim, sidecar):
    sim.set_task("py-completes", {"queued_polls": 1, "processing_polls": 1})
    rec = Recorder()
    task = await bounded(await_video_task("py-completes", target=sidecar.target, on_event=rec))
    assert task.status == client.COMPLETED
    assert rec.changes() == ["UNSPECIFIED>QUEUED", "QUEUED>PROCESSING", "PROCESSING>COMPLETED"]
    as_dict = client.task_to_dict(task)
    assert as_dict["id"] == "py-completes"
    assert as_dict["status"] == "VIDEO_TASK_STATUS_COMPLETED"
    assert as_dict["videoUrl"] == "https://cdn.invalid/videos/py-completes.mp4"
    assert as_dict["actualDuration"] == "8s"
    assert as_dict["createTime"] == "2025-10-28T07:11:18Z"


async def test_failed_video_is_a_result(sim, sidecar):
    sim.set_task("py-fails", {"queued_polls": 0, "processing_polls": 1, "fails": True,
                              "error": "reference image rejected"})
    rec = Recorder()
    task = await bounded(await_video_task("py-fails", target=sidecar.target, on_event=rec))
    assert task.status == client.FAILED
    assert task.error == "reference image rejected"
    assert rec.changes() == ["UNSPECIFIED>PROCESSING", "PROCESSING>FAILED"]


async def test_not_found_is_final(sidecar):
    with pytest.raises(VideoTaskError) as e:
        await bounded(await_video_task("py-never-created", target=sidecar.target))
    assert e.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("bad_id", ["not a valid id!", "", "x" * 129, None, 42])
async def test_invalid_id_is_final(sidecar, bad_id):
    with pytest.raises(VideoTaskError) as e:
        await bounded(await_video_task(bad_id, target=sidecar.target))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_rejected_key_is_final(sim, sidecar):
    sim.set_task("py-unauthorized", HOLD_QUEUED)
    sim.fault({"id": "py-unauthorized", "kind": "unauthorized", "count": -1})
    with pytest.raises(VideoTaskError) as e:
        await bounded(await_video_task("py-unauthorized", target=sidecar.target))
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert harness.API_KEY not in str(e.value)


@pytest.mark.parametrize("argument", ["give_up_after", "timeout"])
@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "60", True])
async def test_bad_durations_are_invalid_arguments(argument, bad):
    with pytest.raises(VideoTaskError, match=argument) as e:
        await await_video_task("py-x", **{argument: bad})
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_format_duration():
    assert [client.format_duration(s) for s in (0.25, 1, 1.04, 1.5, 60, 90, 7200, 3661.5)] == [
        "250ms", "1s", "1s", "1.5s", "1m", "1m30s", "2h", "1h1m1.5s"]


async def test_get_video_task(sim, sidecar):
    sim.set_task("py-get", DONE_AT_ONCE)
    task = await bounded(client.get_video_task("py-get", target=sidecar.target))
    assert task.status == client.COMPLETED
    with pytest.raises(VideoTaskError) as e:
        await bounded(client.get_video_task("py-get-unknown", target=sidecar.target))
    assert e.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("while_down", [False, True], ids=["mid-watch", "finished-while-down"])
async def test_sidecar_restart_resumes_without_repeating(sim, start_sidecar, while_down):
    task_id = "py-restart-down" if while_down else "py-restart"
    sim.set_task(task_id, HOLD_QUEUED)
    first = start_sidecar()
    rec = Recorder()
    reconnects = []
    heartbeat = asyncio.Event()

    def on_event(event):
        rec(event)
        if event.type == client.HEARTBEAT:
            heartbeat.set()

    waiting = asyncio.ensure_future(await_video_task(
        task_id, target=first.target, on_event=on_event, give_up_after=20,
        initial_backoff=0.05, max_backoff=0.5,
        on_reconnect=lambda code, details, delay: reconnects.append(code)))
    try:
        await bounded(heartbeat.wait(), 10)
        # Drain: the open watch ends with UNAVAILABLE and the sidecar exits 0.
        first.proc.signal(signal.SIGTERM)
        assert await asyncio.get_running_loop().run_in_executor(None, first.proc.wait, 10) == 0
        await harness.eventually(lambda: harness.truthy(reconnects), 10, "a reconnect")
        if while_down:
            await sim.complete(task_id)
        second = start_sidecar(listen="127.0.0.1:%d" % first.port)
        if not while_down:
            await harness.eventually(
                lambda: harness.metric_is(second, "videotask_active_watches", 1), 10,
                "the new watch")
            await sim.complete(task_id)
        task = await bounded(waiting)
    finally:
        await harness.cancel(waiting)
    assert task.status == client.COMPLETED
    assert grpc.StatusCode.UNAVAILABLE in reconnects
    assert rec.changes() == ["UNSPECIFIED>QUEUED", "QUEUED>COMPLETED"]


async def test_unreachable_sidecar_gives_up_unavailable():
    target = "127.0.0.1:%d" % harness.closed_port()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(VideoTaskError) as e:
        await bounded(await_video_task("py-unreachable", target=target, give_up_after=1,
                                       initial_backoff=0.05))
    elapsed = loop.time() - t0
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert e.value.details.startswith("sidecar at %s unreachable for 1s (" % target), e.value
    assert 0.95 <= elapsed < 3, elapsed


async def test_no_give_up_waits_through_the_outage_until_the_timeout():
    # give_up_after=None: an outage alone never ends the await; the timeout does.
    target = "127.0.0.1:%d" % harness.closed_port()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(VideoTaskError) as e:
        await bounded(await_video_task("py-unreachable", target=target, give_up_after=None,
                                       timeout=1.5, initial_backoff=0.05, max_backoff=0.2))
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert e.value.details.startswith("sidecar at %s unreachable for 1.5s (" % target), e.value
    assert 1.45 <= loop.time() - t0 < 3


async def test_no_give_up_outlives_an_outage_that_ends_a_bounded_await(sim, start_sidecar):
    # The same outage: the await with give_up_after=0.5 ends UNAVAILABLE, the
    # one with give_up_after=None waits for the sidecar to come back.
    sim.set_task("py-long-outage", HOLD_QUEUED)
    first = start_sidecar()
    snapshots = []
    awaits = [asyncio.ensure_future(await_video_task(
        "py-long-outage", target=first.target, give_up_after=limit, initial_backoff=0.05,
        max_backoff=0.2, on_event=snapshots.append)) for limit in (0.5, None)]
    bounded_await, unbounded_await = awaits
    try:
        await harness.eventually(lambda: harness.truthy(len(snapshots) >= 2), 10, "both SNAPSHOTs")
        first.proc.signal(signal.SIGTERM)
        assert await asyncio.get_running_loop().run_in_executor(None, first.proc.wait, 10) == 0
        with pytest.raises(VideoTaskError) as e:
            await bounded(bounded_await)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
        assert not unbounded_await.done()
        second = start_sidecar(listen="127.0.0.1:%d" % first.port)
        await harness.eventually(
            lambda: harness.metric_is(second, "videotask_active_watches", 1), 10, "the new watch")
        await sim.complete("py-long-outage")
        task = await bounded(unbounded_await)
    finally:
        await harness.cancel(*awaits)
    assert task.status == client.COMPLETED


async def test_timeout_without_ever_reaching_the_sidecar_is_unavailable():
    target = "127.0.0.1:%d" % harness.closed_port()
    with pytest.raises(VideoTaskError) as e:
        await bounded(await_video_task("py-unreachable", target=target, give_up_after=60,
                                       timeout=1, initial_backoff=0.05))
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert e.value.details.startswith("sidecar at %s unreachable for 1s (" % target), e.value


async def test_a_sidecar_that_refuses_every_stream_is_unreachable(sim, start_sidecar):
    # A full sidecar refuses new watches (RESOURCE_EXHAUSTED): never opened.
    full = start_sidecar(extra_args=["--max_watches=1"])
    sim.set_task("py-refused", HOLD_QUEUED)
    holder = asyncio.ensure_future(await_video_task("py-refused", target=full.target))
    try:
        await harness.eventually(
            lambda: harness.metric_is(full, "videotask_active_watches", 1), 10, "a watch")
        with pytest.raises(VideoTaskError) as e:
            await bounded(await_video_task("py-refused", target=full.target, give_up_after=1,
                                           initial_backoff=0.05))
    finally:
        await harness.cancel(holder)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert e.value.details.startswith(
        "sidecar at %s unreachable for 1s (RESOURCE_EXHAUSTED: " % full.target), e.value


async def test_get_of_an_unreachable_sidecar():
    target = "127.0.0.1:%d" % harness.closed_port()
    with pytest.raises(VideoTaskError) as e:
        await bounded(client.get_video_task("py-x", target=target, timeout=0.5))
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert e.value.details.startswith("sidecar at %s unreachable for 500ms (" % target)
    with pytest.raises(VideoTaskError) as e:
        client.get_video_task_sync("py-x", target=target, timeout=0.5)
    assert e.value.details.startswith("sidecar at %s unreachable for 500ms (" % target)


async def test_timeout_of_a_watched_task_is_deadline_exceeded(sim, sidecar):
    sim.set_task("py-slow", HOLD_QUEUED)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(VideoTaskError) as e:
        await bounded(await_video_task("py-slow", target=sidecar.target, timeout=1))
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert e.value.details == "video task py-slow did not finish within 1s"
    assert 0.95 <= loop.time() - t0 < 3


async def test_cancellation_closes_the_stream_within_a_second(sim, sidecar):
    sim.set_task("py-cancelled", HOLD_QUEUED)
    snapshot = asyncio.Event()
    waiting = asyncio.ensure_future(await_video_task(
        "py-cancelled", target=sidecar.target, on_event=lambda e: snapshot.set()))
    await bounded(snapshot.wait(), 10)
    assert await sidecar.metric("videotask_open_streams") == 1
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # Promptly; a stream left open would stay open (the task is held).
    await harness.eventually(
        lambda: harness.metric_is(sidecar, "videotask_open_streams", 0), 5.0,
        "the stream to close")
    assert loop.time() - t0 < 5.0
    assert await sidecar.metric("videotask_active_watches") == 0


async def test_an_exception_from_on_event_ends_the_stream_at_once(sim, sidecar):
    sim.set_task("py-callback-raises", HOLD_QUEUED)
    loop = asyncio.get_running_loop()
    raised_at = []

    def on_event(event):
        raised_at.append(loop.time())
        raise KeyError("stop here")

    with pytest.raises(KeyError):
        await bounded(await_video_task("py-callback-raises", target=sidecar.target,
                                       on_event=on_event))
    assert loop.time() - raised_at[0] < 2.0
    # A stream left open would stay open (the task is held).
    await harness.eventually(
        lambda: harness.metric_is(sidecar, "videotask_open_streams", 0), 5.0,
        "the stream to close")


def test_blocking_wrapper(sim, sidecar):
    sim.set_task("py-sync", {"queued_polls": 1, "processing_polls": 0})
    seen = []
    task = client.await_video_task_sync("py-sync", target=sidecar.target, timeout=LIMIT,
                                        on_event=seen.append)
    assert task.status == client.COMPLETED
    assert [short(e.task.status) for e in seen if e.type != client.HEARTBEAT] == [
        "QUEUED", "COMPLETED"]
    assert client.get_video_task_sync("py-sync", target=sidecar.target).status == client.COMPLETED
    with pytest.raises(VideoTaskError) as e:
        client.await_video_task_sync("bad id", target=sidecar.target, timeout=LIMIT)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_blocking_wrapper_inside_a_running_loop(sim, sidecar):
    # From code that already runs an event loop it waits in a helper thread.
    sim.set_task("py-sync-in-loop", DONE_AT_ONCE)
    task = client.await_video_task_sync("py-sync-in-loop", target=sidecar.target, timeout=LIMIT)
    assert task.status == client.COMPLETED


def test_target_defaults(monkeypatch):
    monkeypatch.delenv("VIDEOTASK_TARGET", raising=False)
    assert client.resolve_target(None) == "127.0.0.1:50051"
    monkeypatch.setenv("VIDEOTASK_TARGET", "unix:/run/videotask.sock")
    assert client.resolve_target(None) == "unix:/run/videotask.sock"
    assert client.resolve_target("10.0.0.1:1") == "10.0.0.1:1"


def test_closing_the_shared_channel_right_after_mass_cancellation_does_not_hang(sim, sidecar):
    """grpc.aio (1.51) hangs the end of an event loop whose channel was closed
    while hundreds of just-cancelled calls still wait for their status;
    close_shared_channels() waits for them first."""
    sim.set_task("py-mass-cancel", HOLD_PROCESSING)
    code = textwrap.dedent("""
        import asyncio, sys
        from videotask import client

        async def main():
            seen = []
            waits = [asyncio.ensure_future(client.await_video_task(
                "py-mass-cancel", target=sys.argv[1], on_event=seen.append)) for _ in range(300)]
            while len(seen) < 300:
                await asyncio.sleep(0.02)
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            await client.close_shared_channels()

        asyncio.run(main())
        print("done")
    """)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    r = subprocess.run([sys.executable, "-c", code, sidecar.target], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, PYTHONPATH=src))
    assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr[-3000:]
