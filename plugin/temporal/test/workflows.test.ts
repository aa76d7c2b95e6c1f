// The package as workflow code sees it, with the Temporal SDK's own machinery
// and no Temporal server (none can run here):
// - bundleWorkflowCode, the worker's webpack bundler, on a workflow that
//   imports the package by name from an installed copy (the files `npm pack`
//   ships). The bundler refuses Node built-ins and @temporalio/activity in
//   workflow code (sdk-typescript packages/worker/src/workflow/bundler.ts:
//   `disallowedModules`, checked in `captureProblematicModules`), which is why
//   workflows cannot import the main entry (it loads the gRPC client: a
//   workflow requiring 'videotask-temporal' fails to bundle on node:fs and
//   node:path; not a test here, a bundle of grpc-js costs 2 s).
// - Worker.runReplayHistory on a recorded history of the sample workflow: the
//   real Worker, sdk-core's workflow state machines and the workflow sandbox,
//   offline (packages/worker/src/worker.ts: runReplayHistory ->
//   runReplayHistories -> constructReplayWorker; a JSON history goes through
//   historyFromJSON, packages/common/src/proto-utils.ts). Replay is how
//   Temporal users check that workflow code is still deterministic.
// And the worker settings the docs rely on, and the API embedded in the package.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import * as protoLoader from '@grpc/proto-loader';
import { msToNumber } from '@temporalio/common/lib/time';
import {
  DefaultLogger,
  Runtime,
  Worker,
  bundleWorkflowCode,
  type InjectedSinks,
  type WorkflowBundleWithSourceMap,
} from '@temporalio/worker';
import { DeterminismViolationError, type ActivityOptions } from '@temporalio/workflow';
import { heartbeatPeriodMs } from '../src/activities';
import { PROTO_LOADER_OPTIONS, PROTO_RELATIVE_PATH, loadVideoTaskPackageDefinition } from '../src/client';
import { NON_RETRYABLE_VIDEO_TASK_FAILURE_TYPES } from '../src/types';
import { DEFAULT_TASK_QUEUE, sampleWorkerOptions } from '../src/worker';
import type { AwaitedVideo } from '../src/workflows';
import { repoRoot } from '../testing/harness';
import type { ReplayCaptureSinks } from '../testing/replay-capture';

const PACKAGE_DIR = path.join(__dirname, '..', '..');
const HISTORY_FILE = path.join(PACKAGE_DIR, 'test', 'fixtures', 'await-video-workflow.history.json');
const GENERATE_HISTORY_FILE = path.join(PACKAGE_DIR, 'test', 'fixtures', 'generate-video-workflow.history.json');
const LIMIT = { timeout: 60_000 };

// The SDK's own logs only when something is wrong (sdk-core logs a replayed
// nondeterminism at WARN: expected in one test below).
Runtime.install({
  logger: new DefaultLogger('ERROR'),
  telemetryOptions: { logging: { filter: { core: 'ERROR', other: 'ERROR' }, console: {} } },
});

/** The files `npm pack` puts in the package (dist/ is built by `npm test` before the tests run). */
async function packedFiles(): Promise<string[]> {
  const { stdout } = await promisify(execFile)('npm', ['pack', '--dry-run', '--json', '--ignore-scripts', '--loglevel=error'], {
    cwd: PACKAGE_DIR,
  });
  const [pack] = JSON.parse(stdout) as { files: { path: string }[] }[];
  return pack.files.map((f) => f.path).sort();
}

/**
 * A user's workflows module, in a directory where the package is installed
 * (node_modules/videotask-temporal: the packed files) next to the Temporal
 * SDK: it imports the failure-type constants from the workflow-safe entry and
 * registers the packaged sample workflow by re-exporting it.
 */
const USER_WORKFLOWS = `
const { proxyActivities } = require('@temporalio/workflow');
const { NON_RETRYABLE_VIDEO_TASK_FAILURE_TYPES, VideoTaskFailureTypes } = require('videotask-temporal/workflow');
exports.awaitVideoWorkflow = require('videotask-temporal/workflows').awaitVideoWorkflow;
exports.generateVideoWorkflow = require('videotask-temporal/workflows').generateVideoWorkflow;
const { awaitVideoTask } = proxyActivities({
  startToCloseTimeout: '1h',
  retry: { nonRetryableErrorTypes: NON_RETRYABLE_VIDEO_TASK_FAILURE_TYPES },
});
exports.userWorkflow = async (id) => {
  try {
    return (await awaitVideoTask(id)).videoUrl;
  } catch (err) {
    if (err.cause && err.cause.type === VideoTaskFailureTypes.FAILED) return null;
    throw err;
  }
};
`;

