// The container args and env of the rendered manifests, fed to the real
// sidecar binary: it must start with them, pass the manifests' own startup,
// readiness and liveness probe commands (the real `videotask health` CLI),
// fetch a task from the (simulated) upstream with the key file, pick up a
// rotated key file without a restart, serve /metrics, and exit 0 on SIGTERM
// within its shutdown grace.
//
// Binaries (absolute paths, built by Bazel; deploy/test.sh sets defaults):
//   SIDECAR_BIN  bazel-bin/server/videotask_sidecar
//   CLI_BIN      bazel-bin/plugin/videotask
//   SIM_BIN      bazel-bin/tests/sim/sim_upstream_server
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import {
  existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync,
} from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  EXAMPLES_DIR, durationSeconds, exampleDirs, flagValue, hostPort, podSpecs, render, sidecarOf,
} from "./lib.mjs";

const BINS = {
  SIDECAR_BIN: process.env.SIDECAR_BIN,
  CLI_BIN: process.env.CLI_BIN,
  SIM_BIN: process.env.SIM_BIN,
};
const BUILD_HINT = "build them with: bazel build //server:videotask_sidecar //plugin:videotask //tests/sim:sim_upstream_server";
const API_KEY = "deploy-test-key-0123456789";

// Distinct sidecar containers (args + env + probes) across the examples.
function sidecarContainers() {
  const seen = new Map();
  for (const example of exampleDirs()) {
    for (const obj of render(join(EXAMPLES_DIR, example))) {
      for (const pod of podSpecs(obj)) {
        const c = sidecarOf(pod.spec);
        if (!c) continue;
        const key = JSON.stringify({ a: c.args, c: c.command, e: c.env, s: c.startupProbe, r: c.readinessProbe, l: c.livenessProbe });
        if (!seen.has(key)) seen.set(key, { where: `${example}: ${pod.where}`, container: c, uses: 0 });
        seen.get(key).uses++;
      }
    }
  }
  return [...seen.values()];
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function portIsFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
  });
}

// The manifest's port when it is free here, else any free port.
async function portFor(manifestPort) {
  return (await portIsFree(manifestPort)) ? manifestPort : freePort();
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function run(argv, { env, timeoutMs }) {
  return new Promise((resolve) => {
    const child = spawn(argv[0], argv.slice(1), { env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d) => { out += d; });
    child.stderr.on("data", (d) => { out += d; });
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", (err) => { clearTimeout(timer); resolve({ code: -1, out: String(err) }); });
    child.on("exit", (code, signal) => { clearTimeout(timer); resolve({ code: code ?? signal, out }); });
  });
}

function httpGet(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = "";
      res.on("data", (d) => { body += d; });
      res.on("end", () => resolve({ status: res.statusCode, body }));
    }).on("error", reject);
  });
}

function startSim(dir) {
  return new Promise((resolve, reject) => {
    const child = spawn(BINS.SIM_BIN, ["--port=0", `--api_key=${API_KEY}`, "--scenario=demo"], {
      env: { PATH: process.env.PATH }, stdio: ["ignore", "pipe", "pipe"], cwd: dir,
    });
    let out = "";
    const timer = setTimeout(() => { child.kill("SIGKILL"); reject(new Error(`sim upstream printed no SIM_UPSTREAM_PORT in 30s:\n${out}`)); }, 30000);
    child.stdout.on("data", (d) => {
      out += d;
      const m = /SIM_UPSTREAM_PORT=(\d+)/.exec(out);
      if (m) { clearTimeout(timer); resolve({ child, port: Number(m[1]) }); }
    });
    child.stderr.on("data", (d) => { out += d; });
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error(`sim upstream exited (${code}):\n${out}`)); });
  });
}

// Rewrites host:port values of the manifest to this machine's.
function rewriteAddr(value, from, to) {
  return value.split(from).join(to);
}

