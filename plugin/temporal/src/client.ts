// A Node client of videotask.v1.VideoTaskService that awaits one task with the
// reconnect semantics of the C++ client (plugin/client.h): reconnects on
// UNAVAILABLE, RESOURCE_EXHAUSTED, server-side CANCELLED and DEADLINE_EXCEEDED
// and streams that end without a terminal state, with exponential backoff and
// jitter and a wait for the channel to be READY, giving up once the sidecar
// has been unhealthy for `giveUpAfterMs` (the outage clock, see
// VideoTaskClient.await); the new stream's SNAPSHOT resumes exactly and a
// status already reported is not reported again within one await. Two more
// bounds: nothing from the sidecar for `maxSilentMs` ends the await, and a
// NOT_FOUND for an id not seen yet is retried for `notFoundRetryMs`.
//
// VideoTaskClient.await is the one wait loop of the package: every activity
// that waits for a task (awaitVideoTask, generateVideo) runs it.
// VideoTaskClient.create calls CreateVideoTask once (the sidecar keeps the
// idempotency key); toStruct builds its google.protobuf.Struct body.
//
// The API comes from a descriptor embedded at build time
// (scripts/embed-proto.js), so there is no .proto file to find at run time.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { VIDEO_TASK_DESCRIPTOR_SET_BASE64 } from './generated/video_task_descriptor';
import type {
  AwaitVideoTaskOptions,
  JsonValue,
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
export const DEFAULT_MAX_SILENT_MS = 600_000;
export const DEFAULT_NOT_FOUND_RETRY_MS = 10_000;
/**
 * Deadline of one CreateVideoTask call: above the sidecar's own limit (it
 * retries a vendor 429 / 503 for at most 2 minutes), so that the sidecar
 * answers with its status before the deadline cuts the call.
 */
export const DEFAULT_CREATE_TIMEOUT_MS = 150_000;
/** A stream open at least this long was healthy (ends the outage), messages or not. */
export const HEALTHY_STREAM_MS = 10_000;
/**
 * While waiting for the channel to be READY, `onWaitForReady` is called at
 * least this often (and on every channel state change), so that the activity
 * keeps heartbeating.
 */
const READY_WAIT_SLICE_MS = 1_000;

/** How the API is loaded: JSON-style field names, enums by name, int64 as strings. */
export const PROTO_LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

/**
 * A worker configuration the client cannot work with (an empty target, a
 * `protoPath` that is missing or not the videotask.v1 API): retrying does not
 * help, so the activity reports it as a non-retryable failure.
 */
export class VideoTaskConfigurationError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VideoTaskConfigurationError';
  }
}

/**
 * The videotask.v1 package definition: from `protoPath` when given (a
 * video_task.proto to use instead of the embedded API), else from the
 * descriptor embedded in this package at build time. Throws a
 * VideoTaskConfigurationError when `protoPath` is missing or unloadable.
 */
export function loadVideoTaskPackageDefinition(protoPath?: string): protoLoader.PackageDefinition {
  if (protoPath === undefined) {
    return protoLoader.loadFileDescriptorSetFromBuffer(
      Buffer.from(VIDEO_TASK_DESCRIPTOR_SET_BASE64, 'base64'),
      PROTO_LOADER_OPTIONS,
    );
  }
  if (!fs.existsSync(protoPath)) {
    throw new VideoTaskConfigurationError(
      `videotask: protoPath ${protoPath} does not exist; leave protoPath unset to use the API embedded in the package`,
    );
  }
  try {
    return protoLoader.loadSync(path.resolve(protoPath), PROTO_LOADER_OPTIONS);
  } catch (err) {
    throw new VideoTaskConfigurationError(
      `videotask: cannot load protoPath ${protoPath}: ${err instanceof Error ? err.message : String(err)}`,
      { cause: err },
    );
  }
}

/** google.protobuf.Value as the loaded API takes it (one of the kinds set). */
export type ProtoValue =
  | { nullValue: 'NULL_VALUE' }
  | { numberValue: number }
  | { stringValue: string }
  | { boolValue: boolean }
  | { structValue: ProtoStruct }
  | { listValue: { values: ProtoValue[] } };

