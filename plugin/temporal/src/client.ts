// A Node client of videotask.v1.VideoTaskService that awaits one task with the
// reconnect semantics of the C++ client (plugin/client.h): reconnects on
// UNAVAILABLE, RESOURCE_EXHAUSTED, server-side CANCELLED and DEADLINE_EXCEEDED
// and streams that end without a terminal state, with exponential backoff and
// jitter and a wait for the channel to be READY, giving up once the sidecar
// has been unhealthy for `giveUpAfterMs` (the outage clock, see
// VideoTaskClient.await); the new stream's SNAPSHOT resumes exactly and a
// status already reported is never reported twice.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type {
  AwaitVideoTaskOptions,
  VideoTask,
  VideoTaskEvent,
  VideoTaskStatus,
} from './types';

/** Where the API lives in the videotask repository. */
export const PROTO_RELATIVE_PATH = path.join('proto', 'videotask', 'v1', 'video_task.proto');

export const DEFAULT_TARGET = '127.0.0.1:50051';
export const DEFAULT_GIVE_UP_AFTER_MS = 60_000;
export const DEFAULT_INITIAL_BACKOFF_MS = 200;
export const DEFAULT_MAX_BACKOFF_MS = 10_000;
/** A stream open at least this long was healthy (ends the outage), messages or not. */
export const HEALTHY_STREAM_MS = 10_000;
/**
 * While waiting for the channel to be READY, `onWaitForReady` is called at
 * least this often (and on every channel state change), so that the activity
 * keeps heartbeating.
 */
const READY_WAIT_SLICE_MS = 1_000;

/**
 * The proto file: `explicit` if given, else $VIDEOTASK_PROTO_PATH, else
 * proto/videotask/v1/video_task.proto in the nearest directory above this
 * module that has it (the repository root when the package is used from the
 * repository).
 */
export function resolveProtoPath(explicit?: string): string {
  const given = explicit ?? process.env.VIDEOTASK_PROTO_PATH;
  if (given) {
    if (!fs.existsSync(given)) throw new Error(`videotask proto not found at ${given}`);
    return path.resolve(given);
  }
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, PROTO_RELATIVE_PATH);
    if (fs.existsSync(candidate)) return candidate;
    if (path.dirname(dir) === dir) break;
  }
  throw new Error(
    `cannot find ${PROTO_RELATIVE_PATH} in any directory above ${__dirname}; ` +
      'use the package from the videotask repository, or set VIDEOTASK_PROTO_PATH',
  );
}

/** How the proto is loaded: JSON-style field names, enums by name, int64 as strings. */
export const PROTO_LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

interface VideoTaskServiceStub extends grpc.Client {
  WatchVideoTask(
    request: { id: string },
    options?: grpc.CallOptions,
  ): grpc.ClientReadableStream<VideoTaskEvent>;
}

type VideoTaskServiceCtor = new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: grpc.ChannelOptions,
) => VideoTaskServiceStub;

const serviceCtors = new Map<string, VideoTaskServiceCtor>();

function loadService(protoPath: string): VideoTaskServiceCtor {
  let ctor = serviceCtors.get(protoPath);
  if (!ctor) {
    const definition = protoLoader.loadSync(protoPath, PROTO_LOADER_OPTIONS);
    const loaded = grpc.loadPackageDefinition(definition) as unknown as {
      videotask: { v1: { VideoTaskService: VideoTaskServiceCtor } };
    };
    ctor = loaded.videotask.v1.VideoTaskService;
    serviceCtors.set(protoPath, ctor);
  }
  return ctor;
}

/** A gRPC error that ended an await: its status code and message. */
export class VideoTaskRpcError extends Error {
  constructor(
    readonly code: grpc.status,
    readonly details: string,
  ) {
    super(`${grpc.status[code] ?? code}: ${details}`);
    this.name = 'VideoTaskRpcError';
  }
}

export interface VideoTaskClientOptions {
  /** "host:port" or "unix:PATH". Default: $VIDEOTASK_TARGET, else 127.0.0.1:50051. */
  target?: string;
  /** The video_task.proto to load; see resolveProtoPath(). */
  protoPath?: string;
  /** Default: insecure (the sidecar listens on loopback or a pod-local address). */
  credentials?: grpc.ChannelCredentials;
  /** Merged over the defaults (30 s keepalive, 100 ms - 2 s reconnect backoff). */
  channelOptions?: grpc.ChannelOptions;
}

