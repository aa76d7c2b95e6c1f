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


class ThreadCpuWait:
    """The calling thread's time waiting for a CPU (runnable, not running) and
    time on a CPU, in seconds: the kernel's schedstat (run_delay, cpu_time)
    of the thread that created it. Both read 0 where the kernel has none."""

    def __init__(self):
        try:
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None

    def read(self):
        if self._fd is None:
            return 0.0, 0.0
        on_cpu, waiting = os.pread(self._fd, 128, 0).split()[:2]
        return int(waiting) / 1e9, int(on_cpu) / 1e9

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SlowCallbacks(logging.Handler):
    """Collects asyncio debug mode's "Executing <...> took N seconds" reports,
    less the time the garbage collector ran inside the callback and the time
    the loop's thread waited for a CPU during it.

    Debug mode records a stack summary for every callback, future and task it
    creates, which makes full collections of the heap take tens of
    milliseconds; a collection lands in whichever callback allocates at that
    moment. That is the collector's pause, not a callback blocking the loop,
    so it is subtracted. So is the time the thread was runnable but had no
    CPU (the kernel's run_delay, read before every callback by install()): on
    a loaded machine a preempted callback takes longer by that much, while a
    callback that blocks (a synchronous call, a sleep, waiting for a lock)
    is not runnable meanwhile, so its time still counts. What was excused is
    in `excused`.
    """

    def __init__(self):
        super().__init__(logging.WARNING)
        self.reports = []
        self.excused = []
        # Each collection: (start, CPU wait at start, end, CPU wait at end),
        # time.monotonic() and ThreadCpuWait's seconds.
        self._pauses = []
        self._gc_start = None
        self._cpu = None
        self._at_start = (0.0, 0.0)  # the CPU wait and time of the callback running
        self._handle_run = None

    def install(self, loop):
        """Sets `loop` to debug mode reporting callbacks over SLOW_CALLBACK
        to this handler; samples the thread's CPU wait before every callback.
        Call in the loop's thread."""
        self._cpu = ThreadCpuWait()
        self._handle_run = asyncio.events.Handle._run
        handle_run, cpu, me = self._handle_run, self._cpu, self

        def _run(handle):
            me._at_start = cpu.read()
            return handle_run(handle)

        asyncio.events.Handle._run = _run
        logging.getLogger("asyncio").addHandler(self)
        gc.callbacks.append(self.on_gc)
        loop.set_debug(True)
        loop.slow_callback_duration = SLOW_CALLBACK

    def uninstall(self, loop):
        loop.set_debug(False)
        gc.callbacks.remove(self.on_gc)
        logging.getLogger("asyncio").removeHandler(self)
        asyncio.events.Handle._run = self._handle_run
        self._cpu.close()

    def _waiting(self):
        return self._cpu.read()[0] if self._cpu else 0.0

    def on_gc(self, phase, info):
        if phase == "start":
            self._gc_start = (time.monotonic(), self._waiting())
        elif self._gc_start is not None:
            self._pauses.append(self._gc_start + (time.monotonic(), self._waiting()))
            self._gc_start = None

    def emit(self, record):
        message = record.getMessage()
        m = re.match(r"Executing .* took (\d+\.\d+) seconds$", message, re.S)
        if not m:
            return
        # Logged as soon as the callback returned, in the loop's thread.
        end = time.monotonic()
        waiting, on_cpu = self._cpu.read() if self._cpu else (0.0, 0.0)
        waiting -= self._at_start[0]
        on_cpu -= self._at_start[1]
        took = float(m.group(1))
        start = end - took
        # The collector's pauses within the callback, and the CPU wait within
        # those (counted once: as the collector's).
        in_gc = waiting_in_gc = 0.0
        for s, ws, e, we in self._pauses:
            overlap = min(e, end) - max(s, start)
            if overlap > 0:
                in_gc += overlap
                waiting_in_gc += (we - ws) * overlap / (e - s)
        excused = in_gc + max(0.0, waiting - waiting_in_gc)
        detail = ("%.3f s of it in the garbage collector, %.3f s waiting for a CPU (%.3f s of "
                  "that in the collector), %.3f s on one" % (in_gc, waiting, waiting_in_gc, on_cpu))
        if took - excused > SLOW_CALLBACK:
            self.reports.append("%s (%s)" % (message, detail))
        else:
            self.excused.append("%s (%s)" % (message[-40:], detail))


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
    slow.install(loop)

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
        slow.uninstall(loop)
        await harness.cancel(*runs)
        await client.close_shared_channels()
    result["events"] = [[task_id, p] for task_id, p in
                        zip([t for t in ids for _ in range(TRIGGERS_PER_TASK)], payloads)]
    result["slow_callbacks"] = slow.reports
    result["excused"] = slow.excused
    return result


async def _equals(awaitable, value):
    return await awaitable == value


if __name__ == "__main__":
    import faulthandler
    # A hang prints every thread's stack and exits, rather than waiting for the test's limit.
    faulthandler.dump_traceback_later(60, exit=True)
    target, metrics_port, sim_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(asyncio.run(main(target, metrics_port, sim_port))))
