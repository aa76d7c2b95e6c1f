"""The event loop of test_scale.py, run as a process of its own (as a triggerer
is): 500 VideoTaskTriggers over 50 tasks in one asyncio loop in debug mode.

    scale_loop.py TARGET METRICS_PORT SIM_PORT

The sidecar (TARGET, metrics on METRICS_PORT) and the simulated upstream
(control API on SIM_PORT) are started by the test. Prints one JSON object with
what it measured; the test judges it. Runs in its own interpreter so that the
pauses of the garbage collector over pytest's heap do not count as callbacks
of the triggers.
"""

import asyncio
import gc
import json
import logging
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "airflow_stub"))  # the Airflow stand-in (tests only)
sys.path.insert(0, os.path.join(PLUGIN, "python", "src"))
sys.path.insert(0, os.path.join(PLUGIN, "airflow", "src"))
sys.path.insert(0, os.path.join(PLUGIN, "python", "tests"))

import harness  # noqa: E402
from harness import HOLD_PROCESSING  # noqa: E402
from videotask import client  # noqa: E402
from videotask_airflow.triggers import VideoTaskTrigger  # noqa: E402

TASKS = 50
TRIGGERS_PER_TASK = 10
MEASURE_FOR = 6.0  # seconds of steady watching whose upstream requests are counted
SLOW_CALLBACK = 0.05  # asyncio debug mode's report threshold, seconds


class SlowCallbacks(logging.Handler):
    """Collects asyncio debug mode's "Executing <...> took N seconds" reports,
    less the time the garbage collector ran inside the callback.

    Debug mode records a stack summary for every callback, future and task it
    creates, which makes full collections of the heap take tens of
    milliseconds; a collection lands in whichever callback allocates at that
    moment. That is the collector's pause, not a callback blocking the loop,
    so it is subtracted (and counted in `gc_excused`).
    """

    def __init__(self):
        super().__init__(logging.WARNING)
        self.reports = []
        self.gc_excused = []
        self._pauses = []  # (start, end) of each collection, time.monotonic()
        self._gc_start = None

    def on_gc(self, phase, info):
        if phase == "start":
            self._gc_start = time.monotonic()
        elif self._gc_start is not None:
            self._pauses.append((self._gc_start, time.monotonic()))

    def emit(self, record):
        message = record.getMessage()
        m = re.match(r"Executing .* took (\d+\.\d+) seconds$", message, re.S)
        if not m:
            return
        # Logged as soon as the callback returned.
        end = time.monotonic()
        start = end - float(m.group(1))
        in_gc = sum(max(0.0, min(e, end) - max(s, start)) for s, e in self._pauses)
        if float(m.group(1)) - in_gc > SLOW_CALLBACK:
            self.reports.append("%s (%.3f s of it in the garbage collector)" % (message, in_gc))
        else:
            self.gc_excused.append("%s (%.3f s in the garbage collector)" % (message[-40:], in_gc))


def os_threads():
    """Threads of this process, native ones (gRPC's) included."""
    return len(os.listdir("/proc/self/task"))


async def metric(port, name):
    status, text = await harness.http_request(port, "GET", "/metrics")
    assert status == 200, status
    return harness.metric_sum(text, name)


async def sim_control(port, method, path, body=None):
    status, text = await harness.http_request(port, method, path, body)
    if not 200 <= status < 300:
        raise RuntimeError("%s %s: HTTP %d %s" % (method, path, status, text))


async def main(target, metrics_port, sim_port):
    ids = ["scale-%02d" % i for i in range(TASKS)]
    for task_id in ids:
        await sim_control(sim_port, "PUT", "/_sim/tasks/" + task_id, HOLD_PROCESSING)
    loop = asyncio.get_running_loop()
    result = {}
    # Warm up: the loop's shared channel, connected (gRPC has started its threads).
    await client.get_video_task(ids[0], target=target)
    result["threads_before"] = os_threads()
    requests_before = await metric(metrics_port, "videotask_upstream_requests_total")

    slow = SlowCallbacks()
    logging.getLogger("asyncio").addHandler(slow)
    gc.callbacks.append(slow.on_gc)
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK

    async def run(trigger):
        return [event.payload async for event in trigger.run()]

    runs = []
    try:
        t0 = loop.time()
        for task_id in ids:
            for _ in range(TRIGGERS_PER_TASK):
                runs.append(asyncio.ensure_future(run(VideoTaskTrigger(task_id, target=target))))
            await asyncio.sleep(0)  # the triggerer, too, starts triggers a few at a time
        await harness.eventually(
            lambda: _equals(metric(metrics_port, "videotask_active_watches"), len(runs)),
            20, "every watch", interval=0.1)
        result["watched_tasks"] = await metric(metrics_port, "videotask_watched_tasks")
        result["threads_watching"] = os_threads()
        await asyncio.sleep(MEASURE_FOR)
        result["upstream_requests"] = (
            await metric(metrics_port, "videotask_upstream_requests_total") - requests_before)
        result["elapsed"] = loop.time() - t0
        result["threads_after_measuring"] = os_threads()
        # Finish them: the even tasks complete, the odd ones fail.
        for i, task_id in enumerate(ids):
            if i % 2 == 0:
                await sim_control(sim_port, "POST", "/_sim/tasks/%s/complete" % task_id)
            else:
                await sim_control(sim_port, "POST", "/_sim/tasks/%s/fail" % task_id,
                                  {"error": "error of " + task_id})
        payloads = await asyncio.wait_for(asyncio.gather(*runs), 30)
    finally:
        loop.set_debug(False)
        await harness.cancel(*runs)
        await client.close_shared_channels()
    result["events"] = [[task_id, p] for task_id, p in
                        zip([t for t in ids for _ in range(TRIGGERS_PER_TASK)], payloads)]
    result["slow_callbacks"] = slow.reports
    result["gc_excused"] = slow.gc_excused
    return result


async def _equals(awaitable, value):
    return await awaitable == value


if __name__ == "__main__":
    import faulthandler
    # A hang prints every thread's stack and exits, rather than waiting for the test's limit.
    faulthandler.dump_traceback_later(60, exit=True)
    target, metrics_port, sim_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(asyncio.run(main(target, metrics_port, sim_port))))