export interface WatchOptions extends AwaitVideoTaskOptions {
  /** Aborting it cancels the current stream (or backoff) and rejects with `signal.reason`. */
  signal?: AbortSignal;
  /** The last status already reported (e.g. by an earlier activity attempt). */
  lastStatus?: VideoTaskStatus;
  /**
   * Sees every event once: SNAPSHOT, TRANSITIONs and HEARTBEATs, in order. A
   * resumed stream's SNAPSHOT that repeats the last reported status is not
   * passed; one whose status changed while disconnected is passed as a
   * TRANSITION from the last reported status.
   */
  onEvent?: (event: VideoTaskEvent) => void;
  /** Every message received, duplicates too, with the last reported status after it. */
  onMessage?: (message: VideoTaskEvent, lastStatus: VideoTaskStatus) => void;
  /** Called before each reconnect backoff. */
  onReconnect?: (info: { code: grpc.status; details: string; delayMs: number }) => void;
  /**
   * Called while waiting for the channel to be READY before a reconnect
   * attempt: when the wait starts, on each channel state change, and at least
   * once a second.
   */
  onWaitForReady?: (info: { state: grpc.connectivityState }) => void;
}

function isTerminal(status: VideoTaskStatus): boolean {
  return status === 'VIDEO_TASK_STATUS_COMPLETED' || status === 'VIDEO_TASK_STATUS_FAILED';
}

// Worth a new stream: the sidecar restarting or draining (UNAVAILABLE, or
// CANCELLED when it closed the connection), a slow-watcher cut
// (RESOURCE_EXHAUSTED), a DEADLINE_EXCEEDED sent by the server (this client
// sets no deadline of its own), or a stream that ended without a terminal
// state (OK). A cancellation by the caller is handled before this is asked.
const RETRYABLE_CODES: ReadonlySet<grpc.status> = new Set([
  grpc.status.UNAVAILABLE,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.CANCELLED,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.OK,
]);

