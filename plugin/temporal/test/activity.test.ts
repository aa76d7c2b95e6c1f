// awaitVideoTask in Temporal's MockActivityEnvironment against the real
// sidecar and the real simulated upstream.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { after, afterEach, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import type { Info } from '@temporalio/activity';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger, type LogEntry } from '@temporalio/worker';
import {
  VideoTaskClient,
  createVideoTaskActivities,
  type VideoTaskActivities,
  type VideoTaskActivitiesOptions,
} from '../src';
import { loadVideoTaskPackageDefinition } from '../src/client';
import type { VideoTaskEvent, VideoTaskHeartbeatDetails, VideoTaskStatus } from '../src/types';
import { Sidecar, SimUpstream, closedPort, eventually, nextEvent } from '../testing/harness';

const QUEUED: VideoTaskStatus = 'VIDEO_TASK_STATUS_QUEUED';
const PROCESSING: VideoTaskStatus = 'VIDEO_TASK_STATUS_PROCESSING';
const COMPLETED: VideoTaskStatus = 'VIDEO_TASK_STATUS_COMPLETED';
const FAILED: VideoTaskStatus = 'VIDEO_TASK_STATUS_FAILED';

/** A task that holds in PROCESSING until completed through the control API. */
const HOLD_PROCESSING = { queued_polls: 0, processing_polls: 1_000_000 };
/** A task that holds in QUEUED until completed through the control API. */
const HOLD_QUEUED = { advances: false };

/** Every test's time limit, so that a hang fails instead of blocking the run. */
const LIMIT = { timeout: 60_000 };

const runs: Run[] = [];

/** One activity run's environment and what it observed. */
class Run {
  readonly env: MockActivityEnvironment;
  readonly heartbeats: VideoTaskHeartbeatDetails[] = [];
  /** When each heartbeat came (Date.now()). */
  readonly heartbeatTimes: number[] = [];
  readonly events: VideoTaskEvent[] = [];
  readonly logs: LogEntry[] = [];
  readonly activities: VideoTaskActivities;
  /** The client made for `options.target`, closed after the test. */
  readonly ownClient?: VideoTaskClient;

  constructor(
    options: VideoTaskActivitiesOptions,
    info?: Partial<Info>,
    onEvent?: (event: VideoTaskEvent, run: Run) => void,
  ) {
    if (!options.client) {
      this.ownClient = new VideoTaskClient({ target: options.target, channelOptions: options.channelOptions });
      options = { ...options, client: this.ownClient };
    }
    this.env = new MockActivityEnvironment(info, {
      logger: new DefaultLogger('DEBUG', (entry) => this.logs.push(entry)),
    });
    this.env.on('heartbeat', (d: VideoTaskHeartbeatDetails) => {
      this.heartbeats.push(d);
      this.heartbeatTimes.push(Date.now());
    });
    this.activities = createVideoTaskActivities({
      ...options,
      onEvent: (event) => {
        onEvent?.(event, this);
        this.events.push(event);
      },
    });
    runs.push(this);
  }

