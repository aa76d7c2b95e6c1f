// The awaitVideoTask activity: awaits a video-generation task through the
// videotask sidecar. Register it on a worker with
//
//   Worker.create({ ..., activities: createVideoTaskActivities({ target }) })
//
// Workflows must import this module with `import type` only.
import * as grpc from '@grpc/grpc-js';
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import {
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
  type VideoTask,
  type VideoTaskEvent,
  type VideoTaskHeartbeatDetails,
  type VideoTaskRpcFailureDetails,
  type VideoTaskSilenceDetails,
  type VideoTaskStatus,
} from './types';

export interface VideoTaskActivitiesOptions extends VideoTaskClientOptions, AwaitVideoTaskOptions {
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

function toFailure(err: unknown, id: string, lastStatus: VideoTaskStatus): unknown {
  if (err instanceof VideoTaskConfigurationError) {
    return ApplicationFailure.create({
      message: `video task ${id}: ${err.message}`,
      type: VideoTaskFailureTypes.CONFIGURATION,
      nonRetryable: true,
      cause: err,
    });
  }
  if (err instanceof VideoTaskSilenceError) {
    const details: VideoTaskSilenceDetails = { silentMs: err.silentMs, lastStatus };
    return ApplicationFailure.create({
      message: `video task ${id}: ${err.message}`,
      type: VideoTaskFailureTypes.SIDECAR_SILENT,
      nonRetryable: false,
      details: [details],
      cause: err,
    });
  }
  if (!(err instanceof VideoTaskRpcError)) return err;
  const message = `video task ${id}: ${err.message}`;
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

  return { awaitVideoTask };
}
