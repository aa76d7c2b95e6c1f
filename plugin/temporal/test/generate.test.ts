// generateVideo in Temporal's MockActivityEnvironment against the real
// sidecar (CreateVideoTask, then WatchVideoTask) and the real simulated
// vendor, whose create endpoints record every create they receive
// (GET /_sim/creates: the request count that "created once" is checked on).
//
// The default request id comes from the activity's Info: `activityId`,
// `workflowExecution: { workflowId, runId }` and, for a standalone activity,
// `activityRunId` (sdk-typescript packages/activity/src/index.ts, `interface
// Info`; filled by packages/worker/src/worker.ts, extractActivityInfo, from
// the server's activity task). The activity id is the workflow's
// `activityId` option, else the command's sequence number
// (packages/workflow/src/workflow.ts, scheduleActivity:
// `options.activityId ?? `${seq}``), and Temporal gives every retry of the
// activity the same Info but `attempt` and `heartbeatDetails`. So the tests
// run "a retry" as a second MockActivityEnvironment with the same Info and
// `attempt: 2`.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import type { Info } from '@temporalio/activity';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger, type LogEntry } from '@temporalio/worker';
import { VideoTaskClient, createVideoTaskActivities, defaultRequestId, toStruct, type VideoTaskActivities } from '../src';
import { VideoTaskBodyError } from '../src/client';
import type { GenerateVideoInput, VideoTask, VideoTaskHeartbeatDetails } from '../src/types';
import { Sidecar, SimUpstream, closedPort, nextEvent } from '../testing/harness';

const COMPLETED = 'VIDEO_TASK_STATUS_COMPLETED';
const LIMIT = { timeout: 60_000 };

/** The `videos` family's body from the vendor's docs, with a few more JSON kinds. */
const VIDEOS_BODY = {
  model: 'videos',
  prompt: 'a red fox in the snow',
  duration: 10,
  ratio: '16:9',
  resolution: '720p',
  seed: 1234567,
  cfg: 7.5,
  negative: -3,
  generateAudio: true,
  watermark: false,
  style: null,
  tags: ['fox', 2, 0.25, null, { deep: [1] }],
};

let runCount = 0;
const envs: MockActivityEnvironment[] = [];

/** One activity attempt: its environment, the heartbeats it sent and its log. */
class Attempt {
  readonly env: MockActivityEnvironment;
  readonly heartbeats: VideoTaskHeartbeatDetails[] = [];
  readonly logs: LogEntry[] = [];
  readonly activities: VideoTaskActivities;

  constructor(client: VideoTaskClient, info: Partial<Info>) {
    this.env = new MockActivityEnvironment(info, {
      logger: new DefaultLogger('DEBUG', (entry) => this.logs.push(entry)),
    });
    this.env.on('heartbeat', (d: VideoTaskHeartbeatDetails) => this.heartbeats.push(d));
    this.activities = createVideoTaskActivities({ client });
    envs.push(this.env);
  }

