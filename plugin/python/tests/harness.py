"""Runs the real sidecar and the real simulated upstream as child processes.

Binaries come from $VIDEOTASK_SIDECAR_BIN / $VIDEOTASK_SIM_BIN, else from the
repository's Bazel output (bazel-bin/, else the newest bazel-out/*/bin/). Build
them with BUILD_COMMAND in the repository root. Everything is on loopback with
ports picked by the processes (port 0); every process is stopped at the end
of the test session at the latest.
"""

import asyncio
import atexit
import ctypes
import glob
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

BUILD_COMMAND = "bazel build //server:videotask_sidecar //tests/sim:sim_upstream_server"
API_KEY = "videotask-test-key"
PROTO_RELATIVE_PATH = os.path.join("proto", "videotask", "v1", "video_task.proto")

#: A task that holds in PROCESSING until completed or failed through the control API.
HOLD_PROCESSING = {"queued_polls": 0, "processing_polls": 1_000_000}
#: A task that holds in QUEUED until completed or failed through the control API.
HOLD_QUEUED = {"advances": False}
#: A task that is completed at its first poll.
DONE_AT_ONCE = {"queued_polls": 0, "processing_polls": 0}


def repo_root():
    """The nearest directory above this file that holds the API proto."""
    directory = os.path.dirname(os.path.abspath(__file__))
    while True:
        if os.path.isfile(os.path.join(directory, PROTO_RELATIVE_PATH)):
            return directory
        parent = os.path.dirname(directory)
        if parent == directory:
            raise RuntimeError("no %s above %s" % (PROTO_RELATIVE_PATH, __file__))
        directory = parent


def _executable(path):
    return os.path.isfile(path) and os.access(path, os.X_OK)


def binary(env_var, rel):
    """$env_var, else bazel-bin/<rel>, else the newest bazel-out/*/bin/<rel>."""
    from_env = os.environ.get(env_var)
    if from_env:
        if not _executable(from_env):
            raise RuntimeError("%s=%s is not an executable file" % (env_var, from_env))
        return from_env
    root = repo_root()
    first = os.path.join(root, "bazel-bin", rel)
    if _executable(first):
        return first
    found = [p for p in glob.glob(os.path.join(root, "bazel-out", "*", "bin", rel)) if _executable(p)]
    if found:
        return max(found, key=os.path.getmtime)
    raise RuntimeError("%s not found (tried bazel-bin/ and bazel-out/*/bin/). Build it with `%s` "
                       "in the repository root, or set %s." % (rel, BUILD_COMMAND, env_var))


_running = set()
_running_lock = threading.Lock()


@atexit.register
def _kill_leftovers():
    with _running_lock:
        procs = list(_running)
    for p in procs:
        p.kill()


def _die_with_parent():
    """In the child before exec: SIGKILL it when the test process dies, so
    that a killed test run leaves no sidecar behind (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Proc:
    """A child process whose stdout and stderr are collected as they come."""

    def __init__(self, name, argv, env=None):
        self.name = name
        self._cond = threading.Condition()
        self._out = {"stdout": "", "stderr": ""}
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, env=full_env,
                                       preexec_fn=_die_with_parent)
        with _running_lock:
            _running.add(self)
        self._readers = [
            threading.Thread(target=self._read, args=(stream, self._popen.stdout if stream == "stdout"
                                                      else self._popen.stderr),
                             name="%s-%s" % (name, stream), daemon=True)
            for stream in ("stdout", "stderr")
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream, pipe):
        for raw in iter(pipe.readline, b""):
            with self._cond:
                self._out[stream] += raw.decode("utf-8", "replace")
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stdout(self):
        with self._cond:
            return self._out["stdout"]

    @property
    def stderr(self):
        with self._cond:
            return self._out["stderr"]

    @property
    def alive(self):
        return self._popen.poll() is None

    @property
    def pid(self):
        return self._popen.pid

    def wait_for(self, stream, pattern, timeout=15.0):
        """The first match of `pattern` in the stream; raises if the process
        exits first or `timeout` passes."""
        regex = re.compile(pattern)
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                m = regex.search(self._out[stream])
                if m:
                    return m
                if self._popen.poll() is not None and not any(t.is_alive() for t in self._readers):
                    raise RuntimeError("%s exited (%s) before printing %s; stderr:\n%s"
                                       % (self.name, self._popen.returncode, pattern, self._out["stderr"]))
                left = end - time.monotonic()
                if left <= 0:
                    raise RuntimeError("%s: no %s within %ss; stderr:\n%s"
                                       % (self.name, pattern, timeout, self._out["stderr"]))
                self._cond.wait(min(left, 0.1))

    def signal(self, sig):
        if self.alive:
            self._popen.send_signal(sig)

    def wait(self, timeout):
        """The exit code; raises subprocess.TimeoutExpired."""
        return self._popen.wait(timeout)

    def kill(self):
        if self.alive:
            self._popen.kill()
        self._popen.wait()
        with _running_lock:
            _running.discard(self)

    def stop(self, grace=5.0):
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code."""
        if self.alive:
            self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(grace)
            except subprocess.TimeoutExpired:
                self._popen.kill()
        code = self._popen.wait()
        for t in self._readers:
            t.join(5)
        with _running_lock:
            _running.discard(self)
        return code