/** google.protobuf.Struct as the loaded API takes it. */
export interface ProtoStruct {
  fields: Record<string, ProtoValue>;
}

/** videotask.v1.CreateVideoTaskRequest as the loaded API takes it. */
export interface CreateVideoTaskRequest {
  requestId: string;
  family: string;
  body: ProtoStruct;
}

interface VideoTaskServiceStub extends grpc.Client {
  WatchVideoTask(
    request: { id: string },
    options?: grpc.CallOptions,
  ): grpc.ClientReadableStream<VideoTaskEvent>;
  CreateVideoTask(
    request: CreateVideoTaskRequest,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: (err: grpc.ServiceError | null, response?: VideoTask) => void,
  ): grpc.ClientUnaryCall;
}

type VideoTaskServiceCtor = new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: grpc.ChannelOptions,
) => VideoTaskServiceStub;

/** Service constructors by protoPath ('' for the embedded API). */
const serviceCtors = new Map<string, VideoTaskServiceCtor>();

function loadService(protoPath?: string): VideoTaskServiceCtor {
  const key = protoPath ?? '';
  let ctor = serviceCtors.get(key);
  if (!ctor) {
    const loaded = grpc.loadPackageDefinition(loadVideoTaskPackageDefinition(protoPath)) as unknown as {
      videotask?: { v1?: { VideoTaskService?: VideoTaskServiceCtor } };
    };
    const found = loaded.videotask?.v1?.VideoTaskService;
    if (typeof found !== 'function') {
      throw new VideoTaskConfigurationError(`videotask: ${protoPath} does not define videotask.v1.VideoTaskService`);
    }
    ctor = found;
    serviceCtors.set(key, ctor);
  }
  return ctor;
}

/** A gRPC error that ended an await: its status code and message. */
export class VideoTaskRpcError extends Error {
  /**
   * When the await gave up reconnecting (code UNAVAILABLE): the status that
   * ended the last stream (OK: it ended without a terminal state); null when
   * no stream got an answer. Undefined for other errors.
   */
  readonly lastCode?: grpc.status | null;

  constructor(
    readonly code: grpc.status,
    readonly details: string,
    options?: { lastCode?: grpc.status | null },
  ) {
    super(`${grpc.status[code] ?? code}: ${details}`);
    this.name = 'VideoTaskRpcError';
    if (options && 'lastCode' in options) this.lastCode = options.lastCode;
  }
}

/** Nothing came from the sidecar for `maxSilentMs`: the await was ended (its stream cancelled). */
export class VideoTaskSilenceError extends Error {
  constructor(
    readonly target: string,
    readonly silentMs: number,
  ) {
    super(`no message from the sidecar at ${target} for ${formatSeconds(silentMs)} (maxSilentMs)`);
    this.name = 'VideoTaskSilenceError';
  }
}

/**
 * A request body that cannot be sent: not a JSON object, or a value JSON
 * cannot hold (NaN, Infinity, undefined in an array, a function, a Date, a
 * cycle). Nothing was sent; the activity reports it as the non-retryable
 * `VideoTaskCreateRefused`.
 */
export class VideoTaskBodyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'VideoTaskBodyError';
  }
}

/** Deeper than this is refused (the sidecar takes at most 64 KiB of JSON anyway). */
const MAX_BODY_DEPTH = 100;
/**
 * A body larger than this as JSON is refused before it is sent. The sidecar
 * refuses more than 64 KiB itself (INVALID_ARGUMENT); this bound only keeps a
 * huge body from reaching gRPC's 4 MB message limit, whose RESOURCE_EXHAUSTED
 * would read like the spend guard.
 */
export const MAX_SENT_BODY_BYTES = 1 << 20;

