// The container args and env of the rendered manifests, fed to the real
// sidecar binary: it must start with them, pass the manifests' own startup,
// readiness and liveness probe commands (the real `videotask health` CLI),
// fetch a task from the (simulated) upstream with the key file, pick up a
// rotated key file without a restart, serve /metrics, and exit 0 on SIGTERM
// within its shutdown grace. A sidecar with fleet settings (components/fleet)
// gets a real redis-server on loopback with a password in place of the
// user's Redis, and must run in fleet mode with it, write its keys under one
// hash tag in the URL's database, and pick up a rotated Redis password.
//
// Binaries (absolute paths, built by Bazel; deploy/test.sh sets defaults):
//   SIDECAR_BIN  bazel-bin/server/videotask_sidecar
//   CLI_BIN      bazel-bin/plugin/videotask
//   SIM_BIN      bazel-bin/tests/sim/sim_upstream_server
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  EXAMPLES_DIR, durationSeconds, exampleDirs, flagValue, hostPort, podSpecs, render, sidecarOf,
} from "./lib.mjs";
import {
  httpGet, metricValue, parseMetrics, portFor, redisCommands, run, secretDir, sleep, startRedis, startSim,
} from "./procs.mjs";

const BINS = {
  SIDECAR_BIN: process.env.SIDECAR_BIN,
  CLI_BIN: process.env.CLI_BIN,
  SIM_BIN: process.env.SIM_BIN,
};
const BUILD_HINT = "build them with: bazel build //server:videotask_sidecar //plugin:videotask //tests/sim:sim_upstream_server";
const API_KEY = "deploy-test-key-0123456789";
const REDIS_PASSWORD = "deploy-test-redis-password-1";
const REDIS_PASSWORD_ROTATED = "deploy-test-redis-password-2";
// Commands this test sends to Redis itself; any other command Redis counts
// came from the sidecar.
const TEST_COMMANDS = new Set(["auth", "info", "client", "config", "select", "keys", "scan", "hello"]);

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

// Scrapes /metrics until ok(series) holds; fails with message() after timeoutMs.
async function waitForMetrics(port, ok, timeoutMs, message) {
  const until = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    try {
      const m = await httpGet(`http://127.0.0.1:${port}/metrics`);
      last = m.body;
      if (m.status === 200 && ok(parseMetrics(m.body))) return;
    } catch (err) {
      last = String(err);
    }
    if (Date.now() > until) {
      const relevant = last.split("\n").filter((l) => /fleet|redis/.test(l)).join("\n");
      assert.fail(`${message()}\n/metrics (fleet and redis lines):\n${relevant || "(none)"}`);
    }
    await sleep(250);
  }
}

// Rewrites host:port values of the manifest to this machine's.
function rewriteAddr(value, from, to) {
  return value.split(from).join(to);
}

