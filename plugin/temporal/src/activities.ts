// The activities: awaitVideoTask awaits a video-generation task through the
// videotask sidecar; generateVideo creates one through the sidecar's
// CreateVideoTask (exactly once per request id while the sidecar remembers
// it) and then awaits it the same way. Register them on a worker with
//
//   Worker.create({ ..., activities: createVideoTaskActivities({ target }) })
//
// Workflows must import this module with `import type` only.
import { createHash } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { Context, type Info } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import {
  DEFAULT_CREATE_TIMEOUT_MS,
  VideoTaskBodyError,
  VideoTaskClient,
  VideoTaskConfigurationError,
  VideoTaskRpcError,
  VideoTaskSilenceError,
  type VideoTaskClientOptions,
} from './client';
import {
  VIDEO_TASK_STATUSES,
  VideoTaskFailureTypes,
  type AwaitVideoTaskOptions,
  type GenerateVideoInput,
  type VideoTask,
  type VideoTaskEvent,
  type VideoTaskHeartbeatDetails,
  type VideoTaskRpcFailureDetails,
  type VideoTaskSilenceDetails,
  type VideoTaskStatus,
} from './types';

export interface VideoTaskActivitiesOptions extends VideoTaskClientOptions, AwaitVideoTaskOptions {
  /** Deadline of one CreateVideoTask call of `generateVideo` (per call: `createTimeoutMs` of its input). Default 150000. */
  createTimeoutMs?: number;
  /** A client to share (e.g. between factories); else one is made from the options on first use. */
  client?: VideoTaskClient;
  /**
   * Sees every reported event of every awaitVideoTask call: the SNAPSHOT,
   * each TRANSITION, HEARTBEATs. Within one attempt a status is reported once,
   * across reconnects; across activity retries at least once (a retry after a
   * worker died may report again what the dead attempt reported last; see the
   * README), so make what it does idempotent.
   */
  onEvent?: (event: VideoTaskEvent, info: { id: string; attempt: number }) => void;
}

export interface VideoTaskActivities {
  /**
   * Awaits the task and returns it once COMPLETED. Throws a non-retryable
   * ApplicationFailure `VideoTaskFailed` when the video FAILED, non-retryable
   * `VideoTaskNotFound` / `VideoTaskInvalidArgument` /
   * `VideoTaskFailedPrecondition` / `VideoTaskUnimplemented` /
   * `VideoTaskUnauthenticated` / `VideoTaskPermissionDenied` for those gRPC
   * errors, a non-retryable `VideoTaskConfigurationError` when the worker's
   * settings are unusable, a retryable `VideoTaskSidecarUnavailable` when the
   * sidecar cannot be reached and a retryable `VideoTaskSidecarSilent` when
   * it sent nothing for `maxSilentMs`.
   */
  awaitVideoTask(id: string, options?: AwaitVideoTaskOptions): Promise<VideoTask>;
  /**
   * Creates a video through the sidecar's CreateVideoTask with
   * `input.requestId` (default: workflow id + run id + activity id, see
   * `defaultRequestId`: the same for every retry of this activity, new for a
   * new run), then awaits it exactly as `awaitVideoTask` does (heartbeats,
   * cancellation, reconnects) and returns the COMPLETED task with its
   * archive. A retried attempt whose heartbeat details name the task it
   * created waits for that task without another CreateVideoTask call.
   * Throws the failures of `awaitVideoTask`, and for the create:
   * non-retryable `VideoTaskCreateRefused` (INVALID_ARGUMENT: the vendor or
   * the sidecar refused it), `VideoTaskCreateOutcomeUnknown` (ABORTED: the
   * vendor may have created it), `VideoTaskCreateConflict` (ALREADY_EXISTS),
   * `VideoTaskCreatePermissionDenied` (PERMISSION_DENIED),
   * `VideoTaskFailedPrecondition` (the vendor rejects the sidecar's key);
   * retryable `VideoTaskCreateBudgetExhausted` (RESOURCE_EXHAUSTED: the spend
   * guard), `VideoTaskCreateUnavailable` (UNAVAILABLE, DEADLINE_EXCEEDED:
   * nothing created yet) and `VideoTaskSidecarUnavailable` (never reached).
   */
  generateVideo(input: GenerateVideoInput): Promise<VideoTask>;
}