function toValue(v: unknown, where: string, depth: number, seen: Set<object>): ProtoValue {
  if (v === null) return { nullValue: 'NULL_VALUE' };
  switch (typeof v) {
    case 'string':
      return { stringValue: v };
    case 'boolean':
      return { boolValue: v };
    case 'number':
      // A double on the wire; the sidecar sends integral ones as integers.
      if (!Number.isFinite(v)) throw new VideoTaskBodyError(`body${where}: ${v} is not a JSON number`);
      return { numberValue: v };
    case 'object':
      break;
    default:
      throw new VideoTaskBodyError(`body${where}: a ${typeof v} is not a JSON value`);
  }
  const obj = v as object;
  if (depth >= MAX_BODY_DEPTH) throw new VideoTaskBodyError(`body${where}: nested deeper than ${MAX_BODY_DEPTH} levels`);
  if (seen.has(obj)) throw new VideoTaskBodyError(`body${where}: a cycle`);
  seen.add(obj);
  try {
    if (Array.isArray(obj)) {
      return { listValue: { values: obj.map((item, i) => toValue(item, `${where}[${i}]`, depth + 1, seen)) } };
    }
    return { structValue: structOf(obj, where, depth + 1, seen) };
  } finally {
    seen.delete(obj);
  }
}

function structOf(obj: object, where: string, depth: number, seen: Set<object>): ProtoStruct {
  const proto = Object.getPrototypeOf(obj);
  if (proto !== Object.prototype && proto !== null) {
    throw new VideoTaskBodyError(`body${where}: a ${proto?.constructor?.name ?? 'non-plain'} object is not a JSON object`);
  }
  const fields: Record<string, ProtoValue> = {};
  for (const [key, value] of Object.entries(obj)) {
    // As JSON.stringify does: a key whose value is undefined is left out.
    if (value === undefined) continue;
    // defineProperty: a key "__proto__" (JSON.parse makes it an own key) stays a key.
    Object.defineProperty(fields, key, {
      value: toValue(value, `${where}.${key}`, depth, seen),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return { fields };
}

/**
 * The google.protobuf.Struct of a JSON object, for CreateVideoTaskRequest.body:
 * numbers as `numberValue` (doubles; the sidecar sends integral ones to the
 * vendor as integers, `10` not `10.0`), null as `nullValue`, arrays as
 * `listValue`, objects as `structValue`. Keys whose value is undefined are
 * left out, as JSON.stringify does. Throws a VideoTaskBodyError for anything
 * that is not a plain JSON object (an array, null, a Date, NaN, a cycle, ...).
 */
export function toStruct(body: unknown): ProtoStruct {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new VideoTaskBodyError(
      `body must be a JSON object, not ${Array.isArray(body) ? 'an array' : body === null ? 'null' : `a ${typeof body}`}`,
    );
  }
  return structOf(body, '', 0, new Set([body]));
}

export interface CreateOptions {
  /** Aborting it cancels the call and rejects with `signal.reason` (a sent create is still settled by the sidecar). */
  signal?: AbortSignal;
  /** Deadline of the CreateVideoTask call. Default DEFAULT_CREATE_TIMEOUT_MS. */
  createTimeoutMs?: number;
  /** How long to wait for the channel to connect before giving up (UNAVAILABLE "unreachable"). Default 60000. */
  giveUpAfterMs?: number;
  /** As WatchOptions.onWaitForReady: called while waiting for the channel. */
  onWaitForReady?: WatchOptions['onWaitForReady'];
}

export interface VideoTaskClientOptions {
  /** "host:port" or "unix:PATH". Default: $VIDEOTASK_TARGET, else 127.0.0.1:50051. */
  target?: string;
  /**
   * A video_task.proto to load instead of the API embedded in the package
   * (normally unset). Missing or unloadable: the constructor throws a
   * VideoTaskConfigurationError.
   */
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

/** The longest delay a Node timer takes (about 24.8 days); longer ones fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * An option in milliseconds: `fallback` when unset, else a number from `min`
 * to MAX_TIMER_MS, else a VideoTaskConfigurationError.
 */
function checkedMs(name: string, value: unknown, fallback: number, min: number): number {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > MAX_TIMER_MS) {
    throw new VideoTaskConfigurationError(
      `videotask: ${name} must be a number of milliseconds from ${min} to ${MAX_TIMER_MS}, not ${JSON.stringify(value) ?? String(value)}`,
    );
  }
  return value;
}

/** 1000 -> "1s", 1500 -> "1.5s", 60000 -> "60s". */
export function formatSeconds(ms: number): string {
  return `${Math.round(ms / 100) / 10}s`;
}

function isServiceError(err: unknown): err is grpc.ServiceError {
  return err instanceof Error && typeof (err as Partial<grpc.ServiceError>).code === 'number';
}

export class VideoTaskClient {
  readonly target: string;
  private readonly stub: VideoTaskServiceStub;

  constructor(options: VideoTaskClientOptions = {}) {
    this.target = options.target || process.env.VIDEOTASK_TARGET || DEFAULT_TARGET;
    const Service = loadService(options.protoPath);
    try {
      this.stub = new Service(this.target, options.credentials ?? grpc.credentials.createInsecure(), {
        // Long-lived streams: keep the connection verified while nothing flows.
        'grpc.keepalive_time_ms': 30_000,
        'grpc.keepalive_timeout_ms': 10_000,
        // Reconnect quickly after a sidecar restart.
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': 2_000,
        ...options.channelOptions,
      });
    } catch (err) {
      throw new VideoTaskConfigurationError(
        `videotask: cannot make a channel to ${this.target}: ${err instanceof Error ? err.message : String(err)}`,
        { cause: err },
      );
    }
  }

  /**
   * Streams the task until it is COMPLETED or FAILED and returns it (a failed
   * video is a result here, not an error). Rejects with a VideoTaskRpcError
   * for INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION and other final
   * codes, with UNAVAILABLE once the outage clock reaches `giveUpAfterMs`, and
   * with `signal.reason` when the signal aborts. The UNAVAILABLE message is
   * "sidecar at TARGET unreachable for Ns" when the sidecar was never reached
   * during the call (no stream answered and the channel never connected:
   * nothing listens, or it accepts connections but never speaks HTTP/2), else
   * "sidecar at TARGET unavailable after retries: <last code>: <last error>";
   * its `lastCode` is the status that ended the last stream. Rejects with a
   * VideoTaskSilenceError when no message came from the sidecar for
   * `maxSilentMs` (counted from the start of the call and from every
   * message, whatever the state: stream open, backoff, waiting for the
   * channel); the stream is cancelled. A NOT_FOUND while no status has been
   * reported (or given as `lastStatus`) and less than `notFoundRetryMs` has
   * passed since the call started is retried like UNAVAILABLE.
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
   * give-up point passes first) and opens a new stream. A stream that the
   * sidecar has not answered (no headers, no message) when the give-up point
   * comes, on a channel that is not connected, is cancelled and the call gives
   * up; one on a connected channel is left open (the sidecar is there and
   * waits for the vendor), and only a stream that was answered or ran on a
   * connected channel counts as healthy by lasting HEALTHY_STREAM_MS.
   */
  async await(id: string, options: WatchOptions = {}): Promise<VideoTask> {
    const initialBackoff = checkedMs('initialBackoffMs', options.initialBackoffMs, DEFAULT_INITIAL_BACKOFF_MS, 0);
    const maxBackoff = checkedMs('maxBackoffMs', options.maxBackoffMs, DEFAULT_MAX_BACKOFF_MS, 0);
    const giveUpAfter = checkedMs('giveUpAfterMs', options.giveUpAfterMs, DEFAULT_GIVE_UP_AFTER_MS, 1);
    const maxSilent = checkedMs('maxSilentMs', options.maxSilentMs, DEFAULT_MAX_SILENT_MS, 1);
    const notFoundRetry = checkedMs('notFoundRetryMs', options.notFoundRetryMs, DEFAULT_NOT_FOUND_RETRY_MS, 0);
    const callStart = Date.now();
    let backoff = initialBackoff;
    let outageStart = callStart;
    let lastReported: VideoTaskStatus = options.lastStatus ?? 'VIDEO_TASK_STATUS_UNSPECIFIED';
    const channel = this.stub.getChannel();
    const connected = () => channel.getConnectivityState(false) === grpc.connectivityState.READY;
    // Whether the sidecar was ever reached during this call: a stream was
    // answered, or the channel was seen connected.
    let reached = false;
    // The status that ended the last stream; null while none has ended with one.
    let lastCode: grpc.status | null = null;
    const giveUp = (details: string) => {
      // A NOT_FOUND still being retried (notFoundRetryMs) is what it is.
      if (lastCode === grpc.status.NOT_FOUND) return new VideoTaskRpcError(grpc.status.NOT_FOUND, details);
      if (reached) {
        const last = lastCode === null ? details : `${grpc.status[lastCode]}: ${details}`;
        return new VideoTaskRpcError(grpc.status.UNAVAILABLE, `sidecar at ${this.target} unavailable after retries: ${last}`, {
          lastCode,
        });
      }
      return new VideoTaskRpcError(
        grpc.status.UNAVAILABLE,
        `sidecar at ${this.target} unreachable for ${formatSeconds(Date.now() - outageStart)}`,
        { lastCode },
      );
    };

    // The silence bound: aborts everything (stream, backoff, channel wait)
    // with a VideoTaskSilenceError when no message came for maxSilentMs. It
    // restarts at every message. `abort` is it or the caller's signal.
    const silence = new AbortController();
    const silenceTimer = setTimeout(() => silence.abort(new VideoTaskSilenceError(this.target, maxSilent)), maxSilent);
    const abort = options.signal ? AbortSignal.any([options.signal, silence.signal]) : silence.signal;
    try {
      for (;;) {
        if (abort.aborted) throw abortReason(abort);
        const streamStart = Date.now();
        const call = this.stub.WatchVideoTask({ id });
        const cancel = () => call.cancel();
        abort.addEventListener('abort', cancel, { once: true });
        // Whether this stream was answered (headers or a message), or ran on a
        // connected channel: the sidecar was there.
        let answered = false;
        let streamReached = connected();
        call.once('metadata', () => (answered = true));
        // At the give-up point, a stream nobody answered on a channel that never
        // connected (nothing listens, or a peer that never speaks HTTP/2, where
        // grpc-js queues the call without a limit) is given up on.
        let unanswered = false;
        const watchdog = setTimeout(() => {
          if (answered) return;
          if (connected()) {
            streamReached = true;
            return;
          }
          unanswered = true;
          call.cancel();
        }, Math.max(0, outageStart + giveUpAfter - streamStart));
        let finalTask: VideoTask | undefined;
        let streamError: unknown;
        let callbackError: { error: unknown } | undefined;
        // Whether this stream reported a status not reported before.
        let reportedNewStatus = false;
        try {
          for await (const msg of call as AsyncIterable<VideoTaskEvent>) {
            answered = true;
            silenceTimer.refresh();
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
          clearTimeout(watchdog);
          abort.removeEventListener('abort', cancel);
        }
        if (answered || connected()) streamReached = true;
        if (streamReached) reached = true;
        if (callbackError) throw callbackError.error;
        if (finalTask) return finalTask;
        if (abort.aborted) throw abortReason(abort);
        if (unanswered) throw giveUp('a new stream got no answer');

        let code: grpc.status = grpc.status.OK;
        let details = 'the stream ended before the task finished';
        if (streamError !== undefined) {
          if (!isServiceError(streamError)) throw streamError;
          code = streamError.code;
          details = streamError.details || streamError.message;
        }
        lastCode = code;
        // NOT_FOUND for an id not seen yet, early in the call: the vendor may
        // not know a just-created id yet (the sidecar already confirmed the
        // 404 once); ask again with the reconnect backoff.
        const freshNotFound =
          code === grpc.status.NOT_FOUND &&
          lastReported === 'VIDEO_TASK_STATUS_UNSPECIFIED' &&
          Date.now() - callStart < notFoundRetry;
        if (!RETRYABLE_CODES.has(code) && !freshNotFound) throw new VideoTaskRpcError(code, details);

        const now = Date.now();
        if (reportedNewStatus || (streamReached && now - streamStart >= HEALTHY_STREAM_MS)) {
          // A healthy stream: the outage starts now.
          outageStart = now;
          backoff = initialBackoff;
        }
        const giveUpAt = outageStart + giveUpAfter;
        if (now >= giveUpAt) throw giveUp(details);
        // Exponential backoff with jitter, not past the give-up point.
        const delayMs = Math.max(0, Math.min(Math.round((0.5 + Math.random() * 0.5) * backoff), giveUpAt - now));
        options.onReconnect?.({ code, details, delayMs });
        await sleep(delayMs, abort);
        backoff = Math.min(backoff * 2, maxBackoff);
        // While the channel is in TRANSIENT_FAILURE an RPC fails at once: wait
        // for it to connect instead of stacking our backoff on the channel's.
        if (await this.waitForReady(giveUpAt, abort, options.onWaitForReady)) {
          if (connected()) reached = true;
        } else {
          throw giveUp(details);
        }
      }
    } finally {
      clearTimeout(silenceTimer);
    }
  }

  /**
   * Calls CreateVideoTask once and returns the task (QUEUED; or for a known
   * request id the task created for it before). The body is a JSON object,
   * sent as a google.protobuf.Struct (`toStruct`; a VideoTaskBodyError, and
   * nothing sent, when it is not JSON). First waits up to `giveUpAfterMs` for
   * the channel to be connected (a sidecar restarting next to the worker),
   * then rejects with a VideoTaskRpcError UNAVAILABLE "sidecar at TARGET
   * unreachable for Ns"; the call's own errors are VideoTaskRpcErrors with
   * the sidecar's code (INVALID_ARGUMENT, ABORTED, ALREADY_EXISTS,
   * RESOURCE_EXHAUSTED, PERMISSION_DENIED, UNAVAILABLE, DEADLINE_EXCEEDED,
   * ...). No retries here: the caller retries with the same request id.
   */
  async create(
    request: { requestId: string; family: string; body: { [key: string]: JsonValue } },
    options: CreateOptions = {},
  ): Promise<VideoTask> {
    const timeout = checkedMs('createTimeoutMs', options.createTimeoutMs, DEFAULT_CREATE_TIMEOUT_MS, 1);
    const giveUpAfter = checkedMs('giveUpAfterMs', options.giveUpAfterMs, DEFAULT_GIVE_UP_AFTER_MS, 1);
    const message: CreateVideoTaskRequest = {
      requestId: request.requestId,
      family: request.family,
      body: toStruct(request.body),
    };
    const jsonBytes = Buffer.byteLength(JSON.stringify(request.body));
    if (jsonBytes > MAX_SENT_BODY_BYTES) {
      throw new VideoTaskBodyError(`body is ${jsonBytes} bytes as JSON; the sidecar takes at most 64 KiB`);
    }
    const start = Date.now();
    if (!(await this.waitForReady(start + giveUpAfter, options.signal, options.onWaitForReady))) {
      throw new VideoTaskRpcError(
        grpc.status.UNAVAILABLE,
        `sidecar at ${this.target} unreachable for ${formatSeconds(Date.now() - start)}`,
        { lastCode: null },
      );
    }
    const signal = options.signal;
    return new Promise<VideoTask>((resolve, reject) => {
      if (signal?.aborted) return reject(abortReason(signal));
      const onAbort = () => {
        call.cancel();
        reject(abortReason(signal!));
      };
      // waitForReady: a connection that drops now is waited for (until the deadline), not failed at once.
      const metadata = new grpc.Metadata({ waitForReady: true });
      const call = this.stub.CreateVideoTask(message, metadata, { deadline: Date.now() + timeout }, (err, task) => {
        signal?.removeEventListener('abort', onAbort);
        if (signal?.aborted) return; // already rejected
        if (err) reject(new VideoTaskRpcError(err.code, err.details || err.message));
        else resolve(task!);
      });
      signal?.addEventListener('abort', onAbort, { once: true });
    });
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