def _parse_response(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return status, body.decode("utf-8", "replace")


async def http_request(port, method, path, body=None, timeout=5.0):
    """(status, body text) of one HTTP/1.1 request to 127.0.0.1:port, on the
    running event loop (no thread, nothing blocking)."""

    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            data = b"" if body is None else json.dumps(body).encode()
            head = ("%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n"
                    "Content-Length: %d\r\n" % (method, path, port, len(data)))
            if body is not None:
                head += "Content-Type: application/json\r\n"
            writer.write(head.encode() + b"\r\n" + data)
            await writer.drain()
            return _parse_response(await reader.read())
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)


def http_request_sync(port, method, path, body=None, timeout=5.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        conn.request(method, path, body=data, headers=headers)
        res = conn.getresponse()
        return res.status, res.read().decode("utf-8", "replace")
    finally:
        conn.close()


class Sim:
    """The simulated upstream (tests/sim/sim_upstream_main.cc) and its control API."""

    def __init__(self, scenario="empty", extra_args=()):
        self.proc = Proc("sim_upstream_server",
                         [binary("VIDEOTASK_SIM_BIN", "tests/sim/sim_upstream_server"),
                          "--port=0", "--api_key=" + API_KEY, "--scenario=" + scenario]
                         + list(extra_args))
        try:
            self.port = int(self.proc.wait_for("stdout", r"SIM_UPSTREAM_PORT=(\d+)").group(1))
        except BaseException:
            self.proc.stop()
            raise

    @property
    def base_url(self):
        """The sidecar's --upstream_url."""
        return "http://127.0.0.1:%d/kyyReactApiServer/v1" % self.port

    def control(self, method, path, body=None):
        status, text = http_request_sync(self.port, method, path, body)
        if not 200 <= status < 300:
            raise RuntimeError("%s %s: HTTP %d %s" % (method, path, status, text))
        return text

    async def acontrol(self, method, path, body=None):
        status, text = await http_request(self.port, method, path, body)
        if not 200 <= status < 300:
            raise RuntimeError("%s %s: HTTP %d %s" % (method, path, status, text))
        return text

    def set_task(self, task_id, script):
        return self.control("PUT", "/_sim/tasks/" + task_id, script)

    def fault(self, fault):
        return self.control("POST", "/_sim/faults", fault)

    async def complete(self, task_id):
        return await self.acontrol("POST", "/_sim/tasks/%s/complete" % task_id)

    async def fail(self, task_id, error):
        return await self.acontrol("POST", "/_sim/tasks/%s/fail" % task_id, {"error": error})

    async def counts(self):
        return json.loads(await self.acontrol("GET", "/_sim/counts"))

    def create_fault(self, fault):
        """A create fault ({"family", "kind", "count", "http_status", "message",
        "delay_ms", "retry_after"}; see tests/sim/sim_upstream.h)."""
        return self.control("POST", "/_sim/create_faults", fault)

    def clear_faults(self):
        """Clears every fault, create faults included."""
        return self.control("DELETE", "/_sim/faults")

    def creates(self, prompt=None):
        """The creates the sim received, in order: [{"family", "body" (the
        JSON as received, a str), "id" ("" when nothing was created),
        "answer"}]; with `prompt`, those whose body has that "prompt"."""
        creates = json.loads(self.control("GET", "/_sim/creates"))["creates"]
        if prompt is None:
            return creates

        def prompt_of(c):
            try:
                body = json.loads(c["body"])
            except ValueError:
                return None
            return body.get("prompt") if isinstance(body, dict) else None

        return [c for c in creates if prompt_of(c) == prompt]

    def stop(self):
        return self.proc.stop()


_STARTED = re.compile(r'sidecar_started.*?grpc_target[=:"]+([^\s"]+).*?metrics_port[=:"]+(\d+)')


class Sidecar:
    """The real videotask_sidecar against a Sim, on loopback."""

    def __init__(self, sim, listen="127.0.0.1:0", extra_args=()):
        args = [
            binary("VIDEOTASK_SIDECAR_BIN", "server/videotask_sidecar"),
            "--listen=" + listen,
            "--metrics_listen=127.0.0.1:0",
            "--upstream_url=" + sim.base_url,
            "--poll_interval=200ms",
            "--heartbeat_interval=300ms",
            "--shutdown_grace=2s",
        ] + list(extra_args)
        self.proc = Proc("videotask_sidecar", args, env={"VIDEOTASK_API_KEY": API_KEY})
        try:
            m = self.proc.wait_for("stderr", _STARTED.pattern)
        except BaseException:
            self.proc.stop()
            raise
        self.target = m.group(1)
        self.metrics_port = int(m.group(2))

    @property
    def port(self):
        return int(self.target.rsplit(":", 1)[1])

    async def metrics(self):
        status, text = await http_request(self.metrics_port, "GET", "/metrics")
        if status != 200:
            raise RuntimeError("GET /metrics: HTTP %d" % status)
        return text

    async def metric(self, name):
        """The sum of every sample of `name` (all label sets)."""
        return metric_sum(await self.metrics(), name)

    def stop(self):
        return self.proc.stop()


def metric_sum(text, name):
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    if not found:
        raise RuntimeError("no metric %s in:\n%s" % (name, text))
    return total


async def eventually(probe, timeout, what, interval=0.02):
    """Awaits probe() until it is true; raises after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        if await probe():
            return
        if loop.time() > end:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        await asyncio.sleep(interval)


def closed_port():
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def metric_is(sidecar, name, value):
    return await sidecar.metric(name) == value


async def truthy(value):
    return bool(value)


async def cancel(*tasks):
    """Cancels the tasks (a no-op for finished ones) and waits until they end."""
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