describe("the manifests' sidecar settings run the real binary", () => {
  let dir;
  let sim;
  const redises = [];

  before(async () => {
    const missing = Object.entries(BINS).filter(([, p]) => !p || !existsSync(p)).map(([k, p]) => `${k}=${p ?? "(unset)"}`);
    if (missing.length) throw new Error(`missing binaries: ${missing.join(", ")}; ${BUILD_HINT}`);
    dir = mkdtempSync(join(tmpdir(), "videotask-deploy-"));
    sim = await startSim(BINS.SIM_BIN, dir, API_KEY);
  });

  after(() => {
    if (sim) sim.child.kill("SIGKILL");
    for (const r of redises) r.child.kill("SIGKILL");
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  for (const { where, container, uses } of sidecarContainers()) {
    const fleetPart = flagValue(container, "redis_url") ? ", runs in fleet mode on a real Redis (keys under one hash tag, password file re-read)" : "";
    test(`${where} (and ${uses - 1} more pod specs with the same sidecar): starts, passes its probes, uses and re-reads the key file${fleetPart}, serves metrics, exits 0 on SIGTERM`, { timeout: 120000 }, async () => {
      assert.ok(!container.command, "the manifests rely on the image's ENTRYPOINT (the sidecar)");
      // Key file: in a pod the Secret is mounted at the manifest's path;
      // here it is a temp directory laid out as the kubelet lays out a
      // Secret volume (api-key -> ..data/api-key, ..data -> a timestamped
      // directory, swapped atomically on rotation).
      const keyDir = mkdtempSync(join(dir, "secret-"));
      const keyFile = join(keyDir, basename(flagValue(container, "api_key_file")));
      const writeSecret = secretDir(keyDir, basename(keyFile));
      writeSecret("v1", API_KEY);

      // Fleet mode: a real Redis with a password stands in for the user's,
      // the password in a Secret-like directory as the kubelet mounts it.
      const redisUrl = flagValue(container, "redis_url");
      let redis = null;
      let redisDb = 0;
      let writeRedisSecret = null;
      const fleetOverrides = {};
      if (redisUrl) {
        const u = new URL(redisUrl);
        assert.equal(u.protocol, "redis:", `VIDEOTASK_REDIS_URL ${redisUrl}: the manifests use redis://`);
        redisDb = Number(u.pathname.replace(/^\//, "") || 0);
        const passwordFile = flagValue(container, "redis_password_file");
        assert.ok(passwordFile, "fleet settings without VIDEOTASK_REDIS_PASSWORD_FILE");
        const passDir = mkdtempSync(join(dir, "redis-secret-"));
        writeRedisSecret = secretDir(passDir, basename(passwordFile));
        writeRedisSecret("v1", REDIS_PASSWORD);
        redis = await startRedis(dir, { password: REDIS_PASSWORD });
        redises.push(redis);
        // The manifest's URL with this machine's Redis: same scheme and db.
        fleetOverrides.redis_url = `redis://127.0.0.1:${redis.port}${u.pathname}`;
        fleetOverrides.redis_password_file = join(passDir, basename(passwordFile));
      }

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
      //   scrapes the pod IP; tests here stay on loopback;
      // - fleet mode: Redis on loopback, the password file a temp file.
      const grpcFrom = `${listen.host}:${listen.port}`;
      const grpcTo = `${listen.host}:${grpcPort}`;
      const overrides = {
        upstream_url: upstream,
        api_key_file: keyFile,
        listen: grpcTo,
        metrics_listen: `127.0.0.1:${metricsPort}`,
        ...fleetOverrides,
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

        if (redis) {
          // Fleet mode with the manifest's settings (before the API key is
          // rotated below: the key's fingerprint names the Redis keys).
          await waitForMetrics(metricsPort, (s) => metricValue(s, "videotask_fleet_mode") === 1
            && metricValue(s, "videotask_redis_up") === 1, 15000, () => `not in fleet mode 15s after start\nsidecar log:\n${log}`);
          // Its keys are in the URL's database, under one hash tag (Redis
          // Cluster), and none holds the API key. A watch keeps a task's
          // lease and state in Redis while it runs.
          const watcher = spawn(BINS.CLI_BIN, [target, "--timeout=60s", "watch", "fleet-keys-check"], { env: cliEnv, stdio: ["ignore", "pipe", "pipe"] });
          let keys = [];
          try {
            let watchOut = "";
            watcher.stdout.on("data", (d) => { watchOut += d; });
            for (let i = 0; i < 40 && !watchOut.includes("\n"); i++) await sleep(250);
            assert.ok(watchOut.includes("\n"), `videotask watch printed no SNAPSHOT in 10s\nsidecar log:\n${log}`);
            for (let i = 0; i < 20 && keys.length === 0; i++) {
              [, keys] = await redisCommands(redis.port, REDIS_PASSWORD, [["SELECT", String(redisDb)], ["KEYS", "*"]]);
              if (keys.length === 0) await sleep(250);
            }
          } finally {
            watcher.kill("SIGKILL");
          }
          assert.ok(Array.isArray(keys) && keys.length > 0, `no key in Redis db ${redisDb} while a task is watched in fleet mode`);
          const tags = new Set(keys.map((k) => /\{([^}]+)\}/.exec(k)?.[1]));
          assert.equal(tags.size, 1, `keys not under one hash tag: ${keys.join(" ")}`);
          assert.ok(!tags.has(undefined), `a key without a hash tag: ${keys.join(" ")}`);
          for (const k of keys) assert.ok(!k.includes(API_KEY), `the API key is in a Redis key name: ${k}`);

          // The Redis password file is re-read: Redis gets a new password,
          // the Secret's file follows, and the sidecar's connections are
          // dropped; it must come back authenticated with the new one.
          await redisCommands(redis.port, REDIS_PASSWORD, [["CONFIG", "SET", "requirepass", REDIS_PASSWORD_ROTATED]]);
          writeRedisSecret("v2", REDIS_PASSWORD_ROTATED);
          await redisCommands(redis.port, REDIS_PASSWORD_ROTATED, [["CLIENT", "KILL", "TYPE", "normal"], ["CONFIG", "RESETSTAT"]]);
          let sidecarCalls = 0;
          for (let i = 0; i < 30 && sidecarCalls === 0; i++) {
            // A new id: an upstream request, so a fleet token from Redis.
            await run([BINS.CLI_BIN, target, "--timeout=5s", "--quiet", "get", `redis-rotation-${i}`], { env: cliEnv, timeoutMs: 10000 });
            const [stats] = await redisCommands(redis.port, REDIS_PASSWORD_ROTATED, [["INFO", "commandstats"]]);
            sidecarCalls = [...String(stats).matchAll(/^cmdstat_([a-z|]+):calls=(\d+)/gm)]
              .filter(([, cmd]) => !TEST_COMMANDS.has(cmd.split("|")[0]))
              .reduce((sum, [, , n]) => sum + Number(n), 0);
            if (sidecarCalls === 0) await sleep(1000);
          }
          assert.ok(sidecarCalls > 0, `no command from the sidecar within 30s of the Redis password rotation\nsidecar log:\n${log}`);
          await waitForMetrics(metricsPort, (s) => metricValue(s, "videotask_fleet_mode") === 1, 15000,
            () => `not back in fleet mode after the Redis password rotation\nsidecar log:\n${log}`);
          for (const pw of [REDIS_PASSWORD, REDIS_PASSWORD_ROTATED]) assert.ok(!log.includes(pw), "the Redis password appears in the log");
        }

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