describe('workflow code and the package', () => {
  let files: string[];
  let dir: string;
  let bundle: WorkflowBundleWithSourceMap;

  before(async () => {
    files = await packedFiles();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'videotask-temporal-workflows-'));
    const installed = path.join(dir, 'node_modules', 'videotask-temporal');
    for (const file of files) {
      fs.mkdirSync(path.dirname(path.join(installed, file)), { recursive: true });
      fs.copyFileSync(path.join(PACKAGE_DIR, file), path.join(installed, file));
    }
    // Its dependencies and the SDK beside it, as in an application that
    // installed both.
    for (const entry of fs.readdirSync(path.join(PACKAGE_DIR, 'node_modules'))) {
      if (entry.startsWith('.')) continue;
      fs.symlinkSync(path.join(PACKAGE_DIR, 'node_modules', entry), path.join(dir, 'node_modules', entry), 'dir');
    }
    fs.writeFileSync(path.join(dir, 'workflows.js'), USER_WORKFLOWS);
  });

  after(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('imports the constants from videotask-temporal/workflow and bundles with bundleWorkflowCode', LIMIT, async () => {
    bundle = await bundleWorkflowCode({
      workflowsPath: path.join(dir, 'workflows.js'),
      // Reports what the workflows do while the replay tests below run.
      workflowInterceptorModules: [require.resolve('../testing/replay-capture')],
      logger: new DefaultLogger('WARN'),
    });
    assert.match(bundle.code, /awaitVideoWorkflow/);
    assert.match(bundle.code, /generateVideoWorkflow/);
    assert.match(bundle.code, /VideoTaskUnimplemented/, 'the constants are in the bundle');
    // Webpack names every module it bundles by its path.
    assert.doesNotMatch(bundle.code, /node_modules\/@grpc\//, 'no gRPC client in workflow code');
    assert.doesNotMatch(bundle.code, /videotask-temporal\/dist\/src\/(client|activities)\.js/);
  });

  it('ships source maps with their sources', () => {
    // The worker's bundler reads the package's source maps into the workflow
    // bundle (source-map-loader, bundler.ts), and node --enable-source-maps
    // reads them for activity stack traces: a map whose sources are missing
    // from the package is useless.
    const maps = files.filter((f) => f.endsWith('.map'));
    assert.ok(maps.length > 0, `no source maps in ${files.join(', ')}`);
    for (const map of maps) {
      const parsed = JSON.parse(fs.readFileSync(path.join(PACKAGE_DIR, map), 'utf8')) as {
        sources: string[];
        sourcesContent?: (string | null)[];
      };
      parsed.sources.forEach((source, i) => {
        const shipped = files.includes(path.posix.join(path.posix.dirname(map), source));
        const inline = typeof parsed.sourcesContent?.[i] === 'string';
        assert.ok(shipped || inline, `${map}: source ${source} is neither in the package nor inlined`);
      });
    }
  });

  // The history (test/fixtures/await-video-workflow.history.json) was written
  // by hand, since no Temporal server can run here to record one: in the JSON
  // format of `temporal workflow show --output json` (field names and enums as
  // in sdk-typescript's packages/test/history_files/*.json), event by event as
  // the server records a run of awaitVideoWorkflow('proj_123') on a 1.24
  // worker: started; workflow task scheduled/started/completed; the activity
  // awaitVideoTask scheduled with the sample's options (4 h schedule-to-close,
  // 2 h start-to-close, 1 m heartbeat, the retry policy) and completed with an
  // archived task; a second workflow task; the workflow completed with its
  // result. Payloads are json/plain, as the default data converter writes
  // them. The first workflow task completion carries sdkMetadata.coreUsedFlags
  // [1, 2, 3], which sdk-core writes on a new workflow's first task
  // (sdk-core crates/sdk-core/src/internal_flags.rs, write_all_known): flag 1
  // turns on the activity id and type checks during replay
  // (crates/sdk-core/src/worker/workflow/machines/activity_state_machine.rs).
  // No lang flag: the TS SDK records one only when a workflow hits its code
  // path (packages/workflow/src/flags.ts), and this one does not.
  describe('replaying a recorded history of the sample workflow', () => {
    const history = () => JSON.parse(fs.readFileSync(HISTORY_FILE, 'utf8')) as { events: Record<string, any>[] };

    async function replay(h: unknown, workflowId = 'video-proj_123') {
      const scheduled: { type: string; options: ActivityOptions; args: unknown[] }[] = [];
      const results: unknown[] = [];
      // Copied out of the workflow sandbox (another realm: other prototypes).
      const plain = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T;
      const sinks: InjectedSinks<ReplayCaptureSinks> = {
        replayCapture: {
          activity: {
            fn: (_info, type, options, args) => void scheduled.push({ type, options: plain(options), args: plain(args) }),
            callDuringReplay: true,
          },
          result: { fn: (_info, result) => void results.push(plain(result)), callDuringReplay: true },
        },
      };
      await Worker.runReplayHistory({ workflowBundle: { code: bundle.code }, sinks }, h, workflowId);
      return { scheduled, results };
    }

    it('replays without a determinism error, scheduling the activity with a bounded retry', LIMIT, async () => {
      assert.ok(bundle, 'the bundle test ran first');
      const { scheduled, results } = await replay(history());
      assert.equal(scheduled.length, 1);
      const [{ type, options }] = scheduled;
      assert.equal(type, 'awaitVideoTask');
      // The whole wait, retries included, is bounded (not only one attempt).
      assert.ok(options.scheduleToCloseTimeout !== undefined, 'a scheduleToCloseTimeout');
      assert.ok(msToNumber(options.scheduleToCloseTimeout) >= msToNumber(options.startToCloseTimeout!));
      // Errors that retrying cannot fix are not retried: the three final gRPC
      // codes of a misdeployed sidecar among them.
      assert.deepEqual(options.retry?.nonRetryableErrorTypes, NON_RETRYABLE_VIDEO_TASK_FAILURE_TYPES);
      for (const t of ['VideoTaskUnimplemented', 'VideoTaskUnauthenticated', 'VideoTaskPermissionDenied']) {
        assert.ok(NON_RETRYABLE_VIDEO_TASK_FAILURE_TYPES.includes(t), t);
      }

      // The heartbeat claims of the docs, with the sample worker's settings:
      // the worker sends an activity's heartbeats to the server at most every
      // min(0.8 x heartbeatTimeout, maxHeartbeatThrottleInterval) (sdk-core
      // crates/sdk-core/src/worker/activities.rs, record_heartbeat, and the
      // throttling in activities/activity_heartbeat_manager.rs). The activity
      // heartbeats at least that often, so the server sees one per throttle
      // interval, and at least two in a row may be lost before the timeout.
      const heartbeatTimeout = msToNumber(options.heartbeatTimeout!);
      // (Unset, the worker's maxHeartbeatThrottleInterval is 60 s: worker-options.ts.)
      const maxThrottle = msToNumber(sampleWorkerOptions().maxHeartbeatThrottleInterval ?? '60s');
      const throttle = Math.min(0.8 * heartbeatTimeout, maxThrottle);
      assert.ok(heartbeatPeriodMs(heartbeatTimeout) <= throttle, 'the activity heartbeats at least once per throttle interval');
      assert.ok(heartbeatTimeout / throttle >= 3, `one heartbeat per ${throttle} ms against a ${heartbeatTimeout} ms timeout`);

      // The workflow's result keeps the sidecar's archive.
      assert.equal(results.length, 1);
      const result = results[0] as AwaitedVideo;
      const task = JSON.parse(
        Buffer.from(history().events[6].activityTaskCompletedEventAttributes.result.payloads[0].data, 'base64').toString(),
      );
      assert.deepEqual(result, {
        id: 'proj_123',
        videoUrl: task.videoUrl,
        durationSeconds: 8,
        archive: task.archive,
        archiveError: '',
      });
      assert.equal(result.archive?.uri, 'file:///videos/proj_123.mp4');
    });

    // generate-video-workflow.history.json is the same run, made from the
    // history above for generateVideoWorkflow({ family, body }) (workflow id
    // generate-order-42): the workflow type and input, the activity type
    // generateVideo with that input and the retry policy's current
    // non-retryable types, the task (proj_456) and the workflow's result.
    it('replays a history of generateVideoWorkflow: generateVideo scheduled with the request, the archive returned', LIMIT, async () => {
      assert.ok(bundle, 'the bundle test ran first');
      const h = JSON.parse(fs.readFileSync(GENERATE_HISTORY_FILE, 'utf8')) as { events: Record<string, any>[] };
      const { scheduled, results } = await replay(h, 'generate-order-42');
      assert.equal(scheduled.length, 1);
      const [{ type, options, args }] = scheduled;
      assert.equal(type, 'generateVideo');
      // The workflow's argument, passed on as it is: the request id is left to the activity.
      const input = JSON.parse(Buffer.from(h.events[0].workflowExecutionStartedEventAttributes.input.payloads[0].data, 'base64').toString());
      assert.deepEqual(args, [input]);
      assert.equal(input.body.duration, 10);
      assert.ok(options.scheduleToCloseTimeout !== undefined && options.heartbeatTimeout !== undefined);
      // A refused create and an unknown outcome are final; a used-up spend guard is retried.
      assert.deepEqual(options.retry?.nonRetryableErrorTypes, NON_RETRYABLE_VIDEO_TASK_FAILURE_TYPES);
      for (const t of ['VideoTaskCreateRefused', 'VideoTaskCreateOutcomeUnknown', 'VideoTaskCreateConflict', 'VideoTaskCreatePermissionDenied']) {
        assert.ok(NON_RETRYABLE_VIDEO_TASK_FAILURE_TYPES.includes(t), t);
      }
      assert.ok(!NON_RETRYABLE_VIDEO_TASK_FAILURE_TYPES.includes('VideoTaskCreateBudgetExhausted'));
      assert.equal(results.length, 1);
      const result = results[0] as AwaitedVideo;
      assert.equal(result.id, 'proj_456');
      assert.equal(result.archive?.uri, 'file:///videos/proj_456.mp4');

      // The same history scheduling awaitVideoTask instead: not this workflow.
      h.events[4].activityTaskScheduledEventAttributes.activityType.name = 'awaitVideoTask';
      await assert.rejects(replay(h, 'generate-order-42'), (err: Error) => err instanceof DeterminismViolationError);
    });

    it('fails with a DeterminismViolationError on a history the workflow does not match', LIMIT, async () => {
      // The check that makes the test above mean something: the same history
      // with another activity type in it.
      const changed = history();
      changed.events[4].activityTaskScheduledEventAttributes.activityType.name = 'generateVideo';
      await assert.rejects(replay(changed), (err: Error) => {
        assert.ok(err instanceof DeterminismViolationError, `${err.name}: ${err.message}`);
        assert.match(err.message, /Activity type of scheduled event 'generateVideo' does not match/);
        return true;
      });
    });
  });
});