describe("the manifests' sidecar settings run the real binary", () => {
  let dir;
  let sim;

  before(async () => {
    const missing = Object.entries(BINS).filter(([, p]) => !p || !existsSync(p)).map(([k, p]) => `${k}=${p ?? "(unset)"}`);
    if (missing.length) throw new Error(`missing binaries: ${missing.join(", ")}; ${BUILD_HINT}`);
    dir = mkdtempSync(join(tmpdir(), "videotask-deploy-"));
    sim = await startSim(dir);
  });

  after(() => {
    if (sim) sim.child.kill("SIGKILL");
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  for (const { where, container, uses } of sidecarContainers()) {
    test(`${where} (and ${uses - 1} more pod specs with the same sidecar): starts, passes its probes, uses and re-reads the key file, serves metrics, exits 0 on SIGTERM`, { timeout: 120000 }, async () => {
      assert.ok(!container.command, "the manifests rely on the image's ENTRYPOINT (the sidecar)");
      // Key file: in a pod the Secret is mounted at the manifest's path;
      // here it is a temp directory laid out as the kubelet lays out a
      // Secret volume (api-key -> ..data/api-key, ..data -> a timestamped
      // directory, swapped atomically on rotation).
      const secretDir = mkdtempSync(join(dir, "secret-"));
      const keyFile = join(secretDir, "api-key");
      const writeSecret = (version, value) => {
        mkdirSync(join(secretDir, `..${version}`));
        writeFileSync(join(secretDir, `..${version}`, "api-key"), `${value}\n`, { mode: 0o600 });
        symlinkSync(`..${version}`, join(secretDir, "..data_tmp"));
        renameSync(join(secretDir, "..data_tmp"), join(secretDir, "..data"));
      };
      writeSecret("v1", API_KEY);
      symlinkSync("..data/api-key", keyFile);

      const listen = hostPort(flagValue(container, "listen"));
      const metrics = hostPort(flagValue(container, "metrics_listen"));
      const grpcPort = await portFor(listen.port);
      const metricsPort = await portFor(metrics.port);
      const manifestUpstream = new URL(flagValue(container, "upstream_url"));
      const upstream = `http://127.0.0.1:${sim.port}${manifestUpstream.pathname}`;

      // Overrides, and only these; everything else is the manifest's:
      // - the upstream: the vendor is not reachable from here; the simulated
      //   upstream on loopback serves the same paths (plain http, which the
      //   sidecar accepts for loopback hosts only);
      // - the key file: a temp file instead of the Secret mount;
      // - ports, only when the manifest's are taken on this machine;
      // - metrics on 127.0.0.1 instead of 0.0.0.0: in a pod Prometheus
      //   scrapes the pod IP; tests here stay on loopback.
      const grpcFrom = `${listen.host}:${listen.port}`;
      const grpcTo = `${listen.host}:${grpcPort}`;
      const overrides = {
        upstream_url: upstream,
        api_key_file: keyFile,
        listen: grpcTo,
        metrics_listen: `127.0.0.1:${metricsPort}`,
      };
      const env = { PATH: process.env.PATH };
      for (const e of container.env || []) {
        assert.equal(e.valueFrom, undefined, `env ${e.name}: valueFrom is not supported here`);
        env[e.name] = e.value ?? "";
      }
      const args = [...(container.args || [])];
      for (const [flag, value] of Object.entries(overrides)) {
        const envName = `VIDEOTASK_${flag.toUpperCase()}`;
        let inArgs = false;
        for (let i = 0; i < args.length; i++) {
          if (args[i].startsWith(`--${flag}=`)) { args[i] = `--${flag}=${value}`; inArgs = true; }
        }
        if (!inArgs || envName in env) env[envName] = value;
      }
      const probeArgv = (probe) => {
        const cmd = container[probe].exec.command.map((a) => rewriteAddr(a, grpcFrom, grpcTo));
        assert.equal(cmd[0], "videotask");
        return [BINS.CLI_BIN, ...cmd.slice(1)];
      };

      const child = spawn(BINS.SIDECAR_BIN, args, { env, stdio: ["ignore", "pipe", "pipe"] });
      let log = "";
      child.stdout.on("data", (d) => { log += d; });
      child.stderr.on("data", (d) => { log += d; });
      const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
      let exitedEarly = null;
      exited.then((r) => { exitedEarly = r; });
      try {
        // The startup probe as the kubelet runs it: every periodSeconds,
        // up to failureThreshold times.
        const sp = container.startupProbe;
        let started = null;
        for (let i = 0; i < (sp.failureThreshold || 3); i++) {
          if (exitedEarly) break;
          const r = await run(probeArgv("startupProbe"), { env: { PATH: process.env.PATH }, timeoutMs: (sp.timeoutSeconds || 1) * 1000 });
          if (r.code === 0) { started = r; break; }
          await sleep((sp.periodSeconds || 10) * 1000);
        }
        assert.ok(started, `startup probe never succeeded; exited: ${JSON.stringify(exitedEarly)}\nsidecar log:\n${log}`);

        for (const probe of ["readinessProbe", "livenessProbe"]) {
          const p = container[probe];
          const r = await run(probeArgv(probe), { env: { PATH: process.env.PATH }, timeoutMs: (p.timeoutSeconds || 1) * 1000 });
          assert.equal(r.code, 0, `${probe} failed: ${r.out}\nsidecar log:\n${log}`);
        }

        // The upstream URL and the key file are wired: a task is fetched
        // from the (simulated) upstream with the key.
        const cliEnv = { PATH: process.env.PATH };
        const target = `--target=${grpcTo}`;
        const got = await run([BINS.CLI_BIN, target, "--timeout=10s", "get", "demo-completes"], { env: cliEnv, timeoutMs: 15000 });
        assert.equal(got.code, 0, `videotask get demo-completes: ${got.out}\nsidecar log:\n${log}`);
        assert.equal(JSON.parse(got.out.trim().split("\n")[0]).id, "demo-completes");

        // Rotation without restart: the Secret's file changes under the
        // running sidecar (here to a key the upstream rejects: exit 6).
        writeSecret("v2", "rotated-key-the-upstream-rejects");
        let rotated = null;
        for (let i = 0; i < 30 && !rotated; i++) {
          const r = await run([BINS.CLI_BIN, target, "--timeout=10s", "--quiet", "get", `rotation-${i}`], { env: cliEnv, timeoutMs: 15000 });
          if (r.code === 6) rotated = r;
          else await sleep(1000);
        }
        assert.ok(rotated, `the sidecar did not pick up the rotated key file within 30s\nsidecar log:\n${log}`);
        writeSecret("v3", API_KEY);

        const m = await httpGet(`http://127.0.0.1:${metricsPort}/metrics`);
        assert.equal(m.status, 200, "GET /metrics");
        assert.ok(m.body.length > 0, "empty /metrics");

        if (flagValue(container, "log_format") === "json") {
          // Its own lines are JSON (libraries may add their own plain ones).
          const lines = log.split("\n").filter((l) => l.startsWith("{"));
          assert.ok(lines.length > 0, `no JSON log line with VIDEOTASK_LOG_FORMAT=json:\n${log}`);
          for (const l of lines) assert.doesNotThrow(() => JSON.parse(l), `not a JSON log line: ${l}`);
        }
        assert.ok(!log.includes(API_KEY), "the API key appears in the log");

        const grace = durationSeconds(flagValue(container, "shutdown_grace") ?? "10s");
        child.kill("SIGTERM");
        const deadline = sleep((grace + 5) * 1000).then(() => "timeout");
        const r = await Promise.race([exited, deadline]);
        assert.notEqual(r, "timeout", `no exit within shutdown_grace ${grace}s + 5s after SIGTERM\n${log}`);
        assert.deepEqual(r, { code: 0, signal: null }, `exit after SIGTERM\n${log}`);
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      }
    });
  }
});