/** The longest request id the sidecar takes. */
export const MAX_REQUEST_ID_LENGTH = 128;

const PRINTABLE_ASCII = /^[\x20-\x7e]+$/;

/**
 * The request id `generateVideo` uses when none is given:
 * `WORKFLOW_ID/RUN_ID/ACTIVITY_ID` from the activity's Info. Temporal keeps
 * all three across retries of one activity (the activity id is the
 * workflow's `activityId` option, else its command sequence number), and a
 * new run (continue-as-new, reset, a workflow retry, a cron run) has a new run
 * id. When that string is not 1-128 printable ASCII characters (a long or
 * non-ASCII workflow id), or a run or activity id contains `/` (so that it
 * could be read two ways), it is `sha256:` and the hex SHA-256 of the JSON
 * array `[workflowId, runId, activityId]` instead. A standalone activity (not
 * started by a workflow) uses `activity/ACTIVITY_ID/ACTIVITY_RUN_ID` the same
 * way. Throws a VideoTaskConfigurationError when Info has neither, and for a
 * local activity: a local activity retried after a backoff longer than its
 * `localRetryThreshold` is scheduled again under a new sequence number, so a
 * new activity id (sdk-typescript packages/workflow/src/workflow.ts,
 * scheduleLocalActivity), and its retry would create a second video.
 */
export function defaultRequestId(
  info: Pick<Info, 'activityId' | 'workflowExecution' | 'activityRunId'> & { isLocal?: boolean },
): string {
  if (info.isLocal) {
    throw new VideoTaskConfigurationError(
      'videotask: generateVideo as a local activity needs an explicit requestId: a local activity retried after a ' +
        'backoff gets a new activity id, so the default request id would create the video again (run it as a ' +
        'normal activity)',
    );
  }
  let parts: [string, string, string];
  if (info.workflowExecution?.workflowId && info.workflowExecution.runId) {
    parts = [info.workflowExecution.workflowId, info.workflowExecution.runId, info.activityId];
  } else if (info.activityRunId) {
    parts = ['activity', info.activityId, info.activityRunId];
  } else {
    throw new VideoTaskConfigurationError(
      'videotask: generateVideo needs a requestId: this activity has neither a workflow run nor an activity run id',
    );
  }
  const readable = parts.join('/');
  if (
    readable.length <= MAX_REQUEST_ID_LENGTH &&
    PRINTABLE_ASCII.test(readable) &&
    !parts[1].includes('/') &&
    !parts[2].includes('/')
  ) {
    return readable;
  }
  return `sha256:${createHash('sha256').update(JSON.stringify(parts)).digest('hex')}`;
}

function resumedStatus(details: unknown, id: string): VideoTaskStatus | undefined {
  if (typeof details !== 'object' || details === null) return undefined;
  const d = details as Partial<VideoTaskHeartbeatDetails>;
  if (d.id !== id || !VIDEO_TASK_STATUSES.includes(d.lastStatus as VideoTaskStatus)) return undefined;
  return d.lastStatus === 'VIDEO_TASK_STATUS_UNSPECIFIED' ? undefined : d.lastStatus;
}

/** Heartbeat period when the activity has no heartbeat timeout (heartbeats still carry cancellation). */
export const DEFAULT_HEARTBEAT_PERIOD_MS = 10_000;
const MIN_HEARTBEAT_PERIOD_MS = 50;
const MAX_HEARTBEAT_PERIOD_MS = 60_000;

/**
 * How often the activity heartbeats at least: a third of the heartbeat
 * timeout (so two heartbeats may be lost), kept within 50 ms - 60 s; 10 s
 * when there is no heartbeat timeout.
 */