describe('the package manifest', () => {
  it('leaves the Temporal SDK to the application: peer dependencies, the worker optional', () => {
    const manifest = JSON.parse(fs.readFileSync(path.join(PACKAGE_DIR, 'package.json'), 'utf8')) as {
      dependencies: Record<string, string>;
      peerDependencies: Record<string, string>;
      peerDependenciesMeta?: Record<string, { optional?: boolean }>;
    };
    // A hard, exact dependency would install a second SDK (and its ~30 MB
    // native worker) next to the application's, or clash with it.
    assert.deepEqual(Object.keys(manifest.dependencies).filter((d) => d.startsWith('@temporalio/')), []);
    for (const sdk of ['@temporalio/activity', '@temporalio/common', '@temporalio/workflow', '@temporalio/worker']) {
      assert.equal(manifest.peerDependencies[sdk], '^1.24.0', sdk);
    }
    // Only the sample worker needs @temporalio/worker.
    assert.equal(manifest.peerDependenciesMeta?.['@temporalio/worker']?.optional, true);
    for (const sdk of ['@temporalio/activity', '@temporalio/common', '@temporalio/workflow']) {
      assert.ok(!manifest.peerDependenciesMeta?.[sdk]?.optional, `${sdk} is required`);
    }
  });
});

describe('the sample worker', () => {
  it('runs more waits at once than the SDK default of 100 activity slots', () => {
    // Each wait holds a slot for as long as the video takes; the default is
    // 100 (packages/worker/src/worker-options.ts, maxConcurrentActivityTaskExecutions).
    const options = sampleWorkerOptions({});
    assert.ok((options.maxConcurrentActivityTaskExecutions ?? 100) >= 1000, 'at least 1000 slots');
    assert.equal(options.taskQueue, DEFAULT_TASK_QUEUE);
    assert.equal(sampleWorkerOptions({ VIDEOTASK_TASK_QUEUE: 'other' }).taskQueue, 'other');
  });

  it('uses the task queue of the Kubernetes example', () => {
    const manifest = fs.readFileSync(
      path.join(repoRoot(), 'deploy', 'kubernetes', 'examples', 'temporal', 'worker-deployment.yaml'),
      'utf8',
    );
    const m = /- name: VIDEOTASK_TASK_QUEUE\s*\n\s*value: "?([^"\s]+)"?/.exec(manifest);
    assert.ok(m, 'the example sets VIDEOTASK_TASK_QUEUE');
    assert.equal(m[1], DEFAULT_TASK_QUEUE);
  });
});