  /** Runs the activity; rejects if it has not ended within `limitMs` (a failure, not a hang). */
  start(id: string, limitMs = 15_000): Promise<unknown> {
    const { awaitVideoTask } = this.activities;
    let timer: NodeJS.Timeout | undefined;
    const limit = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the activity did not end within ${limitMs} ms`)), limitMs);
    });
    return Promise.race([this.env.run(awaitVideoTask, id), limit]).finally(() => clearTimeout(timer));
  }

  /** The first heartbeat from now on that satisfies `pred`. */
  heartbeat(pred: (d: VideoTaskHeartbeatDetails) => boolean, timeoutMs?: number) {
    return nextEvent<VideoTaskHeartbeatDetails>(this.env, 'heartbeat', pred, timeoutMs);
  }

  /** Resolves once the heartbeats so far satisfy `pred` (checked now and on each heartbeat). */
  until(pred: (heartbeats: VideoTaskHeartbeatDetails[]) => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    if (pred(this.heartbeats)) return Promise.resolve();
    return nextEvent(this.env, 'heartbeat', () => pred(this.heartbeats), timeoutMs).then(
      () => undefined,
      (err: Error) => {
        throw new Error(`${what}: ${err.message}; heartbeats: ${JSON.stringify(this.heartbeats)}`);
      },
    );
  }

  /** The statuses of the reported SNAPSHOTs and TRANSITIONs, as "PREVIOUS>STATUS". */
  changes(): string[] {
    return this.events
      .filter((e) => e.type !== 'EVENT_TYPE_HEARTBEAT')
      .map((e) => `${short(e.previousStatus)}>${short(e.task.status)}`);
  }
}

function short(s: VideoTaskStatus): string {
  return s.replace('VIDEO_TASK_STATUS_', '');
}

function isFailure(type: string, nonRetryable: boolean, check?: (f: ApplicationFailure) => void) {
  return (err: unknown) => {
    assert.ok(err instanceof ApplicationFailure, `expected an ApplicationFailure, got ${String(err)}`);
    assert.equal(err.type, type);
    assert.equal(err.nonRetryable, nonRetryable);
    check?.(err);
    return true;
  };
}

/** Ends the activity runs of a test: cancels them (a no-op for finished ones) and closes their clients. */
function endRuns(): void {
  for (const run of runs.splice(0)) {
    run.env.cancel();
    run.ownClient?.close();
  }
}

type WatchCall = grpc.ServerWritableStream<{ id: string }, unknown>;

/** A VideoTaskService whose WatchVideoTask does what the test says (the n-th call, from 1). */
class FakeSidecar {
  calls = 0;
  private constructor(
    private readonly server: grpc.Server,
    readonly target: string,
  ) {}

  static async start(watch: (call: WatchCall, n: number) => void): Promise<FakeSidecar> {
    const loaded = grpc.loadPackageDefinition(loadVideoTaskPackageDefinition()) as unknown as {
      videotask: { v1: { VideoTaskService: { service: grpc.ServiceDefinition } } };
    };
    const server = new grpc.Server();
    let fake: FakeSidecar | undefined;
    server.addService(loaded.videotask.v1.VideoTaskService.service, {
      WatchVideoTask: (call: WatchCall) => watch(call, ++fake!.calls),
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    fake = new FakeSidecar(server, `127.0.0.1:${port}`);
    return fake;
  }

  stop(): void {
    this.server.forceShutdown();
  }
}

function snapshot(id: string, status: VideoTaskStatus) {
  return { type: 'EVENT_TYPE_SNAPSHOT', task: { id, model: 'videos', status } };
}

/** Sends the message, then ends the call with `code` (OK: a normal end of the stream). */
function sendThenEnd(call: WatchCall, message: unknown, code: grpc.status): void {
  call.write(message, () => {
    if (code === grpc.status.OK) call.end();
    else call.emit('error', { code, details: 'the fake sidecar flaps' });
  });
}

/**
 * A loopback port that accepts TCP connections and never answers (no HTTP/2
 * settings): a hung sidecar, or the wrong process on the port.
 */
async function silentListener(): Promise<{ port: number; connections: () => number; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  let connections = 0;
  const server = net.createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    connections: () => connections,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** The largest gap between consecutive heartbeats from index `from` on, and from the last one to now. */
function largestGap(run: Run, from = 0): number {
  const times = [...run.heartbeatTimes.slice(from), Date.now()];
  let gap = 0;
  for (let i = 1; i < times.length; i++) gap = Math.max(gap, times[i] - times[i - 1]);
  return gap;
}

describe('awaitVideoTask against a fake sidecar', () => {
  const fakes: FakeSidecar[] = [];
  afterEach(() => {
    endRuns();
    for (const f of fakes.splice(0)) f.stop();
  });

  for (const endCode of [grpc.status.UNAVAILABLE, grpc.status.OK]) {
    it(`gives up when every stream sends a repeated SNAPSHOT and ends with ${grpc.status[endCode]}`, LIMIT, async () => {
      const fake = await FakeSidecar.start((call) => sendThenEnd(call, snapshot(call.request.id, PROCESSING), endCode));
      fakes.push(fake);
      const run = new Run({ target: fake.target, initialBackoffMs: 50, maxBackoffMs: 2000, giveUpAfterMs: 1000 });
      const t0 = Date.now();
      await assert.rejects(
        run.start('flapping'),
        isFailure('VideoTaskSidecarUnavailable', false, (f) => {
          // Gave up (UNAVAILABLE), and says what ended the last stream.
          assert.deepEqual(f.details?.[0], {
            code: 'UNAVAILABLE',
            message: f.message.replace(/^video task flapping: UNAVAILABLE: /, ''),
            lastCode: grpc.status[endCode],
          });
          assert.match(f.message, new RegExp(`unavailable after retries: ${grpc.status[endCode]}: `));
        }),
      );
      const elapsed = Date.now() - t0;
      // The outage began when the first stream (the only healthy one) ended.
      assert.ok(elapsed >= 950 && elapsed < 3000, `gave up after ${elapsed} ms`);
      // The backoff grew (50, 100, 200, ... ms with jitter) instead of resetting on every SNAPSHOT.
      assert.ok(fake.calls >= 3 && fake.calls <= 10, `${fake.calls} streams`);
      assert.deepEqual(run.changes(), ['UNSPECIFIED>PROCESSING'], 'PROCESSING reported exactly once');
      const reconnecting = run.heartbeats.filter((d) => d.event === 'RECONNECTING');
      assert.ok(reconnecting.length >= fake.calls - 1, `${reconnecting.length} reconnect heartbeats`);
      assert.ok(reconnecting.every((d) => d.lastStatus === PROCESSING));
    });
  }

  it('retries a server-sent DEADLINE_EXCEEDED', LIMIT, async () => {
    const fake = await FakeSidecar.start((call, n) => {
      if (n === 1) call.emit('error', { code: grpc.status.DEADLINE_EXCEEDED, details: 'upstream too slow' });
      else sendThenEnd(call, snapshot(call.request.id, COMPLETED), grpc.status.OK);
    });
    fakes.push(fake);
    const run = new Run({ target: fake.target, initialBackoffMs: 50, giveUpAfterMs: 5000 });
    const task = (await run.start('slow')) as { status: string; id: string };
    assert.equal(task.status, COMPLETED);
    assert.equal(task.id, 'slow');
    assert.equal(fake.calls, 2);
    assert.deepEqual(run.changes(), ['UNSPECIFIED>COMPLETED']);
    assert.ok(run.logs.some((l) => l.level === 'WARN' && /reconnecting/.test(l.message)));
  });

  // What a misdeployment answers, where retrying cannot help: another gRPC
  // server on the sidecar's port (a real grpc-js server without the service
  // answers UNIMPLEMENTED), or a proxy or mesh in front of the sidecar that
  // refuses the worker (the fake answers as such a proxy would).
  for (const code of [grpc.status.UNIMPLEMENTED, grpc.status.UNAUTHENTICATED, grpc.status.PERMISSION_DENIED]) {
    it(`throws a non-retryable failure for ${grpc.status[code]} without retrying`, LIMIT, async () => {
      let target: string;
      let calls = () => 1;
      if (code === grpc.status.UNIMPLEMENTED) {
        const other = new grpc.Server();
        const port = await new Promise<number>((resolve, reject) =>
          other.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
        );
        fakes.push({ stop: () => other.forceShutdown() } as FakeSidecar);
        target = `127.0.0.1:${port}`;
      } else {
        const fake = await FakeSidecar.start((call) => call.emit('error', { code, details: 'denied by policy' }));
        fakes.push(fake);
        target = fake.target;
        calls = () => fake.calls;
      }
      const run = new Run({ target, initialBackoffMs: 50, giveUpAfterMs: 5000 });
      const t0 = Date.now();
      const type = { 12: 'VideoTaskUnimplemented', 16: 'VideoTaskUnauthenticated', 7: 'VideoTaskPermissionDenied' }[code as 12 | 16 | 7];
      await assert.rejects(
        run.start('misdeployed'),
        isFailure(type, true, (f) => assert.equal((f.details?.[0] as { code: string }).code, grpc.status[code])),
      );
      // Retrying would end at giveUpAfterMs (5 s).
      assert.ok(Date.now() - t0 < 2500, `failed after ${Date.now() - t0} ms`);
      assert.equal(calls(), 1, 'one stream, no retry');
      assert.ok(!run.logs.some((l) => /reconnecting/.test(l.message)));
    });
  }

  it('ends a stream that goes silent after its SNAPSHOT once maxSilentMs passes (retryable)', LIMIT, async () => {
    // A wedged stream: open, on a connected channel, answered once, then
    // nothing, not even the sidecar's HEARTBEATs.
    let cancelled = false;
    const fake = await FakeSidecar.start((call) => {
      call.on('cancelled', () => (cancelled = true));
      call.write(snapshot(call.request.id, PROCESSING));
    });
    fakes.push(fake);
    const run = new Run({ target: fake.target, maxSilentMs: 500 }, { heartbeatTimeoutMs: 300 });
    const t0 = Date.now();
    await assert.rejects(
      run.start('wedged'),
      isFailure('VideoTaskSidecarSilent', false, (f) => {
        assert.deepEqual(f.details?.[0], { silentMs: 500, lastStatus: PROCESSING });
        assert.equal(f.message, `video task wedged: no message from the sidecar at ${fake.target} for 0.5s (maxSilentMs)`);
      }),
    );
    const elapsed = Date.now() - t0;
    assert.ok(elapsed >= 500 && elapsed < 2000, `ended after ${elapsed} ms`);
    // The timer kept the attempt alive meanwhile, and the stream was cancelled.
    assert.ok(run.heartbeats.filter((d) => d.event === 'WAITING').length >= 2);
    await eventually(async () => cancelled, 2000, 'the server sees the stream cancelled');
    assert.equal(fake.calls, 1);
  });
});

describe('awaitVideoTask', () => {
  let sim: SimUpstream;
  let sidecar: Sidecar;
  let client: VideoTaskClient;
  const extraSidecars: Sidecar[] = [];

  before(async () => {
    sim = await SimUpstream.start('empty');
    sidecar = await Sidecar.start(sim);
    client = new VideoTaskClient({ target: sidecar.target });
  });

  // A failed test may leave its activity running: cancel it (a no-op for
  // finished ones) so that it does not outlive the test.
  afterEach(endRuns);

  after(async () => {
    client?.close();
    await Promise.all([sidecar?.stop(), ...extraSidecars.map((s) => s.stop())]);
    await sim?.stop();
  });

  it('returns the completed task as a plain object', LIMIT, async () => {
    await sim.setTask('completes', { queued_polls: 1, processing_polls: 1 });
    const run = new Run({ client });
    const task = await run.start('completes');
    assert.deepEqual(JSON.parse(JSON.stringify(task)), task, 'plain JSON data');
    assert.equal(Object.getPrototypeOf(task), Object.prototype);
    assert.deepEqual(
      { ...(task as object), observeTime: null },
      {
        id: 'completes',
        model: 'videos',
        createTime: { seconds: '1761635478', nanos: 0 },
        status: COMPLETED,
        videoUrl: 'https://cdn.invalid/videos/completes.mp4',
        actualDuration: { seconds: '8', nanos: 0 },
        error: '',
        observeTime: null,
        archive: null,
        archiveError: '',
      },
    );
    assert.deepEqual(run.changes(), ['UNSPECIFIED>QUEUED', 'QUEUED>PROCESSING', 'PROCESSING>COMPLETED']);
  });

  it('heartbeats on every event, with the last status in the details', LIMIT, async () => {
    await sim.setTask('beats', HOLD_PROCESSING);
    // maxSilentMs below the time the test waits: every message, HEARTBEATs
    // included, restarts the silence clock.
    const run = new Run({ client, maxSilentMs: 600 });
    const done = run.start('beats');
    // The sidecar's HEARTBEATs (every 300 ms) keep the activity alive while nothing changes.
    let sidecarBeats = 0;
    await run.heartbeat((d) => d.event === 'EVENT_TYPE_HEARTBEAT' && ++sidecarBeats === 3);
    await sim.complete('beats');
    const task = (await done) as { status: string };
    assert.equal(task.status, COMPLETED);

    // One heartbeat per event (nothing was a duplicate), carrying the event
    // and the status as of that event.
    assert.equal(run.heartbeats.length, run.events.length);
    run.heartbeats.forEach((d, i) => {
      assert.deepEqual(d, { id: 'beats', lastStatus: run.events[i].task.status, event: run.events[i].type });
    });
    assert.deepEqual(run.heartbeats[0], { id: 'beats', lastStatus: PROCESSING, event: 'EVENT_TYPE_SNAPSHOT' });
    assert.deepEqual(run.heartbeats.at(-1), { id: 'beats', lastStatus: COMPLETED, event: 'EVENT_TYPE_TRANSITION' });
    assert.ok(run.heartbeats.filter((d) => d.event === 'EVENT_TYPE_HEARTBEAT').length >= 2);
    assert.deepEqual(run.changes(), ['UNSPECIFIED>PROCESSING', 'PROCESSING>COMPLETED']);
  });

  it('throws a non-retryable VideoTaskFailed for a failed video', LIMIT, async () => {
    await sim.setTask('fails', { queued_polls: 1, processing_polls: 1, fails: true, error: 'reference image rejected' });
    const run = new Run({ client });
    await assert.rejects(
      run.start('fails'),
      isFailure('VideoTaskFailed', true, (f) => {
        assert.match(f.message, /reference image rejected/);
        const task = f.details?.[0] as { status: string; error: string; id: string };
        assert.equal(task.status, FAILED);
        assert.equal(task.error, 'reference image rejected');
        assert.equal(task.id, 'fails');
      }),
    );
    assert.deepEqual(run.changes(), ['UNSPECIFIED>QUEUED', 'QUEUED>PROCESSING', 'PROCESSING>FAILED']);
  });

  it('throws a non-retryable VideoTaskNotFound for NOT_FOUND once notFoundRetryMs passes', LIMIT, async () => {
    // The sidecar answers NOT_FOUND after confirming the 404 once (200 ms
    // later here): well within the window.
    const run = new Run({ client, notFoundRetryMs: 700, initialBackoffMs: 50 });
    const t0 = Date.now();
    await assert.rejects(
      run.start('never-created'),
      isFailure('VideoTaskNotFound', true, (f) => {
        assert.deepEqual(f.details?.[0], { code: 'NOT_FOUND', message: 'the upstream does not know task never-created' });
      }),
    );
    assert.ok(Date.now() - t0 >= 700, `failed after ${Date.now() - t0} ms`);
    assert.ok(run.logs.some((l) => l.level === 'WARN' && l.meta?.code === 'NOT_FOUND'), 'asked again meanwhile');
    assert.deepEqual(run.events, []);
  });

  it('retries NOT_FOUND for a just-created id that the vendor does not know yet', LIMIT, async () => {
    const run = new Run({ client, notFoundRetryMs: 10_000, initialBackoffMs: 100 });
    const done = run.start('fresh-id');
    // The sidecar answered NOT_FOUND (it confirmed the 404 once): the activity asks again.
    await run.heartbeat((d) => d.event === 'RECONNECTING');
    assert.ok(run.logs.some((l) => l.level === 'WARN' && l.meta?.code === 'NOT_FOUND'));
    // Now the vendor knows it.
    await sim.setTask('fresh-id', { queued_polls: 0, processing_polls: 0 });
    const task = (await done) as { status: string };
    assert.equal(task.status, COMPLETED);
    assert.deepEqual(run.changes(), ['UNSPECIFIED>COMPLETED']);
  });

  it('does not retry NOT_FOUND for an id an earlier attempt saw', LIMIT, async () => {
    const run = new Run(
      { client, notFoundRetryMs: 10_000 },
      { attempt: 2, heartbeatDetails: { id: 'vanished', lastStatus: PROCESSING, event: 'EVENT_TYPE_HEARTBEAT' } },
    );
    const t0 = Date.now();
    await assert.rejects(run.start('vanished'), isFailure('VideoTaskNotFound', true));
    assert.ok(Date.now() - t0 < 2000, `failed after ${Date.now() - t0} ms`);
    assert.ok(!run.logs.some((l) => /reconnecting/.test(l.message)));
  });

  it('throws a non-retryable VideoTaskInvalidArgument for INVALID_ARGUMENT', LIMIT, async () => {
    const run = new Run({ client });
    await assert.rejects(
      run.start('not a valid id!'),
      isFailure('VideoTaskInvalidArgument', true, (f) => {
        assert.deepEqual((f.details?.[0] as { code: string }).code, 'INVALID_ARGUMENT');
      }),
    );
  });

  it('throws a non-retryable VideoTaskFailedPrecondition when the upstream rejects the key', LIMIT, async () => {
    await sim.setTask('unauthorized', HOLD_QUEUED);
    await sim.fault({ id: 'unauthorized', kind: 'unauthorized', count: -1 });
    const run = new Run({ client });
    await assert.rejects(
      run.start('unauthorized'),
      isFailure('VideoTaskFailedPrecondition', true, (f) => {
        assert.deepEqual((f.details?.[0] as { code: string }).code, 'FAILED_PRECONDITION');
      }),
    );
  });

  it('cancellation ends the activity promptly and cancels the gRPC stream', LIMIT, async () => {
    await sim.setTask('cancelled', HOLD_QUEUED);
    const run = new Run({ client });
    const done = run.start('cancelled');
    await run.heartbeat((d) => d.event === 'EVENT_TYPE_SNAPSHOT');
    await eventually(async () => (await sidecar.metric('videotask_open_streams')) === 1, 5000, 'one open stream');
    const t0 = Date.now();
    run.env.cancel();
    await assert.rejects(done, (err) => err instanceof CancelledFailure);
    // Without the cancellation it would not end (the task is held).
    assert.ok(Date.now() - t0 < 3000, `cancelled after ${Date.now() - t0} ms`);
    // The sidecar sees the stream end (the client sent RST_STREAM).
    await eventually(async () => (await sidecar.metric('videotask_open_streams')) === 0, 5000, 'no open streams');
    assert.equal(await sidecar.metric('videotask_active_watches'), 0);
  });

  it('resumes from an earlier attempt\'s heartbeat details without reporting its status again', LIMIT, async () => {
    await sim.setTask('resumed', HOLD_PROCESSING);
    const run = new Run(
      { client },
      { attempt: 2, heartbeatDetails: { id: 'resumed', lastStatus: PROCESSING, event: 'EVENT_TYPE_HEARTBEAT' } },
    );
    const done = run.start('resumed');
    const first = await run.heartbeat(() => true);
    assert.deepEqual(first, { id: 'resumed', lastStatus: PROCESSING, event: 'EVENT_TYPE_SNAPSHOT' });
    await run.heartbeat((d) => d.event === 'EVENT_TYPE_HEARTBEAT');
    assert.deepEqual(run.changes(), [], 'the SNAPSHOT repeats the reported status: not reported');
    await sim.complete('resumed');
    await done;
    assert.deepEqual(run.changes(), ['PROCESSING>COMPLETED']);
  });

  it('reports a status changed since the earlier attempt as a transition from it', LIMIT, async () => {
    await sim.setTask('moved-on', HOLD_PROCESSING);
    const run = new Run(
      { client },
      { attempt: 3, heartbeatDetails: { id: 'moved-on', lastStatus: QUEUED, event: 'RECONNECTING' } },
    );
    const done = run.start('moved-on');
    await run.heartbeat((d) => d.event === 'EVENT_TYPE_HEARTBEAT');
    await sim.complete('moved-on');
    await done;
    assert.deepEqual(run.changes(), ['QUEUED>PROCESSING', 'PROCESSING>COMPLETED']);
    assert.equal(run.events[0].type, 'EVENT_TYPE_TRANSITION');
  });

  it('ignores heartbeat details of another task', LIMIT, async () => {
    await sim.setTask('other-details', { queued_polls: 0, processing_polls: 0 });
    const run = new Run(
      { client },
      { attempt: 2, heartbeatDetails: { id: 'someone-else', lastStatus: COMPLETED, event: 'EVENT_TYPE_SNAPSHOT' } },
    );
    await run.start('other-details');
    assert.deepEqual(run.changes(), ['UNSPECIFIED>COMPLETED']);
  });

  for (const whileDown of [false, true]) {
    const name = whileDown
      ? 'survives a sidecar restart while the task finishes during the outage'
      : 'survives a sidecar restart mid-watch without reporting a status twice';
    it(name, LIMIT, async () => {
      const id = whileDown ? 'restart-finished' : 'restart';
      await sim.setTask(id, HOLD_QUEUED);
      const first = await Sidecar.start(sim);
      extraSidecars.push(first);
      const run = new Run({ target: first.target, initialBackoffMs: 50, maxBackoffMs: 500, giveUpAfterMs: 20_000 });
      const done = run.start(id);
      await run.heartbeat((d) => d.event === 'EVENT_TYPE_HEARTBEAT');

      // Drain: the open watch ends with UNAVAILABLE and the sidecar exits 0.
      const reconnecting = run.heartbeat((d) => d.event === 'RECONNECTING');
      first.proc.signal('SIGTERM');
      assert.deepEqual(await first.proc.exited, { code: 0, signal: null });
      await reconnecting;
      if (whileDown) await sim.complete(id);

      const mark = run.heartbeats.length;
      const second = await Sidecar.start(sim, { listen: `127.0.0.1:${first.port}` });
      extraSidecars.push(second);
      assert.equal(second.target, first.target);
      if (!whileDown) {
        // Resumed on the new sidecar: its SNAPSHOT, then its HEARTBEATs.
        await run.until((hs) => {
          const since = hs.slice(mark).map((d) => d.event);
          const snapshot = since.indexOf('EVENT_TYPE_SNAPSHOT');
          return snapshot >= 0 && since.indexOf('EVENT_TYPE_HEARTBEAT', snapshot) > snapshot;
        }, 'resumed on the new sidecar');
        await sim.complete(id);
      }
      const task = (await done) as { status: string };
      assert.equal(task.status, COMPLETED);
      // Each status is reported once; the new stream's SNAPSHOT was not a new start.
      assert.deepEqual(run.changes(), ['UNSPECIFIED>QUEUED', 'QUEUED>COMPLETED']);
      assert.equal(run.heartbeats.filter((d) => d.event === 'EVENT_TYPE_SNAPSHOT').length, 2, 'two streams');
      assert.ok(run.logs.some((l) => l.level === 'WARN' && /reconnecting/.test(l.message)));
    });
  }

  it('throws a retryable VideoTaskSidecarUnavailable after the reconnect deadline', LIMIT, async () => {
    const target = `127.0.0.1:${await closedPort()}`;
    const run = new Run({ target, initialBackoffMs: 50, maxBackoffMs: 200, giveUpAfterMs: 1000 });
    const t0 = Date.now();
    await assert.rejects(
      run.start('any-task'),
      isFailure('VideoTaskSidecarUnavailable', false, (f) => {
        // Never reached: says so, and where, not a vague timeout.
        assert.match(f.message, new RegExp(`^video task any-task: UNAVAILABLE: sidecar at ${target} unreachable for 1s$`));
        // The last stream failed with grpc-js's own UNAVAILABLE (no connection).
        assert.deepEqual(f.details?.[0], {
          code: 'UNAVAILABLE',
          message: `sidecar at ${target} unreachable for 1s`,
          lastCode: 'UNAVAILABLE',
        });
      }),
    );
    const elapsed = Date.now() - t0;
    assert.ok(elapsed >= 1000 && elapsed < 5000, `gave up after ${elapsed} ms`);
    // It kept heartbeating while reconnecting.
    assert.ok(run.heartbeats.length >= 2);
    assert.ok(run.heartbeats.every((d) => d.event === 'RECONNECTING' && d.lastStatus === 'VIDEO_TASK_STATUS_UNSPECIFIED'));
  });

  it('throws a retryable VideoTaskSidecarUnavailable when the sidecar goes away mid-watch', LIMIT, async () => {
    await sim.setTask('abandoned', HOLD_QUEUED);
    const gone = await Sidecar.start(sim);
    extraSidecars.push(gone);
    const run = new Run({ target: gone.target, initialBackoffMs: 50, maxBackoffMs: 200, giveUpAfterMs: 1000 });
    const done = run.start('abandoned');
    await run.heartbeat((d) => d.event === 'EVENT_TYPE_SNAPSHOT');
    await gone.stop();
    await assert.rejects(
      done,
      isFailure('VideoTaskSidecarUnavailable', false, (f) => {
        // It was reached: not "unreachable", but what ended the last stream.
        assert.match(f.message, new RegExp(`sidecar at ${gone.target} unavailable after retries: `));
      }),
    );
    // It reconnected with the last status in its heartbeats until it gave up.
    const reconnecting = run.heartbeats.filter((d) => d.event === 'RECONNECTING');
    assert.ok(reconnecting.length >= 2, `${reconnecting.length} reconnect heartbeats`);
    assert.ok(reconnecting.every((d) => d.lastStatus === QUEUED));
  });

  it('gives up on a sidecar that accepts connections but never answers, heartbeating meanwhile', LIMIT, async () => {
    const silent = await silentListener();
    try {
      const target = `127.0.0.1:${silent.port}`;
      const run = new Run(
        { target, initialBackoffMs: 50, maxBackoffMs: 200, giveUpAfterMs: 1500 },
        { heartbeatTimeoutMs: 600 },
      );
      const t0 = Date.now();
      await assert.rejects(
        run.start('hung-sidecar', 10_000),
        isFailure('VideoTaskSidecarUnavailable', false, (f) => {
          assert.match(f.message, new RegExp(`^video task hung-sidecar: UNAVAILABLE: sidecar at ${target} unreachable for 1\\.5s$`));
          // No stream was ever answered.
          assert.equal((f.details?.[0] as { lastCode: unknown }).lastCode, null);
        }),
      );
      const elapsed = Date.now() - t0;
      assert.ok(elapsed >= 1500 && elapsed < 4000, `gave up after ${elapsed} ms`);
      assert.ok(silent.connections() >= 1, 'it did connect');
      // The heartbeat timer kept the attempt alive while the call hung (every ~200 ms).
      assert.ok(run.heartbeats.length >= 4, `${run.heartbeats.length} heartbeats`);
      assert.ok(run.heartbeats.every((d) => d.event === 'WAITING' && d.lastStatus === 'VIDEO_TASK_STATUS_UNSPECIFIED'));
    } finally {
      await silent.close();
    }
  });

  it('gives up with lastCode RESOURCE_EXHAUSTED when the sidecar refuses every watch (--max_watches)', LIMIT, async () => {
    await sim.setTask('occupier', HOLD_QUEUED);
    const full = await Sidecar.start(sim, { extraArgs: ['--max_watches=1'] });
    extraSidecars.push(full);
    const occupierClient = new VideoTaskClient({ target: full.target });
    const stop = new AbortController();
    const occupier = occupierClient.await('occupier', { signal: stop.signal }).catch(() => undefined);
    try {
      await eventually(async () => (await full.metric('videotask_active_watches')) === 1, 5000, 'the one watch');
      const run = new Run({ target: full.target, initialBackoffMs: 50, maxBackoffMs: 200, giveUpAfterMs: 400 });
      await assert.rejects(
        run.start('refused'),
        isFailure('VideoTaskSidecarUnavailable', false, (f) => {
          const details = f.details?.[0] as { code: string; lastCode: string };
          assert.equal(details.code, 'UNAVAILABLE');
          assert.equal(details.lastCode, 'RESOURCE_EXHAUSTED');
          assert.match(f.message, /unavailable after retries: RESOURCE_EXHAUSTED: the sidecar holds its maximum of 1 watches/);
        }),
      );
    } finally {
      stop.abort();
      await occupier;
      occupierClient.close();
    }
  });

  it('ends the attempt when the sidecar sends nothing for maxSilentMs (its first polls fail)', LIMIT, async () => {
    // Every poll of the task fails (a 503 from the simulated vendor): the
    // sidecar has nothing to send, not even HEARTBEATs, on an open stream.
    const id = 'silent-vendor';
    await sim.setTask(id, HOLD_QUEUED);
    await sim.fault({ id, kind: 'server_error', count: -1 });
    const run = new Run({ client, maxSilentMs: 500 }, { heartbeatTimeoutMs: 450 });
    const t0 = Date.now();
    await assert.rejects(
      run.start(id),
      isFailure('VideoTaskSidecarSilent', false, (f) => {
        assert.deepEqual(f.details?.[0], { silentMs: 500, lastStatus: 'VIDEO_TASK_STATUS_UNSPECIFIED' });
      }),
    );
    const elapsed = Date.now() - t0;
    assert.ok(elapsed >= 500 && elapsed < 3000, `ended after ${elapsed} ms`);
    assert.deepEqual(run.events, []);
    assert.ok(run.heartbeats.length >= 2 && run.heartbeats.every((d) => d.event === 'WAITING'));
    // The stream was cancelled: the sidecar no longer holds it.
    await eventually(async () => (await sidecar.metric('videotask_open_streams')) === 0, 5000, 'no open streams');
  });

  it('heartbeats on a timer while the stream is open but silent (first poll failed)', LIMIT, async () => {
    // Every poll of the task fails with a 503 until the faults are cleared,
    // so the sidecar has nothing to send (no SNAPSHOT, no HEARTBEAT) and
    // backs off.
    const id = 'first-poll-fails';
    await sim.setTask(id, HOLD_QUEUED);
    await sim.fault({ id, kind: 'server_error', count: -1 });
    // A heartbeat timeout of 600 ms: a heartbeat at least every 200 ms. The
    // reconnect deadline (500 ms) passes too: the stream is open, not a reason to give up.
    const run = new Run({ client, giveUpAfterMs: 500 }, { heartbeatTimeoutMs: 600 });
    const done = run.start(id, 20_000);
    await run.until((hs) => hs.length >= 6, 'timer heartbeats', 5000);
    const polls = JSON.parse(await sim.control('GET', '/_sim/counts')) as { tasks: Record<string, number> };
    assert.ok((polls.tasks[id] ?? 0) >= 1, `the sidecar polled ${polls.tasks[id] ?? 0} times`);
    assert.deepEqual(run.events, [], 'nothing from the sidecar yet');
    assert.ok(run.heartbeats.every((d) => d.event === 'WAITING' && d.id === id));
    const gap = largestGap(run);
    assert.ok(gap < 400, `a ${gap} ms gap between heartbeats (period 200 ms)`);

    // The vendor recovers: the SNAPSHOT arrives on the same stream.
    await sim.control('DELETE', '/_sim/faults');
    const mark = run.heartbeats.length;
    await run.until((hs) => hs.slice(mark).some((d) => d.event === 'EVENT_TYPE_SNAPSHOT'), 'SNAPSHOT after recovery');
    await sim.complete(id);
    const task = (await done) as { status: string };
    assert.equal(task.status, COMPLETED);
    assert.deepEqual(run.changes(), ['UNSPECIFIED>QUEUED', 'QUEUED>COMPLETED']);
    assert.ok(!run.logs.some((l) => /reconnecting/.test(l.message)), 'one stream throughout');
  });

  it('reports a status before heartbeating it, so a retry repeats rather than loses it (at least once)', LIMIT, async () => {
    await sim.setTask('order', { queued_polls: 2, processing_polls: 2 });
    // What the heartbeats said when each change was reported.
    const recordedAtReport: string[] = [];
    const run = new Run({ client }, undefined, (event, r) => {
      if (event.type === 'EVENT_TYPE_HEARTBEAT') return;
      recordedAtReport.push(`${short(r.heartbeats.at(-1)?.lastStatus ?? 'VIDEO_TASK_STATUS_UNSPECIFIED')}<${short(event.task.status)}`);
    });
    await run.start('order');
    assert.deepEqual(run.changes(), ['UNSPECIFIED>QUEUED', 'QUEUED>PROCESSING', 'PROCESSING>COMPLETED']);
    // Each status was reported while the heartbeat details still held the one
    // before: a worker dying in between leaves details from which the retry
    // reports the status again (as the 'moved-on' test shows), never skips it.
    assert.deepEqual(recordedAtReport, ['UNSPECIFIED<QUEUED', 'QUEUED<PROCESSING', 'PROCESSING<COMPLETED']);
  });

  it('works from a copy of the built package outside the repository (the API is embedded)', LIMIT, async () => {
    await sim.setTask('embedded', { queued_polls: 0, processing_polls: 0 });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'videotask-temporal-'));
    try {
      // dist/src as a package would ship it, with this package's dependencies.
      fs.cpSync(path.join(__dirname, '..', 'src'), path.join(dir, 'dist', 'src'), { recursive: true });
      fs.symlinkSync(path.join(__dirname, '..', '..', 'node_modules'), path.join(dir, 'node_modules'), 'dir');
      const script = `
        const { VideoTaskClient } = require('./dist/src');
        const client = new VideoTaskClient({ target: process.argv[1] });
        client.await(process.argv[2], { giveUpAfterMs: 10000 }).then(
          (task) => { console.log(JSON.stringify(task)); client.close(); },
          (err) => { console.error(String(err)); process.exit(1); });`;
      const env = { ...process.env };
      delete env.VIDEOTASK_PROTO_PATH;
      const { stdout } = await promisify(execFile)(process.execPath, ['-e', script, sidecar.target, 'embedded'], {
        cwd: dir,
        env,
        timeout: 20_000,
      });
      const task = JSON.parse(stdout) as {
        id: string; status: string; videoUrl: string; archive: unknown; archiveError: unknown;
      };
      assert.equal(task.id, 'embedded');
      assert.equal(task.status, COMPLETED);
      assert.equal(task.videoUrl, 'https://cdn.invalid/videos/embedded.mp4');
      // The embedded API has the archive fields (defaults: this sidecar does not archive).
      assert.equal(task.archive, null);
      assert.equal(task.archiveError, '');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('throws a non-retryable VideoTaskConfigurationError for absurd timing options', LIMIT, async () => {
    const bad: [string, unknown][] = [
      ['giveUpAfterMs', 0], ['giveUpAfterMs', -1], ['giveUpAfterMs', Number.NaN], ['giveUpAfterMs', 1e12],
      ['giveUpAfterMs', '60000'], ['initialBackoffMs', -5], ['maxBackoffMs', Number.POSITIVE_INFINITY],
      ['maxSilentMs', 0], ['notFoundRetryMs', -1],
    ];
    for (const [name, value] of bad) {
      const env = new MockActivityEnvironment(undefined, { logger: new DefaultLogger('WARN') });
      const { awaitVideoTask } = createVideoTaskActivities({ client });
      const t0 = Date.now();
      await assert.rejects(
        env.run(awaitVideoTask, 'any-task', { [name]: value }),
        isFailure('VideoTaskConfigurationError', true, (f) => {
          assert.match(f.message, new RegExp(`^video task any-task: videotask: ${name} must be a number of milliseconds from \\d+ to 2147483647, not `));
        }),
        `${name}=${String(value)}`,
      );
      assert.ok(Date.now() - t0 < 1000, 'at once');
    }
  });

  it('throws a non-retryable VideoTaskConfigurationError for a protoPath that does not exist', LIMIT, async () => {
    const missing = path.join(os.tmpdir(), 'videotask-no-such-dir', 'video_task.proto');
    const env = new MockActivityEnvironment(undefined, { logger: new DefaultLogger('WARN') });
    const { awaitVideoTask } = createVideoTaskActivities({ target: sidecar.target, protoPath: missing });
    await assert.rejects(
      env.run(awaitVideoTask, 'any-task'),
      isFailure('VideoTaskConfigurationError', true, (f) => {
        assert.equal(f.message, `video task any-task: videotask: protoPath ${missing} does not exist; leave protoPath unset to use the API embedded in the package`);
      }),
    );
  });

  it('cancellation during reconnect backoff ends the activity promptly', LIMIT, async () => {
    const target = `127.0.0.1:${await closedPort()}`;
    // The backoff (5-10 s with jitter) is far above the bound below.
    const run = new Run({ target, initialBackoffMs: 10_000, maxBackoffMs: 10_000, giveUpAfterMs: 60_000 });
    const done = run.start('any-task');
    await run.heartbeat((d) => d.event === 'RECONNECTING');
    const t0 = Date.now();
    run.env.cancel();
    await assert.rejects(done, (err) => err instanceof CancelledFailure);
    assert.ok(Date.now() - t0 < 3000, `cancelled after ${Date.now() - t0} ms`);
  });

  it('reconnects as soon as a restarted sidecar is ready, not after stacked backoffs', LIMIT, async () => {
    const id = 'restart-prompt';
    await sim.setTask(id, HOLD_QUEUED);
    const first = await Sidecar.start(sim);
    extraSidecars.push(first);
    const run = new Run({
      target: first.target,
      initialBackoffMs: 200,
      maxBackoffMs: 10_000,
      giveUpAfterMs: 20_000,
      // The channel's own reconnect backoff stays short; the client's grows.
      channelOptions: { 'grpc.initial_reconnect_backoff_ms': 50, 'grpc.max_reconnect_backoff_ms': 200 },
    });
    const done = run.start(id);
    await run.heartbeat((d) => d.event === 'EVENT_TYPE_SNAPSHOT');
    first.proc.signal('SIGTERM');
    assert.deepEqual(await first.proc.exited, { code: 0, signal: null });
    // Down long enough for several failed attempts (backoff 200, 400, 800, ... ms).
    await delay(2500);
    const mark = run.heartbeats.length;
    const second = await Sidecar.start(sim, { listen: `127.0.0.1:${first.port}` });
    extraSidecars.push(second);
    const t0 = Date.now();
    await run.until((hs) => hs.slice(mark).some((d) => d.event === 'EVENT_TYPE_SNAPSHOT'), 'resumed on the new sidecar');
    const ms = Date.now() - t0;
    assert.ok(ms < 1000, `resumed ${ms} ms after the new sidecar was ready`);
    await sim.complete(id);
    const task = (await done) as { status: string };
    assert.equal(task.status, COMPLETED);
    assert.deepEqual(run.changes(), ['UNSPECIFIED>QUEUED', 'QUEUED>COMPLETED']);
  });

  it('cancellation while waiting for the channel to be ready ends the activity promptly', LIMIT, async () => {
    const target = `127.0.0.1:${await closedPort()}`;
    const run = new Run({ target, initialBackoffMs: 20, maxBackoffMs: 20, giveUpAfterMs: 60_000 });
    const done = run.start('any-task');
    // The 1st RECONNECTING heartbeat precedes the backoff; the later ones come from the READY wait.
    await run.until((hs) => hs.filter((d) => d.event === 'RECONNECTING').length >= 3, 'waiting for READY');
    const t0 = Date.now();
    run.env.cancel();
    await assert.rejects(done, (err) => err instanceof CancelledFailure);
    // Without the cancellation the wait would last until giveUpAfterMs (60 s).
    assert.ok(Date.now() - t0 < 3000, `cancelled after ${Date.now() - t0} ms`);
  });
});