export function heartbeatPeriodMs(heartbeatTimeoutMs: number | undefined): number {
  if (!heartbeatTimeoutMs || !Number.isFinite(heartbeatTimeoutMs) || heartbeatTimeoutMs <= 0) {
    return DEFAULT_HEARTBEAT_PERIOD_MS;
  }
  return Math.min(MAX_HEARTBEAT_PERIOD_MS, Math.max(MIN_HEARTBEAT_PERIOD_MS, Math.floor(heartbeatTimeoutMs / 3)));
}

/** gRPC codes that end the wait for good, and the failure type each becomes. */
const FINAL_CODE_TYPES: ReadonlyMap<grpc.status, string> = new Map([
  [grpc.status.NOT_FOUND, VideoTaskFailureTypes.NOT_FOUND],
  [grpc.status.INVALID_ARGUMENT, VideoTaskFailureTypes.INVALID_ARGUMENT],
  [grpc.status.FAILED_PRECONDITION, VideoTaskFailureTypes.FAILED_PRECONDITION],
  // Not a videotask sidecar on that port, or a proxy/mesh in front of it
  // that refuses the worker: retrying cannot help, fix the deployment.
  [grpc.status.UNIMPLEMENTED, VideoTaskFailureTypes.UNIMPLEMENTED],
  [grpc.status.UNAUTHENTICATED, VideoTaskFailureTypes.UNAUTHENTICATED],
  [grpc.status.PERMISSION_DENIED, VideoTaskFailureTypes.PERMISSION_DENIED],
]);

/** gRPC codes of CreateVideoTask with a type of their own, and whether a retry may help. */
const CREATE_CODE_TYPES: ReadonlyMap<grpc.status, { type: string; nonRetryable: boolean }> = new Map([
  [grpc.status.INVALID_ARGUMENT, { type: VideoTaskFailureTypes.CREATE_REFUSED, nonRetryable: true }],
  [grpc.status.ABORTED, { type: VideoTaskFailureTypes.CREATE_OUTCOME_UNKNOWN, nonRetryable: true }],
  [grpc.status.ALREADY_EXISTS, { type: VideoTaskFailureTypes.CREATE_CONFLICT, nonRetryable: true }],
  [grpc.status.PERMISSION_DENIED, { type: VideoTaskFailureTypes.CREATE_PERMISSION_DENIED, nonRetryable: true }],
  // The spend guard: a later attempt may create (the guard still caps spend).
  [grpc.status.RESOURCE_EXHAUSTED, { type: VideoTaskFailureTypes.CREATE_BUDGET_EXHAUSTED, nonRetryable: false }],
  // Nothing created, or another call of this key still creating: the same key is safe to retry.
  [grpc.status.UNAVAILABLE, { type: VideoTaskFailureTypes.CREATE_UNAVAILABLE, nonRetryable: false }],
  [grpc.status.DEADLINE_EXCEEDED, { type: VideoTaskFailureTypes.CREATE_UNAVAILABLE, nonRetryable: false }],
]);

/** What ends a CreateVideoTask call, as a Temporal failure. */
function toCreateFailure(err: unknown, requestId: string, family: string): unknown {
  const what = `creating a video (family ${family}, request id ${requestId})`;
  if (err instanceof VideoTaskBodyError) {
    const detail: VideoTaskRpcFailureDetails = { code: 'INVALID_ARGUMENT', message: err.message };
    return ApplicationFailure.create({
      message: `${what}: ${err.message}; nothing was sent`,
      type: VideoTaskFailureTypes.CREATE_REFUSED,
      nonRetryable: true,
      details: [detail],
      cause: err,
    });
  }
  if (err instanceof VideoTaskRpcError && err.lastCode === undefined) {
    const mapped = CREATE_CODE_TYPES.get(err.code);
    if (mapped) {
      const detail: VideoTaskRpcFailureDetails = { code: grpc.status[err.code] ?? String(err.code), message: err.details };
      return ApplicationFailure.create({
        message: `${what}: ${err.message}`,
        type: mapped.type,
        nonRetryable: mapped.nonRetryable,
        details: [detail],
        cause: err,
      });
    }
  }
  // The rest as for a wait (unreachable sidecar, FAILED_PRECONDITION, UNIMPLEMENTED, ...).
  return toFailure(err, what, 'VIDEO_TASK_STATUS_UNSPECIFIED', '');
}

