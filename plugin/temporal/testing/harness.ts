// Test harness (used by test/): runs the real sidecar and the real simulated upstream as child
// processes. Binaries come from $VIDEOTASK_SIDECAR_BIN / $VIDEOTASK_SIM_BIN,
// else from the repository's Bazel output.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import type { EventEmitter } from 'node:events';
import { PROTO_RELATIVE_PATH } from '../src/client';

export const BUILD_COMMAND = 'bazel build //server:videotask_sidecar //tests/sim:sim_upstream_server';
export const API_KEY = 'temporal-test-key';

/** The repository root: the nearest directory above this file with the API proto. */
export function repoRoot(): string {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, PROTO_RELATIVE_PATH))) return dir;
    if (path.dirname(dir) === dir) throw new Error(`no ${PROTO_RELATIVE_PATH} above ${__dirname}`);
  }
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/**
 * $envVar if set; else bazel-bin/<rel>; else the newest bazel-out/<config>/bin/<rel>
 * (bazel-bin follows the last build's configuration, e.g. -c opt).
 */
export function binary(envVar: string, rel: string): string {
  const fromEnv = process.env[envVar];
  if (fromEnv) {
    if (!isExecutable(fromEnv)) throw new Error(`${envVar}=${fromEnv} is not an executable file`);
    return fromEnv;
  }
  const root = repoRoot();
  const tried = [path.join(root, 'bazel-bin', rel)];
  if (isExecutable(tried[0])) return tried[0];
  const out = path.join(root, 'bazel-out');
  let configs: string[] = [];
  try {
    configs = fs.readdirSync(out);
  } catch {
    // no Bazel output at all
  }
  const found = configs
    .map((c) => path.join(out, c, 'bin', rel))
    .filter(isExecutable)
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs);
  if (found.length > 0) return found[0];
  throw new Error(
    `${rel} not found (tried ${tried[0]} and bazel-out/*/bin/${rel}). ` +
      `Build it with \`${BUILD_COMMAND}\` in the repository root, or set ${envVar}.`,
  );
}

export const sidecarBinary = () => binary('VIDEOTASK_SIDECAR_BIN', 'server/videotask_sidecar');
export const simBinary = () => binary('VIDEOTASK_SIM_BIN', 'tests/sim/sim_upstream_server');

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of running) p.kill('SIGKILL');
});

export class Proc {
  stdout = '';
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly child: ChildProcess;

  constructor(
    readonly name: string,
    file: string,
    args: string[],
    env: NodeJS.ProcessEnv = {},
  ) {
    this.child = spawn(file, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    running.add(this.child);
    this.child.stdout!.setEncoding('utf8').on('data', (s: string) => (this.stdout += s));
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => (this.stderr += s));
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        running.delete(this.child);
        resolve({ code, signal });
      });
      this.child.on('error', (err) => {
        running.delete(this.child);
        this.stderr += `\nspawn error: ${err.message}`;
        resolve({ code: null, signal: null });
      });
    });
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null && running.has(this.child);
  }

  /** Resolves with the first match of `pattern` in stdout or stderr; rejects if the process exits first. */
  waitForOutput(stream: 'stdout' | 'stderr', pattern: RegExp, timeoutMs = 15_000): Promise<RegExpMatchArray> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const m = this[stream].match(pattern);
        if (m) {
          done();
          resolve(m);
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${this.name}: no ${pattern} within ${timeoutMs} ms; stderr:\n${this.stderr}`));
      }, timeoutMs);
      const onExit = () => {
        check();
        done();
        reject(new Error(`${this.name} exited before printing ${pattern}; stderr:\n${this.stderr}`));
      };
      const src = stream === 'stdout' ? this.child.stdout! : this.child.stderr!;
      const done = () => {
        clearTimeout(timer);
        src.off('data', onData);
        this.child.off('exit', onExit);
      };
      const onData = () => setImmediate(check);
      src.on('data', onData);
      this.child.once('exit', onExit);
      check();
    });
  }

  signal(sig: NodeJS.Signals): void {
    if (this.alive) this.child.kill(sig);
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 5_000): Promise<void> {
    if (!this.alive) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

export class SimUpstream {
  private constructor(
    readonly proc: Proc,
    readonly port: number,
  ) {}

  /** `videoUrlsOnSim`: completed tasks' video URLs point at the sim itself (so that a sidecar can archive them). */
  static async start(scenario: 'empty' | 'demo' = 'empty', options: { videoUrlsOnSim?: boolean } = {}): Promise<SimUpstream> {
    const proc = new Proc('sim_upstream_server', simBinary(), [
      '--port=0',
      `--api_key=${API_KEY}`,
      `--scenario=${scenario}`,
      ...(options.videoUrlsOnSim ? ['--video_urls_on_sim'] : []),
    ]);
    try {
      const m = await proc.waitForOutput('stdout', /SIM_UPSTREAM_PORT=(\d+)/);
      return new SimUpstream(proc, Number(m[1]));
    } catch (err) {
      await proc.stop();
      throw err;
    }
  }

  /** The sidecar's --upstream_url. */
  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}/kyyReactApiServer/v1`;
  }

  /** A control API request (see tests/sim/sim_upstream.h); throws unless 2xx. */
  async control(method: string, urlPath: string, body?: unknown): Promise<string> {
    const res = await fetch(`http://127.0.0.1:${this.port}${urlPath}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${urlPath}: HTTP ${res.status} ${text}`);
    return text;
  }

  setTask(id: string, script: Record<string, unknown>): Promise<string> {
    return this.control('PUT', `/_sim/tasks/${id}`, script);
  }
  complete(id: string): Promise<string> {
    return this.control('POST', `/_sim/tasks/${id}/complete`);
  }
  fault(fault: Record<string, unknown>): Promise<string> {
    return this.control('POST', '/_sim/faults', fault);
  }
  /** A fault of the create endpoints (kind: refuse, accepted_then_dropped, slow, server_error, ...). */
  createFault(fault: Record<string, unknown>): Promise<string> {
    return this.control('POST', '/_sim/create_faults', fault);
  }
  /** Every create request the sim received, in order, with its body as it came. */
  async creates(): Promise<SimCreate[]> {
    return (JSON.parse(await this.control('GET', '/_sim/creates')) as { creates: SimCreate[] }).creates;
  }

  stop(): Promise<void> {
    return this.proc.stop();
  }
}