function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason : new Error(`cancelled: ${String(reason)}`);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortReason(signal));
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortReason(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function isServiceError(err: unknown): err is grpc.ServiceError {
  return err instanceof Error && typeof (err as Partial<grpc.ServiceError>).code === 'number';
}

export class VideoTaskClient {
  readonly target: string;
  private readonly stub: VideoTaskServiceStub;

  constructor(options: VideoTaskClientOptions = {}) {
    this.target = options.target || process.env.VIDEOTASK_TARGET || DEFAULT_TARGET;
    const Service = loadService(resolveProtoPath(options.protoPath));
    this.stub = new Service(this.target, options.credentials ?? grpc.credentials.createInsecure(), {
      // Long-lived streams: keep the connection verified while nothing flows.
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      // Reconnect quickly after a sidecar restart.
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 2_000,
      ...options.channelOptions,
    });
  }

  /**
   * Streams the task until it is COMPLETED or FAILED and returns it (a failed
   * video is a result here, not an error). Rejects with a VideoTaskRpcError
   * for INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION and other final
   * codes, with UNAVAILABLE once the outage clock reaches `giveUpAfterMs`, and
   * with `signal.reason` when the signal aborts.
   *
   * The outage clock starts when the call starts. When a stream ends without
   * a terminal status (with a retryable error, or OK), it was healthy if it
   * reported a status not reported before (the first SNAPSHOT does; a resumed
   * SNAPSHOT repeating the last reported status does not) or stayed open at
   * least HEALTHY_STREAM_MS; then the clock restarts at that moment and the
   * backoff returns to `initialBackoffMs`. If the clock has reached
   * `giveUpAfterMs`, the call gives up; else it sleeps the jittered backoff
   * (never past the give-up point), doubles the backoff (up to
   * `maxBackoffMs`), waits for the channel to be READY (giving up if the
   * give-up point passes first) and opens a new stream.
   */
  async await(id: string, options: WatchOptions = {}): Promise<VideoTask> {
    const initialBackoff = options.initialBackoffMs ?? DEFAULT_INITIAL_BACKOFF_MS;
    const maxBackoff = options.maxBackoffMs ?? DEFAULT_MAX_BACKOFF_MS;
    const giveUpAfter = options.giveUpAfterMs ?? DEFAULT_GIVE_UP_AFTER_MS;
    const { signal } = options;
    let backoff = initialBackoff;
    let outageStart = Date.now();
    let lastReported: VideoTaskStatus = options.lastStatus ?? 'VIDEO_TASK_STATUS_UNSPECIFIED';

    for (;;) {
      if (signal?.aborted) throw abortReason(signal);
      const streamStart = Date.now();
      const call = this.stub.WatchVideoTask({ id });
      const cancel = () => call.cancel();
      signal?.addEventListener('abort', cancel, { once: true });
      let finalTask: VideoTask | undefined;
      let streamError: unknown;
      let callbackError: { error: unknown } | undefined;
      // Whether this stream reported a status not reported before.
      let reportedNewStatus = false;
      try {
        for await (const msg of call as AsyncIterable<VideoTaskEvent>) {
          const status = msg.task.status;
          const isChange = msg.type !== 'EVENT_TYPE_HEARTBEAT';
          try {
            if (isChange && status === lastReported) {
              // The SNAPSHOT of a resumed stream repeats what was already reported.
            } else {
              if (isChange) reportedNewStatus = true;
              if (options.onEvent) {
                if (msg.type === 'EVENT_TYPE_SNAPSHOT' && lastReported !== 'VIDEO_TASK_STATUS_UNSPECIFIED') {
                  // Changed while disconnected: report the change, not a new start.
                  options.onEvent({ ...msg, type: 'EVENT_TYPE_TRANSITION', previousStatus: lastReported });
                } else {
                  options.onEvent(msg);
                }
              }
            }
            if (isChange) lastReported = status;
            options.onMessage?.(msg, lastReported);
          } catch (error) {
            callbackError = { error };
            call.cancel();
            break;
          }
          if (isTerminal(status)) finalTask = msg.task;
        }
      } catch (err) {
        streamError = err;
      } finally {
        signal?.removeEventListener('abort', cancel);
      }
      if (callbackError) throw callbackError.error;
      if (finalTask) return finalTask;
      if (signal?.aborted) throw abortReason(signal);

      let code: grpc.status = grpc.status.OK;
      let details = 'the stream ended before the task finished';
      if (streamError !== undefined) {
        if (!isServiceError(streamError)) throw streamError;
        code = streamError.code;
        details = streamError.details || streamError.message;
      }
      if (!RETRYABLE_CODES.has(code)) throw new VideoTaskRpcError(code, details);
      const giveUp = () =>
        new VideoTaskRpcError(grpc.status.UNAVAILABLE, `sidecar at ${this.target} unavailable after retries: ${details}`);

      const now = Date.now();
      if (reportedNewStatus || now - streamStart >= HEALTHY_STREAM_MS) {
        // A healthy stream: the outage starts now.
        outageStart = now;
        backoff = initialBackoff;
      }
      const giveUpAt = outageStart + giveUpAfter;
      if (now >= giveUpAt) throw giveUp();
      // Exponential backoff with jitter, not past the give-up point.
      const delayMs = Math.max(0, Math.min(Math.round((0.5 + Math.random() * 0.5) * backoff), giveUpAt - now));
      options.onReconnect?.({ code, details, delayMs });
      await sleep(delayMs, signal);
      backoff = Math.min(backoff * 2, maxBackoff);
      // While the channel is in TRANSIENT_FAILURE an RPC fails at once: wait
      // for it to connect instead of stacking our backoff on the channel's.
      if (!(await this.waitForReady(giveUpAt, signal, options.onWaitForReady))) throw giveUp();
    }
  }

  /**
   * Resolves true once the channel is READY (or shut down, so that the next
   * call fails by itself), false if `until` (ms since the epoch) passes first;
   * rejects with `signal.reason` when the signal aborts.
   */
  private async waitForReady(
    until: number,
    signal: AbortSignal | undefined,
    onState: WatchOptions['onWaitForReady'],
  ): Promise<boolean> {
    const channel = this.stub.getChannel();
    for (;;) {
      if (signal?.aborted) throw abortReason(signal);
      const state = channel.getConnectivityState(true);
      if (state === grpc.connectivityState.READY || state === grpc.connectivityState.SHUTDOWN) return true;
      const now = Date.now();
      if (now >= until) return false;
      onState?.({ state });
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => reject(abortReason(signal!));
        signal?.addEventListener('abort', onAbort, { once: true });
        // Calls back on the next state change, or when the slice ends.
        channel.watchConnectivityState(state, Math.min(until, now + READY_WAIT_SLICE_MS), () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        });
      });
    }
  }

  /** Closes the channel; calls in flight are cancelled. */
  close(): void {
    this.stub.close();
  }
}