function toFailure(err: unknown, id: string, lastStatus: VideoTaskStatus, prefix = 'video task '): unknown {
  if (err instanceof VideoTaskConfigurationError) {
    return ApplicationFailure.create({
      message: `${prefix}${id}: ${err.message}`,
      type: VideoTaskFailureTypes.CONFIGURATION,
      nonRetryable: true,
      cause: err,
    });
  }
  if (err instanceof VideoTaskSilenceError) {
    const details: VideoTaskSilenceDetails = { silentMs: err.silentMs, lastStatus };
    return ApplicationFailure.create({
      message: `${prefix}${id}: ${err.message}`,
      type: VideoTaskFailureTypes.SIDECAR_SILENT,
      nonRetryable: false,
      details: [details],
      cause: err,
    });
  }
  if (!(err instanceof VideoTaskRpcError)) return err;
  const message = `${prefix}${id}: ${err.message}`;
  const detail: VideoTaskRpcFailureDetails = { code: grpc.status[err.code] ?? String(err.code), message: err.details };
  const finalType = FINAL_CODE_TYPES.get(err.code);
  if (finalType !== undefined) {
    return ApplicationFailure.create({ message, type: finalType, nonRetryable: true, details: [detail], cause: err });
  }
  if (err.code === grpc.status.UNAVAILABLE) {
    // Gave up reconnecting: say what ended the last stream (a watch limit
    // reads differently from a sidecar that is down).
    if (err.lastCode !== undefined) detail.lastCode = err.lastCode === null ? null : (grpc.status[err.lastCode] ?? String(err.lastCode));
    return ApplicationFailure.create({
      message, type: VideoTaskFailureTypes.SIDECAR_UNAVAILABLE, nonRetryable: false, details: [detail], cause: err,
    });
  }
  return ApplicationFailure.create({
    message, type: VideoTaskFailureTypes.RPC_ERROR, nonRetryable: false, details: [detail], cause: err,
  });
}

/**
 * Waits for task `id` inside the running activity and returns it once
 * COMPLETED: resumes from the attempt's heartbeat details, heartbeats (per
 * sidecar message, per reconnect step, and on a timer while silent), reports
 * events, and turns what ends the wait into Temporal failures (a FAILED video
 * too). Every activity of this package that waits for a task goes through
 * here, so they behave alike.
 */