  run(input: GenerateVideoInput, limitMs = 20_000): Promise<VideoTask> {
    let timer: NodeJS.Timeout | undefined;
    const limit = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the activity did not end within ${limitMs} ms`)), limitMs);
    });
    return Promise.race([this.env.run(this.activities.generateVideo, input) as Promise<VideoTask>, limit]).finally(() =>
      clearTimeout(timer),
    );
  }

  heartbeat(pred: (d: VideoTaskHeartbeatDetails) => boolean) {
    return nextEvent<VideoTaskHeartbeatDetails>(this.env, 'heartbeat', pred);
  }
}

/** The Info of a new activity in a new workflow run (unique per call). */
function newInfo(extra: Partial<Info> = {}): Partial<Info> {
  runCount++;
  return {
    activityId: '1',
    workflowExecution: { workflowId: `video-${runCount}`, runId: `0199f2a4-6c1e-7d3a-9b7e-${String(runCount).padStart(12, '0')}` },
    ...extra,
  };
}

function isFailure(type: string, nonRetryable: boolean, check?: (f: ApplicationFailure) => void) {
  return (err: unknown) => {
    assert.ok(err instanceof ApplicationFailure, `expected an ApplicationFailure, got ${String(err)}`);
    assert.equal(err.type, type, err.message);
    assert.equal(err.nonRetryable, nonRetryable);
    check?.(err);
    return true;
  };
}

describe('generateVideo', () => {
  let sim: SimUpstream;
  let sidecar: Sidecar;
  let client: VideoTaskClient;
  let archiveDir: string;
  const extra: { sidecar: Sidecar; client: VideoTaskClient }[] = [];

  /** Another sidecar on the same sim (and a client of it), stopped after the tests. */
  async function another(args: string[]) {
    const s = await Sidecar.start(sim, { extraArgs: args });
    const c = new VideoTaskClient({ target: s.target });
    extra.push({ sidecar: s, client: c });
    return { sidecar: s, client: c };
  }

  /** Creates received by the sim from now on. */
  async function createsSince(mark: number) {
    return (await sim.creates()).slice(mark);
  }

  before(async () => {
    archiveDir = fs.mkdtempSync(path.join(os.tmpdir(), 'videotask-temporal-archive-'));
    // Video URLs on the sim, so that the sidecar archives every completed video.
    sim = await SimUpstream.start('empty', { videoUrlsOnSim: true });
    sidecar = await Sidecar.start(sim, { extraArgs: [`--archive_dir=${archiveDir}`, '--archive_allow_loopback'] });
    client = new VideoTaskClient({ target: sidecar.target });
  });

  afterEach(async () => {
    for (const env of envs.splice(0)) env.cancel();
    await sim.control('DELETE', '/_sim/faults');
  });

  after(async () => {
    client?.close();
    for (const e of extra) e.client.close();
    await Promise.all([sidecar?.stop(), ...extra.map((e) => e.sidecar.stop())]);
    await sim?.stop();
    if (archiveDir) fs.rmSync(archiveDir, { recursive: true, force: true });
  });

  it('creates the video once, waits for it and returns the completed task with its archive', LIMIT, async () => {
    const mark = (await sim.creates()).length;
    const info = newInfo({ heartbeatTimeoutMs: 3000 });
    const attempt = new Attempt(client, info);
    const task = await attempt.run({ family: 'videos', body: VIDEOS_BODY });
    assert.equal(task.status, COMPLETED);
    assert.match(task.id, /^proj_sim_\d+$/);
    assert.equal(task.model, 'videos');
    assert.match(task.videoUrl, new RegExp(`/videos/${task.id}\\.mp4$`));
    assert.ok(task.archive, `archived: ${task.archiveError}`);
    assert.equal(task.archive.uri, `file://${path.join(archiveDir, `${task.id}.mp4`)}`);
    assert.match(task.archive.sha256, /^[0-9a-f]{64}$/);
    assert.deepEqual(JSON.parse(JSON.stringify(task)), task, 'plain JSON data');

    // One vendor create, with the body as JSON: integral numbers as integers.
    const creates = await createsSince(mark);
    assert.equal(creates.length, 1);
    assert.equal(creates[0].family, 'videos');
    assert.equal(creates[0].id, task.id);
    assert.deepEqual(JSON.parse(creates[0].body), VIDEOS_BODY);
    assert.match(creates[0].body, /"duration":10[,}]/);
    assert.match(creates[0].body, /"seed":1234567[,}]/);
    assert.match(creates[0].body, /"negative":-3[,}]/);
    assert.match(creates[0].body, /"cfg":7\.5[,}]/);
    assert.doesNotMatch(creates[0].body, /\d\.0[,}\]]/, 'no integer sent as a double');

    // The task id was heartbeated as soon as it existed (the attempt's first
    // heartbeat: the create took less than the heartbeat period, and the
    // worker sends a first heartbeat at once), then the wait's heartbeats,
    // all carrying the request id.
    const requestId = `${info.workflowExecution!.workflowId}/${info.workflowExecution!.runId}/1`;
    assert.deepEqual(attempt.heartbeats[0], {
      id: task.id, lastStatus: 'VIDEO_TASK_STATUS_UNSPECIFIED', event: 'CREATED', requestId,
    });
    assert.ok(attempt.heartbeats.length >= 2);
    assert.ok(attempt.heartbeats.every((d) => d.requestId === requestId && d.id === task.id));
    assert.deepEqual(attempt.heartbeats.at(-1), { id: task.id, lastStatus: COMPLETED, event: 'EVENT_TYPE_TRANSITION', requestId });
  });

  it('a retry of the activity (same workflow, run and activity id) creates nothing new; a new run does', LIMIT, async () => {
    const mark = (await sim.creates()).length;
    const info = newInfo();
    const body = { model: 'videos', prompt: 'retried', duration: 5 };
    const first = await new Attempt(client, { ...info, attempt: 1 }).run({ family: 'videos', body });
    // The retry of an attempt that died before Temporal got its heartbeat:
    // no details, so it asks the sidecar again with the same request id.
    const retry = new Attempt(client, { ...info, attempt: 2 });
    const second = await retry.run({ family: 'videos', body });
    assert.equal(second.id, first.id);
    assert.equal(second.status, COMPLETED);
    assert.equal((await createsSince(mark)).length, 1, 'one vendor create for both attempts');
    assert.ok(!retry.logs.some((l) => /earlier attempt/.test(l.message)), 'it did ask the sidecar');

    // A new run of the workflow (new run id): a new video.
    const rerun = await new Attempt(client, {
      ...info,
      workflowExecution: { workflowId: info.workflowExecution!.workflowId, runId: 'another-run-id' },
    }).run({ family: 'videos', body });
    assert.notEqual(rerun.id, first.id);
    assert.equal((await createsSince(mark)).length, 2);
  });

  it('a retry with the created task in its heartbeat details waits for it, even through a sidecar that forgot the key', LIMIT, async () => {
    const mark = (await sim.creates()).length;
    const info = newInfo();
    const body = { model: 'kyyvideo2_fast', prompt: 'resumed', duration: 5, aspect_ratio: '16:9', generateAudio: true };
    const first = new Attempt(client, { ...info, attempt: 1 });
    const done = first.run({ family: 'kyyvideo2', body });
    const created = await first.heartbeat((d) => d.event === 'CREATED');
    assert.match(created.id, /^video_sim_\d+$/);
    // The worker dies here (the attempt is cancelled), and the retry runs
    // next to a new sidecar, which has no memory of the request id.
    first.env.cancel();
    await assert.rejects(done, (err) => err instanceof CancelledFailure);
    const fresh = await another([]);
    const retry = new Attempt(fresh.client, { ...info, attempt: 2, heartbeatDetails: created });
    const task = await retry.run({ family: 'kyyvideo2', body });
    assert.equal(task.id, created.id);
    assert.equal(task.status, COMPLETED);
    assert.equal((await createsSince(mark)).length, 1, 'no second vendor create');
    assert.ok(retry.logs.some((l) => /created by an earlier attempt/.test(l.message)));
  });

  it('a vendor refusal is a non-retryable VideoTaskCreateRefused with the vendor\'s message, sent once', LIMIT, async () => {
    const mark = (await sim.creates()).length;
    await sim.createFault({ family: 'sora', kind: 'refuse', count: 1, http_status: 400, message: 'prompt violates the content policy' });
    await assert.rejects(
      new Attempt(client, newInfo()).run({ family: 'sora', body: { model: 'sora-2', prompt: 'x' } }),
      isFailure('VideoTaskCreateRefused', true, (f) => {
        assert.match(f.message, /content policy/);
        assert.equal((f.details?.[0] as { code: string }).code, 'INVALID_ARGUMENT');
      }),
    );
    // The `videos` family refuses in its own shape (200, code "400"): a body without a prompt.
    await assert.rejects(
      new Attempt(client, newInfo()).run({ family: 'videos', body: { model: 'videos', duration: 10 } }),
      isFailure('VideoTaskCreateRefused', true),
    );
    // A 401 or 403: the vendor rejects the sidecar's API key.
    await sim.createFault({ family: 'vidu', kind: 'refuse', count: 1, http_status: 401, message: 'bad key' });
    await assert.rejects(
      new Attempt(client, newInfo()).run({ family: 'vidu', body: { model: 'vidu2', prompt: 'x' } }),
      isFailure('VideoTaskFailedPrecondition', true, (f) => assert.doesNotMatch(f.message, /temporal-test-key/)),
    );
    const creates = await createsSince(mark);
    assert.deepEqual(creates.map((c) => c.id), ['', '', ''], 'each sent once, nothing created');
  });

  it('a gRPC server without CreateVideoTask (not a videotask sidecar) is a non-retryable VideoTaskUnimplemented', LIMIT, async () => {
    const other = new grpc.Server();
    const port = await new Promise<number>((resolve, reject) =>
      other.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    const c = new VideoTaskClient({ target: `127.0.0.1:${port}` });
    try {
      await assert.rejects(
        new Attempt(c, newInfo()).run({ family: 'videos', body: { prompt: 'x' } }),
        isFailure('VideoTaskUnimplemented', true, (f) => assert.match(f.message, /^creating a video \(family videos, request id video-\d+\/[^)]+\): UNIMPLEMENTED/)),
      );
    } finally {
      c.close();
      other.forceShutdown();
    }
  });

  it('a bad body, family or request id is refused before anything reaches the vendor', LIMIT, async () => {
    const mark = (await sim.creates()).length;
    const bad: [GenerateVideoInput, RegExp][] = [
      [{ family: 'videos', body: { model: 'videos', prompt: 'x', duration: Number.NaN } }, /body\.duration: NaN is not a JSON number/],
      [{ family: 'videos', body: [] as unknown as GenerateVideoInput['body'] }, /body must be a JSON object, not an array/],
      [{ family: 'videos', body: { when: new Date(0) } as unknown as GenerateVideoInput['body'] }, /body\.when: a Date object/],
      [{ family: 'Videos/../x', body: { prompt: 'x' } }, /family/],
      [{ family: 'videos', body: { prompt: 'x' }, requestId: 'bad\nkey' }, /request_id/],
      [{ family: 'videos', body: { prompt: 'x' }, requestId: 'k'.repeat(129) }, /request_id/],
      // Over the sidecar's 64 KiB; and far over it, refused before gRPC's 4 MB limit could answer RESOURCE_EXHAUSTED.
      [{ family: 'videos', body: { prompt: 'p'.repeat(70 << 10) } }, /64 KiB|65536|too large|at most/],
      [{ family: 'videos', body: { prompt: 'p'.repeat(5 << 20) } }, /bytes as JSON; the sidecar takes at most 64 KiB/],
    ];
    for (const [input, message] of bad) {
      await assert.rejects(
        new Attempt(client, newInfo()).run(input),
        isFailure('VideoTaskCreateRefused', true, (f) => assert.match(f.message, message)),
      );
    }
    // A local activity without a requestId (see defaultRequestId).
    await assert.rejects(
      new Attempt(client, newInfo({ isLocal: true })).run({ family: 'videos', body: { prompt: 'x' } }),
      isFailure('VideoTaskConfigurationError', true, (f) => assert.match(f.message, /explicit requestId/)),
    );
    assert.deepEqual(await createsSince(mark), []);
  });

  it('an unknown outcome is a non-retryable VideoTaskCreateOutcomeUnknown, and a retry never sends again', LIMIT, async () => {
    const mark = (await sim.creates()).length;
    await sim.createFault({ family: 'videos', kind: 'accepted_then_dropped', count: 1 });
    const info = newInfo();
    const body = { model: 'videos', prompt: 'dropped', duration: 10 };
    const unknown = isFailure('VideoTaskCreateOutcomeUnknown', true, (f) => {
      assert.match(f.message, /may have created/);
      assert.equal((f.details?.[0] as { code: string }).code, 'ABORTED');
    });
    await assert.rejects(new Attempt(client, { ...info, attempt: 1 }).run({ family: 'videos', body }), unknown);
    // Retried anyway (e.g. by a policy that does not list the type): the same answer, no second request.
    await assert.rejects(new Attempt(client, { ...info, attempt: 2 }).run({ family: 'videos', body }), unknown);
    const creates = await createsSince(mark);
    assert.equal(creates.length, 1);
    assert.equal(creates[0].answer, 'dropped');
  });

  it('the same request id with another body is a non-retryable VideoTaskCreateConflict', LIMIT, async () => {
    const requestId = `conflict-${Date.now()}`;
    await new Attempt(client, newInfo()).run({ family: 'videos', body: { model: 'videos', prompt: 'one' }, requestId });
    const mark = (await sim.creates()).length;
    await assert.rejects(
      new Attempt(client, newInfo()).run({ family: 'videos', body: { model: 'videos', prompt: 'two' }, requestId }),
      isFailure('VideoTaskCreateConflict', true, (f) => assert.equal((f.details?.[0] as { code: string }).code, 'ALREADY_EXISTS')),
    );
    assert.deepEqual(await createsSince(mark), []);
  });

  it('a vendor that stays unavailable is a retryable VideoTaskCreateUnavailable; nothing was created', LIMIT, async () => {
    await sim.createFault({ family: 'veo', kind: 'server_error', http_status: 503, count: -1 });
    const mark = (await sim.creates()).length;
    await assert.rejects(
      new Attempt(client, newInfo()).run({ family: 'veo', body: { model: 'veo3', prompt: 'x' }, createTimeoutMs: 1500 }),
      isFailure('VideoTaskCreateUnavailable', false, (f) => {
        assert.ok(['UNAVAILABLE', 'DEADLINE_EXCEEDED'].includes((f.details?.[0] as { code: string }).code));
      }),
    );
    const creates = await createsSince(mark);
    assert.ok(creates.length >= 1 && creates.every((c) => c.id === ''), 'tried, nothing created');
  });

  it('heartbeats while the create is under way, and a cancellation ends it; the retry gets the created task', LIMIT, async () => {
    const mark = (await sim.creates()).length;
    // The vendor takes 4 s (within the sidecar's 10 s upstream timeout): far
    // above the cancellation's bound below, for a loaded machine.
    await sim.createFault({ family: 'seedance', kind: 'slow', delay_ms: 4000, count: 1 });
    const info = newInfo({ heartbeatTimeoutMs: 300 });
    const body = { model: 'seedance-pro', prompt: 'slow vendor', duration: 5 };
    const first = new Attempt(client, { ...info, attempt: 1 });
    const done = first.run({ family: 'seedance', body });
    await first.heartbeat((d) => d.event === 'CREATING');
    await first.heartbeat((d) => d.event === 'CREATING');
    assert.deepEqual(first.heartbeats[0], {
      id: '', lastStatus: 'VIDEO_TASK_STATUS_UNSPECIFIED', event: 'CREATING',
      requestId: `${info.workflowExecution!.workflowId}/${info.workflowExecution!.runId}/1`,
    });
    const t0 = Date.now();
    first.env.cancel();
    await assert.rejects(done, (err) => err instanceof CancelledFailure);
    assert.ok(Date.now() - t0 < 2000, `cancelled after ${Date.now() - t0} ms`);
    // The sidecar still settles the create it sent; the retry (no heartbeat
    // details with a task) asks with the same key and gets that task.
    const task = await new Attempt(client, { ...info, attempt: 2 }).run({ family: 'seedance', body });
    assert.equal(task.status, COMPLETED);
    const creates = await createsSince(mark);
    assert.equal(creates.length, 1);
    assert.equal(creates[0].id, task.id);
  });

  it('a sidecar that dies during the create is a retryable VideoTaskCreateUnavailable', LIMIT, async () => {
    const doomed = await another([]);
    await sim.createFault({ family: 'grok', kind: 'slow', delay_ms: 1000, count: 1 });
    const attempt = new Attempt(doomed.client, newInfo({ heartbeatTimeoutMs: 300 }));
    const done = attempt.run({ family: 'grok', body: { model: 'grok-video', prompt: 'x' } });
    await attempt.heartbeat((d) => d.event === 'CREATING');
    doomed.sidecar.proc.signal('SIGKILL');
    await assert.rejects(
      done,
      isFailure('VideoTaskCreateUnavailable', false, (f) => assert.equal((f.details?.[0] as { code: string }).code, 'UNAVAILABLE')),
    );
    // (The vendor got the request: a retry through a new sidecar, which does
    // not know the key, would create again. The README says so.)
  });

  it('the spend guard is a retryable VideoTaskCreateBudgetExhausted; repeats of a known key still work', LIMIT, async () => {
    const guarded = await another(['--max_creates_per_hour=1']);
    const mark = (await sim.creates()).length;
    const info = newInfo();
    const body = { model: 'videos', prompt: 'guarded' };
    const first = await new Attempt(guarded.client, info).run({ family: 'videos', body });
    await assert.rejects(
      new Attempt(guarded.client, newInfo()).run({ family: 'videos', body }),
      isFailure('VideoTaskCreateBudgetExhausted', false, (f) => {
        assert.match(f.message, /max_creates_per_hour/);
        assert.equal((f.details?.[0] as { code: string }).code, 'RESOURCE_EXHAUSTED');
      }),
    );
    const again = await new Attempt(guarded.client, { ...info, attempt: 2 }).run({ family: 'videos', body });
    assert.equal(again.id, first.id);
    assert.equal((await createsSince(mark)).length, 1);
  });

  it('a sidecar listening beyond loopback refuses creates: non-retryable VideoTaskCreatePermissionDenied', LIMIT, async () => {
    const open = await Sidecar.start(sim, { listen: '0.0.0.0:0' });
    const port = open.port;
    const c = new VideoTaskClient({ target: `127.0.0.1:${port}` });
    extra.push({ sidecar: open, client: c });
    await assert.rejects(
      new Attempt(c, newInfo()).run({ family: 'videos', body: { prompt: 'x' } }),
      isFailure('VideoTaskCreatePermissionDenied', true, (f) => assert.match(f.message, /--allow_remote_create/)),
    );
  });

  it('an unreachable sidecar is a retryable VideoTaskSidecarUnavailable after giveUpAfterMs', LIMIT, async () => {
    const target = `127.0.0.1:${await closedPort()}`;
    const c = new VideoTaskClient({ target });
    try {
      const attempt = new Attempt(c, newInfo({ heartbeatTimeoutMs: 600 }));
      await assert.rejects(
        attempt.run({ family: 'videos', body: { prompt: 'x' }, giveUpAfterMs: 700 }),
        isFailure('VideoTaskSidecarUnavailable', false, (f) => assert.match(f.message, /unreachable for 0\.7s/)),
      );
      assert.ok(attempt.heartbeats.length >= 1 && attempt.heartbeats.every((d) => d.event === 'CREATING'));
    } finally {
      c.close();
    }
  });
});

