"""500 VideoTaskTriggers over 50 tasks in one event loop, as in a triggerer,
against the real sidecar (1 s poll interval) and simulated upstream. The loop
runs in a process of its own (scale_loop.py); this test judges what it saw."""

import json
import subprocess
import sys

import pytest

import harness
import scale_loop

POLL_INTERVAL = 1.0  # seconds, the sidecar's --poll_interval below
TRIGGERS = scale_loop.TASKS * scale_loop.TRIGGERS_PER_TASK


@pytest.fixture(scope="module")
def outcome(sim):
    sidecar = harness.Sidecar(sim, extra_args=[
        "--poll_interval=%gs" % POLL_INTERVAL,
        "--heartbeat_interval=2s",
        "--max_upstream_qps=1000",
        "--max_inflight=64",
    ])
    try:
        r = subprocess.run(
            [sys.executable, scale_loop.__file__, sidecar.target, str(sidecar.metrics_port),
             str(sim.port)],
            capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-5000:]
        yield json.loads(r.stdout)
    finally:
        sidecar.stop()


def test_every_trigger_yields_one_right_event(outcome):
    events = outcome["events"]
    assert len(events) == TRIGGERS
    for task_id, payloads in events:
        assert len(payloads) == 1, (task_id, payloads)
        payload = payloads[0]
        assert payload["id"] == task_id
        if int(task_id[-2:]) % 2 == 0:
            assert payload["status"] == "completed", payload
            assert payload["task"]["videoUrl"] == "https://cdn.invalid/videos/%s.mp4" % task_id
        else:
            assert payload["status"] == "failed", payload
            assert payload["task"]["error"] == "error of " + task_id
            assert payload["message"] == "video task %s failed: error of %s" % (task_id, task_id)


def test_no_thread_per_trigger(outcome):
    # gRPC's threads exist before the first trigger; 500 triggers add none.
    assert outcome["threads_watching"] <= outcome["threads_before"] + 2, outcome
    assert outcome["threads_after_measuring"] <= outcome["threads_before"] + 2, outcome


def test_upstream_requests_per_task_per_interval(outcome):
    # One poll per task at once, then one per interval, however many triggers
    # watch a task.
    assert outcome["watched_tasks"] == scale_loop.TASKS
    intervals = 1 + outcome["elapsed"] / POLL_INTERVAL
    per_task_per_interval = outcome["upstream_requests"] / (scale_loop.TASKS * intervals)
    assert 0.7 <= per_task_per_interval <= 1.05, (outcome["upstream_requests"],
                                                  outcome["elapsed"], per_task_per_interval)


def test_nothing_blocks_the_event_loop(outcome):
    # asyncio debug mode's report of callbacks over 50 ms, less garbage
    # collector pauses and the time the loop's thread waited for a CPU (a
    # loaded machine's, not the callback's: see scale_loop.SlowCallbacks).
    assert outcome["slow_callbacks"] == [], outcome["excused"]