async function waitInActivity(
  id: string,
  getClient: () => VideoTaskClient,
  wait: AwaitVideoTaskOptions,
  onEvent: VideoTaskActivitiesOptions['onEvent'],
  requestId?: string,
): Promise<VideoTask> {
  const ctx = Context.current();
  const { attempt } = ctx.info;
  // An earlier attempt's heartbeat: resume from the status it reported.
  const resumed = resumedStatus(ctx.info.heartbeatDetails, id);
  let lastStatus: VideoTaskStatus = resumed ?? 'VIDEO_TASK_STATUS_UNSPECIFIED';
  // Besides a heartbeat per message and per reconnect step, one on a local
  // timer whenever none was sent for a period: a stream may be open but
  // silent for longer than the heartbeat timeout (the sidecar waits for its
  // first successful poll after a vendor error or a 429 pause), and the
  // heartbeat timeout is there to notice a dead worker, not a slow vendor
  // (maxSilentMs bounds the silence).
  const periodMs = heartbeatPeriodMs(ctx.info.heartbeatTimeoutMs);
  let phase: 'WAITING' | 'RECONNECTING' = 'WAITING';
  let timer: NodeJS.Timeout | undefined;
  const heartbeat = (event: VideoTaskHeartbeatDetails['event']) => {
    const details: VideoTaskHeartbeatDetails = { id, lastStatus, event };
    // generateVideo: the key too, so that a retry knows the task was created.
    if (requestId !== undefined) details.requestId = requestId;
    ctx.heartbeat(details);
    clearTimeout(timer);
    timer = setTimeout(() => heartbeat(phase), periodMs);
  };
  if (resumed) ctx.log.info('resuming video task watch', { taskId: id, lastStatus: resumed, attempt });

  let task: VideoTask;
  try {
    timer = setTimeout(() => heartbeat(phase), periodMs);
    task = await getClient().await(id, {
      ...wait,
      lastStatus: resumed,
      signal: ctx.cancellationSignal,
      onEvent: (event) => {
        if (event.type !== 'EVENT_TYPE_HEARTBEAT') {
          ctx.log.info('video task status', {
            taskId: id,
            event: event.type,
            status: event.task.status,
            previousStatus: event.previousStatus,
          });
        }
        onEvent?.(event, { id, attempt });
      },
      // Every message, HEARTBEATs included, keeps the activity alive.
      onMessage: (message, last) => {
        lastStatus = last;
        phase = 'WAITING';
        heartbeat(message.type);
      },
      // Reconnecting is progress too, and lets a cancellation reach the
      // activity (Temporal delivers it in a heartbeat's response).
      onReconnect: ({ code, details, delayMs }) => {
        ctx.log.warn('video task watch interrupted; reconnecting', {
          taskId: id,
          code: grpc.status[code],
          details,
          delayMs,
        });
        phase = 'RECONNECTING';
        heartbeat('RECONNECTING');
      },
      // So is waiting for the channel to reconnect to the sidecar (which
      // may take until giveUpAfterMs).
      onWaitForReady: () => heartbeat('RECONNECTING'),
    });
  } catch (err) {
    // Cancelled (or timed out, or the worker is shutting down): the stream
    // is already cancelled; rethrow the activity's CancelledFailure.
    if (ctx.cancellationSignal.aborted) throw ctx.cancellationSignal.reason ?? err;
    throw toFailure(err, id, lastStatus);
  } finally {
    clearTimeout(timer);
  }
  if (task.status === 'VIDEO_TASK_STATUS_FAILED') {
    throw ApplicationFailure.create({
      message: `video task ${id} failed: ${task.error || 'the vendor gave no reason'}`,
      type: VideoTaskFailureTypes.FAILED,
      nonRetryable: true,
      details: [task],
    });
  }
  return task;
}

/** A task id that an earlier attempt of this generateVideo created, from its heartbeat details. */
function createdTaskId(details: unknown, requestId: string): string | undefined {
  if (typeof details !== 'object' || details === null) return undefined;
  const d = details as Partial<VideoTaskHeartbeatDetails>;
  return d.requestId === requestId && typeof d.id === 'string' && d.id !== '' ? d.id : undefined;
}

/**
 * generateVideo inside the running activity: the create (heartbeating on a
 * timer meanwhile, cancellable), a CREATED heartbeat with the task id, then
 * the wait of awaitVideoTask.
 */
