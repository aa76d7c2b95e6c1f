// awaitVideoTask in Temporal's MockActivityEnvironment against the real
// sidecar and the real simulated upstream.
import assert from 'node:assert/strict';
import { setTimeout as delay } from 'node:timers/promises';
import { after, afterEach, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
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
import { PROTO_LOADER_OPTIONS, resolveProtoPath } from '../src/client';
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
  readonly events: VideoTaskEvent[] = [];
  readonly logs: LogEntry[] = [];
  readonly activities: VideoTaskActivities;
  /** The client made for `options.target`, closed after the test. */
  readonly ownClient?: VideoTaskClient;

  constructor(options: VideoTaskActivitiesOptions, info?: Partial<Info>) {
    if (!options.client) {
      this.ownClient = new VideoTaskClient({ target: options.target, channelOptions: options.channelOptions });
      options = { ...options, client: this.ownClient };
    }
    this.env = new MockActivityEnvironment(info, {
      logger: new DefaultLogger('DEBUG', (entry) => this.logs.push(entry)),
    });
    this.env.on('heartbeat', (d: VideoTaskHeartbeatDetails) => this.heartbeats.push(d));
    this.activities = createVideoTaskActivities({
      ...options,
      onEvent: (event) => this.events.push(event),
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
    const definition = protoLoader.loadSync(resolveProtoPath(), PROTO_LOADER_OPTIONS);
    const loaded = grpc.loadPackageDefinition(definition) as unknown as {
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
          assert.deepEqual((f.details?.[0] as { code: string }).code, 'UNAVAILABLE');
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
      },
    );
    assert.deepEqual(run.changes(), ['UNSPECIFIED>QUEUED', 'QUEUED>PROCESSING', 'PROCESSING>COMPLETED']);
  });

  it('heartbeats on every event, with the last status in the details', LIMIT, async () => {
    await sim.setTask('beats', HOLD_PROCESSING);
    const run = new Run({ client });
    const done = run.start('beats');
    // The sidecar's HEARTBEATs keep the activity alive while nothing changes.
    let sidecarBeats = 0;
    await run.heartbeat((d) => d.event === 'EVENT_TYPE_HEARTBEAT' && ++sidecarBeats === 2);
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

  it('throws a non-retryable VideoTaskNotFound for NOT_FOUND', LIMIT, async () => {
    const run = new Run({ client });
    await assert.rejects(
      run.start('never-created'),
      isFailure('VideoTaskNotFound', true, (f) => {
        assert.deepEqual((f.details?.[0] as { code: string }).code, 'NOT_FOUND');
      }),
    );
    assert.deepEqual(run.events, []);
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
    assert.ok(Date.now() - t0 < 1000, `cancelled after ${Date.now() - t0} ms`);
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
        assert.match(f.message, /unavailable/i);
        assert.deepEqual((f.details?.[0] as { code: string }).code, 'UNAVAILABLE');
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
    await assert.rejects(done, isFailure('VideoTaskSidecarUnavailable', false));
    // It reconnected with the last status in its heartbeats until it gave up.
    const reconnecting = run.heartbeats.filter((d) => d.event === 'RECONNECTING');
    assert.ok(reconnecting.length >= 2, `${reconnecting.length} reconnect heartbeats`);
    assert.ok(reconnecting.every((d) => d.lastStatus === QUEUED));
  });

  it('cancellation during reconnect backoff ends the activity promptly', LIMIT, async () => {
    const target = `127.0.0.1:${await closedPort()}`;
    const run = new Run({ target, initialBackoffMs: 2000, maxBackoffMs: 2000, giveUpAfterMs: 60_000 });
    const done = run.start('any-task');
    await run.heartbeat((d) => d.event === 'RECONNECTING');
    const t0 = Date.now();
    run.env.cancel();
    await assert.rejects(done, (err) => err instanceof CancelledFailure);
    assert.ok(Date.now() - t0 < 500, `cancelled after ${Date.now() - t0} ms`);
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
    assert.ok(Date.now() - t0 < 500, `cancelled after ${Date.now() - t0} ms`);
  });
});