describe('the API embedded in the package', () => {
  // The descriptor is made from the repository's proto at build time
  // (scripts/embed-proto.js): it must encode and decode every message exactly
  // as the proto itself does.
  it('matches the repository\'s video_task.proto', () => {
    const protoFile = path.join(repoRoot(), PROTO_RELATIVE_PATH);
    assert.match(fs.readFileSync(protoFile, 'utf8'), /service VideoTaskService/);
    const fromProto = protoLoader.loadSync(protoFile, PROTO_LOADER_OPTIONS);
    const embedded = loadVideoTaskPackageDefinition();
    assert.deepEqual(Object.keys(embedded).sort(), Object.keys(fromProto).sort());
    const methods = (def: protoLoader.PackageDefinition) =>
      def['videotask.v1.VideoTaskService'] as protoLoader.ServiceDefinition;
    assert.deepEqual(Object.keys(methods(embedded)).sort(), ['CreateVideoTask', 'GetVideoTask', 'WatchVideoTask']);
    const task = {
      id: 'proj_1', model: 'videos', createTime: { seconds: '1761635478', nanos: 5 },
      status: 'VIDEO_TASK_STATUS_COMPLETED', videoUrl: 'https://cdn.invalid/v.mp4',
      actualDuration: { seconds: '8', nanos: 250 }, error: 'e', observeTime: { seconds: '1761635600', nanos: 1 },
      archive: {
        uri: 'file:///videos/proj_1.mp4', sha256: 'ab'.repeat(32), sizeBytes: '5242880',
        contentType: 'video/mp4', archiveTime: { seconds: '1761635700', nanos: 0 },
      },
      archiveError: '',
    };
    const samples: Record<string, [string, object][]> = {
      WatchVideoTask: [
        ['request', { id: 'proj_1' }],
        ['response', { type: 'EVENT_TYPE_TRANSITION', task, previousStatus: 'VIDEO_TASK_STATUS_PROCESSING' }],
      ],
      GetVideoTask: [
        ['request', { id: 'proj_1' }],
        ['response', task],
      ],
      CreateVideoTask: [
        ['request', {
          requestId: 'wf-1/run-2/3', family: 'videos',
          body: { fields: {
            prompt: { kind: 'stringValue', stringValue: 'a cat' },
            duration: { kind: 'numberValue', numberValue: 10 },
          } },
        }],
        ['response', task],
      ],
    };
    for (const [method, cases] of Object.entries(samples)) {
      const a = methods(embedded)[method];
      const b = methods(fromProto)[method];
      assert.equal(a.path, b.path);
      assert.equal(a.responseStream, b.responseStream);
      for (const [kind, message] of cases) {
        const ser = kind === 'request' ? [a.requestSerialize, b.requestSerialize] : [a.responseSerialize, b.responseSerialize];
        const de = kind === 'request' ? [a.requestDeserialize, b.requestDeserialize] : [a.responseDeserialize, b.responseDeserialize];
        const bytes = ser[1](message);
        assert.ok(bytes.length > 0);
        assert.deepEqual(ser[0](message), bytes, `${method} ${kind} encodes alike`);
        assert.deepEqual(de[0](bytes), de[1](bytes), `${method} ${kind} decodes alike`);
        assert.deepEqual(de[0](bytes), message, `${method} ${kind} round-trips`);
      }
    }
  });
});
