// Shared helpers of the tests that run real processes: free loopback ports,
// the simulated upstream, a throwaway redis-server, a Secret laid out as the
// kubelet lays it out, a minimal Redis client, and a Prometheus text parser.
// Everything listens on 127.0.0.1 only and is killed by the caller.
import { spawn } from "node:child_process";
import { mkdirSync, renameSync, symlinkSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { join } from "node:path";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export function portIsFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
  });
}

// The manifest's port when it is free here, else any free port.
export async function portFor(manifestPort) {
  return (await portIsFree(manifestPort)) ? manifestPort : freePort();
}

// Runs argv to completion (killed after timeoutMs); output is stdout+stderr.
export function run(argv, { env, timeoutMs }) {
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

export function httpGet(url, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, (res) => {
      let body = "";
      res.on("data", (d) => { body += d; });
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`GET ${url}: no answer in ${timeoutMs} ms`)));
    req.on("error", reject);
  });
}

// Starts a process and resolves once `ready` matches its output (stdout and
// stderr together), with the match; rejects when it exits first or after
// timeoutMs (and kills it).
export function startProcess(argv, { env, cwd, ready, timeoutMs = 30000, what = argv[0] }) {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { env, cwd, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let done = false;
    const timer = setTimeout(() => {
      done = true;
      child.kill("SIGKILL");
      reject(new Error(`${what}: not ready in ${timeoutMs} ms:\n${out}`));
    }, timeoutMs);
    const onData = (d) => {
      out += d;
      const m = ready.exec(out);
      if (m && !done) { done = true; clearTimeout(timer); resolve({ child, match: m, output: () => out }); }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("error", (err) => { if (!done) { done = true; clearTimeout(timer); reject(err); } });
    child.on("exit", (code) => {
      if (!done) { done = true; clearTimeout(timer); reject(new Error(`${what} exited (${code}):\n${out}`)); }
    });
  });
}

// The simulated upstream on a loopback port it picks, accepting apiKey.
export async function startSim(simBin, dir, apiKey, extraArgs = []) {
  const { child, match } = await startProcess([simBin, "--port=0", `--api_key=${apiKey}`, "--scenario=demo", ...extraArgs], {
    env: { PATH: process.env.PATH }, cwd: dir, ready: /SIM_UPSTREAM_PORT=(\d+)/, what: "sim upstream",
  });
  return { child, port: Number(match[1]) };
}

// A throwaway redis-server on 127.0.0.1 (no persistence), optionally with a
// password. Redis cannot pick its own port, so a free one is chosen and the
// start retried if another process took it meanwhile.
export async function startRedis(dir, { password } = {}) {
  let lastErr;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const conf = join(dir, `redis-${port}.conf`);
    const lines = [`port ${port}`, "bind 127.0.0.1", "save \"\"", "appendonly no", `dir ${dir}`, "protected-mode yes"];
    if (password) lines.push(`requirepass ${password}`);
    writeFileSync(conf, `${lines.join("\n")}\n`, { mode: 0o600 });
    try {
      const { child } = await startProcess(["redis-server", conf], {
        env: { PATH: process.env.PATH }, cwd: dir, ready: /Ready to accept connections/, timeoutMs: 15000, what: "redis-server",
      });
      return { child, port };
    } catch (err) {
      lastErr = err;
    }
  }
  throw lastErr;
}

// Sends commands (arrays of strings) to Redis on 127.0.0.1:port, after AUTH
// when a password is given, and returns the parsed replies (errors as
// {error: "..."}).
export function redisCommands(port, password, commands, timeoutMs = 5000) {
  const all = password ? [["AUTH", password], ...commands] : commands;
  const payload = all.map((args) => `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join("")}`).join("");
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, "127.0.0.1");
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => { sock.destroy(); reject(new Error(`redis on port ${port}: no full answer in ${timeoutMs} ms`)); }, timeoutMs);
    sock.on("connect", () => sock.write(payload));
    sock.on("error", (err) => { clearTimeout(timer); reject(err); });
    sock.on("data", (d) => {
      buf = Buffer.concat([buf, d]);
      const replies = [];
      let pos = 0;
      while (replies.length < all.length) {
        const r = parseResp(buf, pos);
        if (!r) return; // incomplete: wait for more
        replies.push(r.value);
        pos = r.next;
      }
      clearTimeout(timer);
      sock.end();
      resolve(password ? replies.slice(1) : replies);
    });
  });
}

function parseResp(buf, pos) {
  const eol = buf.indexOf("\r\n", pos);
  if (eol < 0) return null;
  const type = String.fromCharCode(buf[pos]);
  const line = buf.toString("utf8", pos + 1, eol);
  const next = eol + 2;
  switch (type) {
    case "+": return { value: line, next };
    case "-": return { value: { error: line }, next };
    case ":": return { value: Number(line), next };
    case "$": {
      const n = Number(line);
      if (n < 0) return { value: null, next };
      if (buf.length < next + n + 2) return null;
      return { value: buf.toString("utf8", next, next + n), next: next + n + 2 };
    }
    case "*": {
      const n = Number(line);
      if (n < 0) return { value: null, next };
      const items = [];
      let p = next;
      for (let i = 0; i < n; i++) {
        const r = parseResp(buf, p);
        if (!r) return null;
        items.push(r.value);
        p = r.next;
      }
      return { value: items, next: p };
    }
    default:
      throw new Error(`unexpected Redis reply: ${buf.toString("utf8", pos, Math.min(buf.length, pos + 80))}`);
  }
}

// A Secret volume as the kubelet lays it out: DIR/FILE -> ..data/FILE,
// ..data -> ..VERSION, swapped atomically on each update. Returns
// write(version, value); the first call creates DIR/FILE.
export function secretDir(dir, file) {
  let first = true;
  return (version, value) => {
    mkdirSync(join(dir, `..${version}`));
    writeFileSync(join(dir, `..${version}`, file), `${value}\n`, { mode: 0o600 });
    symlinkSync(`..${version}`, join(dir, "..data_tmp"));
    renameSync(join(dir, "..data_tmp"), join(dir, "..data"));
    if (first) { symlinkSync(`..data/${file}`, join(dir, file)); first = false; }
  };
}

// Prometheus text format -> Map(series name -> { type, labels: Set, samples:
// [{labels: {..}, value}] }). Histogram and summary families also register
// their _bucket/_sum/_count (_sum/_count) series, so a query may use them.
export function parseMetrics(text) {
  const series = new Map();
  const get = (name) => {
    if (!series.has(name)) series.set(name, { type: undefined, labels: new Set(), samples: [] });
    return series.get(name);
  };
  for (const line of text.split("\n")) {
    const t = /^# TYPE (\S+) (\S+)/.exec(line);
    if (t) {
      get(t[1]).type = t[2];
      const parts = t[2] === "histogram" ? ["_bucket", "_sum", "_count"] : t[2] === "summary" ? ["_sum", "_count"] : [];
      for (const p of parts) get(`${t[1]}${p}`).type = `${t[2]} part`;
      continue;
    }
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) throw new Error(`not a Prometheus sample line: ${line}`);
    const labels = {};
    for (const l of (m[2] || "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    const s = get(m[1]);
    for (const k of Object.keys(labels)) s.labels.add(k);
    s.samples.push({ labels, value: Number(m[3]) });
  }
  return series;
}

// The value of a label-less series, or undefined.
export function metricValue(series, name) {
  const s = series.get(name);
  return s?.samples.find((x) => Object.keys(x.labels).length === 0)?.value;
}