describe('defaultRequestId', () => {
  it('is workflow id / run id / activity id, else a hash of the three', () => {
    const run = '0199f2a4-6c1e-7d3a-9b7e-2f4c1a8d5e60';
    assert.equal(defaultRequestId({ activityId: '3', workflowExecution: { workflowId: 'video-proj_123', runId: run } }), `video-proj_123/${run}/3`);
    // A workflow id may hold '/' (the run id and activity id, read from the right, cannot).
    assert.equal(defaultRequestId({ activityId: '1', workflowExecution: { workflowId: 'a/b', runId: run } }), `a/b/${run}/1`);
    const hashed = [
      { activityId: '1', workflowExecution: { workflowId: 'w'.repeat(100), runId: run } }, // > 128
      { activityId: '1', workflowExecution: { workflowId: 'vidéo', runId: run } }, // not ASCII
      { activityId: 'a/1', workflowExecution: { workflowId: 'w', runId: run } }, // could be read two ways
    ];
    const ids = hashed.map((info) => defaultRequestId(info));
    for (const id of ids) assert.match(id, /^sha256:[0-9a-f]{64}$/);
    assert.equal(new Set(ids).size, ids.length);
    assert.equal(defaultRequestId(hashed[0]), ids[0], 'stable');
    // A standalone activity.
    assert.equal(defaultRequestId({ activityId: 'gen', activityRunId: 'r1' }), 'activity/gen/r1');
    assert.throws(() => defaultRequestId({ activityId: 'x' }), /needs a requestId/);
    // A local activity retried after a backoff is scheduled again with a new
    // sequence number, so a new activity id (sdk-typescript
    // packages/workflow/src/workflow.ts, scheduleLocalActivity: `const seq =
    // activator.nextSeqs.activity++` on every LocalActivityDoBackoff): no default key.
    assert.throws(
      () => defaultRequestId({ activityId: '1', isLocal: true, workflowExecution: { workflowId: 'w', runId: run } }),
      /local activity needs an explicit requestId/,
    );
  });
});