async function generateInActivity(
  input: GenerateVideoInput,
  getClient: () => VideoTaskClient,
  factory: VideoTaskActivitiesOptions,
): Promise<VideoTask> {
  const ctx = Context.current();
  const family = typeof input?.family === 'string' ? input.family : String(input?.family);
  let requestId: string;
  try {
    if (typeof input !== 'object' || input === null) {
      throw new VideoTaskBodyError('generateVideo takes one object, { family, body, requestId? }');
    }
    requestId = input.requestId ?? defaultRequestId(ctx.info);
  } catch (err) {
    throw toCreateFailure(err, '(none)', family);
  }
  const wait = waitOptions(input, factory);

  let taskId = createdTaskId(ctx.info.heartbeatDetails, requestId);
  if (taskId !== undefined) {
    ctx.log.info('video task created by an earlier attempt; awaiting it', { taskId, attempt: ctx.info.attempt });
  } else {
    const periodMs = heartbeatPeriodMs(ctx.info.heartbeatTimeoutMs);
    let timer: NodeJS.Timeout | undefined;
    const heartbeat = () => {
      const details: VideoTaskHeartbeatDetails = {
        id: '', lastStatus: 'VIDEO_TASK_STATUS_UNSPECIFIED', event: 'CREATING', requestId,
      };
      ctx.heartbeat(details);
      clearTimeout(timer);
      timer = setTimeout(heartbeat, periodMs);
    };
    let task: VideoTask;
    try {
      timer = setTimeout(heartbeat, periodMs);
      task = await getClient().create(
        { requestId, family: input.family, body: input.body },
        {
          signal: ctx.cancellationSignal,
          createTimeoutMs: input.createTimeoutMs ?? factory.createTimeoutMs ?? DEFAULT_CREATE_TIMEOUT_MS,
          giveUpAfterMs: wait.giveUpAfterMs,
          // No heartbeat per channel state here (the timer keeps the attempt
          // alive): the worker sends an attempt's first heartbeat at once and
          // throttles the next ones, and the first should be CREATED.
        },
      );
    } catch (err) {
      // Cancelled: a create already sent is still settled by the sidecar, and
      // a retry with this request id gets its outcome.
      if (ctx.cancellationSignal.aborted) throw ctx.cancellationSignal.reason ?? err;
      throw toCreateFailure(err, requestId, family);
    } finally {
      clearTimeout(timer);
    }
    taskId = task.id;
    ctx.log.info('video task created', { taskId, family });
    // At once, so that a retry of this attempt (should the worker die) waits
    // for this task instead of creating again, even through a sidecar that
    // forgot the request id. (The worker sends it to Temporal at once when it
    // is the attempt's first heartbeat, as when the create took less than the
    // heartbeat period; else within the throttle interval.) Nothing reported
    // yet: lastStatus UNSPECIFIED.
    const created: VideoTaskHeartbeatDetails = {
      id: taskId, lastStatus: 'VIDEO_TASK_STATUS_UNSPECIFIED', event: 'CREATED', requestId,
    };
    ctx.heartbeat(created);
  }
  return waitInActivity(taskId, getClient, wait, factory.onEvent, requestId);
}

/** The per-call options over the factory's. */
function waitOptions(call: AwaitVideoTaskOptions, factory: AwaitVideoTaskOptions): AwaitVideoTaskOptions {
  return {
    giveUpAfterMs: call.giveUpAfterMs ?? factory.giveUpAfterMs,
    initialBackoffMs: call.initialBackoffMs ?? factory.initialBackoffMs,
    maxBackoffMs: call.maxBackoffMs ?? factory.maxBackoffMs,
    maxSilentMs: call.maxSilentMs ?? factory.maxSilentMs,
    notFoundRetryMs: call.notFoundRetryMs ?? factory.notFoundRetryMs,
  };
}

/** The activities, bound to one sidecar client. */
export function createVideoTaskActivities(options: VideoTaskActivitiesOptions = {}): VideoTaskActivities {
  let client = options.client;
  // Made on first use, so that a bad setting fails the activity (non-retryable), not the worker.
  const getClient = () => (client ??= new VideoTaskClient(options));

  async function awaitVideoTask(id: string, callOptions: AwaitVideoTaskOptions = {}): Promise<VideoTask> {
    return waitInActivity(id, getClient, waitOptions(callOptions, options), options.onEvent);
  }

  async function generateVideo(input: GenerateVideoInput): Promise<VideoTask> {
    return generateInActivity(input, getClient, options);
  }

  return { awaitVideoTask, generateVideo };
}