/** One create request the sim received (GET /_sim/creates). */
export interface SimCreate {
  family: string;
  /** The request body exactly as received. */
  body: string;
  /** The task created; '' when none was. */
  id: string;
  /** The HTTP status answered ("200"), or "dropped". */
  answer: string;
}

export interface SidecarOptions {
  /** --listen; default 127.0.0.1:0. */
  listen?: string;
  extraArgs?: string[];
}

export class Sidecar {
  private constructor(
    readonly proc: Proc,
    readonly target: string,
    readonly metricsPort: number,
  ) {}

  static async start(sim: SimUpstream, options: SidecarOptions = {}): Promise<Sidecar> {
    const proc = new Proc(
      'videotask_sidecar',
      sidecarBinary(),
      [
        `--listen=${options.listen ?? '127.0.0.1:0'}`,
        '--metrics_listen=127.0.0.1:0',
        `--upstream_url=${sim.baseUrl}`,
        '--poll_interval=200ms',
        '--heartbeat_interval=300ms',
        '--shutdown_grace=2s',
        ...(options.extraArgs ?? []),
      ],
      { VIDEOTASK_API_KEY: API_KEY },
    );
    try {
      // e.g. `... INFO sidecar_started listen=127.0.0.1:0 grpc_target=127.0.0.1:36065 metrics_port=41727 ...`
      const m = await proc.waitForOutput('stderr', /sidecar_started.*?grpc_target[=:"]+([^\s"]+).*?metrics_port[=:"]+(\d+)/);
      return new Sidecar(proc, m[1], Number(m[2]));
    } catch (err) {
      await proc.stop();
      throw err;
    }
  }

  /** The port the sidecar listens on (to start a successor on the same one). */
  get port(): number {
    return Number(this.target.slice(this.target.lastIndexOf(':') + 1));
  }

  /** One value from /metrics, e.g. `videotask_open_streams`. */
  async metric(name: string): Promise<number> {
    const res = await fetch(`http://127.0.0.1:${this.metricsPort}/metrics`);
    const text = await res.text();
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    if (line === undefined) throw new Error(`no metric ${name} in:\n${text}`);
    return Number(line.slice(name.length + 1));
  }

  stop(): Promise<void> {
    return this.proc.stop();
  }
}

/** Polls `probe` until it returns true; for state only observable by polling (metrics). */
export async function eventually(probe: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await probe()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Resolves with the first `event` emitted by `emitter` whose argument satisfies `pred`. */
export function nextEvent<T>(
  emitter: EventEmitter,
  event: string,
  pred: (value: T) => boolean,
  timeoutMs = 10_000,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, listener);
      reject(new Error(`no matching '${event}' within ${timeoutMs} ms`));
    }, timeoutMs);
    const listener = (value: T) => {
      if (!pred(value)) return;
      clearTimeout(timer);
      emitter.off(event, listener);
      resolve(value);
    };
    emitter.on(event, listener);
  });
}

/** A loopback port nothing listens on. */
export async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