describe('toStruct', () => {
  it('builds a google.protobuf.Struct with numbers as numberValue', () => {
    assert.deepEqual(toStruct({ n: 10, s: 'a', b: false, z: null, l: [1, 'x'], o: { k: 2.5 }, u: undefined }), {
      fields: {
        n: { numberValue: 10 },
        s: { stringValue: 'a' },
        b: { boolValue: false },
        z: { nullValue: 'NULL_VALUE' },
        l: { listValue: { values: [{ numberValue: 1 }, { stringValue: 'x' }] } },
        o: { structValue: { fields: { k: { numberValue: 2.5 } } } },
      },
    });
    assert.deepEqual(toStruct(Object.create(null)), { fields: {} });
    // A "__proto__" key (an own key after JSON.parse) is a key like any other.
    const odd = toStruct(JSON.parse('{"__proto__": {"x": 1}, "constructor": 2}'));
    assert.deepEqual(Object.keys(odd.fields), ['__proto__', 'constructor']);
    assert.deepEqual(Object.getOwnPropertyDescriptor(odd.fields, '__proto__')?.value, {
      structValue: { fields: { x: { numberValue: 1 } } },
    });
  });

  it('refuses what JSON cannot hold', () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    let deep: Record<string, unknown> = {};
    const root = deep;
    for (let i = 0; i < 200; i++) deep = (deep.d = {}) as Record<string, unknown>;
    for (const [body, message] of [
      [null, /not null/], ['x', /not a string/], [[1], /not an array/],
      [{ a: Number.POSITIVE_INFINITY }, /body\.a: Infinity/], [{ a: [1, undefined] }, /body\.a\[1\]: a undefined/],
      [{ f: () => 1 }, /body\.f: a function/], [{ n: 1n }, /body\.n: a bigint/], [{ m: new Map() }, /Map object/],
      [cyclic, /body\.self: a cycle/], [root, /nested deeper than 100/],
    ] as [unknown, RegExp][]) {
      assert.throws(() => toStruct(body), (err: Error) => err instanceof VideoTaskBodyError && message.test(err.message));
    }
    // The same object twice (not a cycle) is fine.
    const shared = { k: 1 };
    assert.doesNotThrow(() => toStruct({ a: shared, b: shared }));
  });
});
