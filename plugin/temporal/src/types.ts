// Types and constants of the videotask Temporal activity. This module has no
// dependencies, so workflow code may import it: it is the runtime part of the
// package's workflow-safe entry, `videotask-temporal/workflow` (src/workflow.ts).
// The activity and client modules may be imported by workflows only with
// `import type`.

/** videotask.v1.VideoTaskStatus, as the enum value's name. */
export type VideoTaskStatus =
  | 'VIDEO_TASK_STATUS_UNSPECIFIED'
  | 'VIDEO_TASK_STATUS_QUEUED'
  | 'VIDEO_TASK_STATUS_PROCESSING'
  | 'VIDEO_TASK_STATUS_COMPLETED'
  | 'VIDEO_TASK_STATUS_FAILED';

/** videotask.v1.WatchVideoTaskResponse.EventType, as the enum value's name. */
export type VideoTaskEventType =
  | 'EVENT_TYPE_UNSPECIFIED'
  | 'EVENT_TYPE_SNAPSHOT'
  | 'EVENT_TYPE_TRANSITION'
  | 'EVENT_TYPE_HEARTBEAT';

export const VIDEO_TASK_STATUSES: readonly VideoTaskStatus[] = [
  'VIDEO_TASK_STATUS_UNSPECIFIED',
  'VIDEO_TASK_STATUS_QUEUED',
  'VIDEO_TASK_STATUS_PROCESSING',
  'VIDEO_TASK_STATUS_COMPLETED',
  'VIDEO_TASK_STATUS_FAILED',
];

/** google.protobuf.Timestamp / Duration as loaded (int64 seconds as a decimal string). */
export interface ProtoSecondsNanos {
  seconds: string;
  nanos: number;
}

/**
 * videotask.v1.VideoTask as a plain object: proto field names in lowerCamelCase,
 * enums as their names, int64 as strings. Unset scalar fields hold their
 * proto3 defaults ('' / 0); unset message fields are null.
 */
export interface VideoTask {
  id: string;
  model: string;
  createTime: ProtoSecondsNanos | null;
  status: VideoTaskStatus;
  videoUrl: string;
  actualDuration: ProtoSecondsNanos | null;
  error: string;
  observeTime: ProtoSecondsNanos | null;
  /** The sidecar's durable copy (sidecar flag --archive_dir); null when not archived. */
  archive: VideoArchive | null;
  /** Why the sidecar could not archive the video; '' otherwise. */
  archiveError: string;
}

/** videotask.v1.VideoArchive: where the sidecar copied a completed video. */
export interface VideoArchive {
  /** `file:///PATH/ID.EXT` on the volume shared with the sidecar. */
  uri: string;
  /** SHA-256 of the file, lowercase hex. */
  sha256: string;
  /** int64 as a decimal string. */
  sizeBytes: string;
  contentType: string;
  archiveTime: ProtoSecondsNanos | null;
}

/** videotask.v1.WatchVideoTaskResponse as a plain object. */
export interface VideoTaskEvent {
  type: VideoTaskEventType;
  task: VideoTask;
  previousStatus: VideoTaskStatus;
}

/**
 * What `awaitVideoTask` passes to `heartbeat()`. A retried attempt reads it
 * from `Context.current().info.heartbeatDetails` and resumes from
 * `lastStatus`. Statuses are reported at least once: the worker sends
 * heartbeats throttled, so details recorded by Temporal can lag behind what
 * an attempt reported, and the retry of an attempt that died then reports
 * those statuses again (see the package README).
 */
export interface VideoTaskHeartbeatDetails {
  /** The awaited task id ('' while `generateVideo` is still creating it). */
  id: string;
  /** The last status reported (by a SNAPSHOT or TRANSITION); UNSPECIFIED before the first. */
  lastStatus: VideoTaskStatus;
  /**
   * What caused this heartbeat: the event's type; RECONNECTING while the
   * sidecar is away; WAITING when the stream is open but silent (the local
   * heartbeat timer, e.g. while the sidecar waits for its first poll).
   * `generateVideo` adds CREATING (the timer, while its CreateVideoTask call
   * is under way) and CREATED (sent once the task exists, with its id).
   */
  event: VideoTaskEventType | 'RECONNECTING' | 'WAITING' | 'CREATING' | 'CREATED';
  /**
   * `generateVideo` only: the request id its task was created with. A retried
   * attempt whose details carry its own request id and a task `id` waits for
   * that task without asking the sidecar to create it again. Absent for
   * `awaitVideoTask`.
   */
  requestId?: string;
}

/** Per-call options of `awaitVideoTask` (serializable, so a workflow may pass them). */
export interface AwaitVideoTaskOptions {
  /**
   * Give up with a retryable `VideoTaskSidecarUnavailable` failure once the
   * sidecar has been unhealthy for this long: measured from the start of the
   * call, or from the end of the last healthy stream (one that reported a
   * status not reported before, or stayed open at least 10 s). Streams that
   * deliver only a repeated SNAPSHOT or HEARTBEATs and then end do not
   * restart the clock. Default 60000.
   */
  giveUpAfterMs?: number;
  /**
   * First reconnect backoff; doubles per failed attempt, with jitter, and
   * returns to this value after a healthy stream. Default 200.
   */
  initialBackoffMs?: number;
  /** Cap of the reconnect backoff. Default 10000. */
  maxBackoffMs?: number;
  /**
   * End the attempt with a retryable `VideoTaskSidecarSilent` failure when
   * no message (SNAPSHOT, TRANSITION or HEARTBEAT) has come from the sidecar
   * for this long, whatever the state (stream open, reconnecting): the clock
   * starts with the call and restarts at every message. The sidecar sends a
   * HEARTBEAT every --heartbeat_interval (15 s) once it has polled the task,
   * so this bounds a wedged stream, and a vendor that has not answered a
   * first poll, well before `startToCloseTimeout`. Must be well above the
   * sidecar's heartbeat interval. Default 600000 (10 min).
   */
  maxSilentMs?: number;
  /**
   * A NOT_FOUND for an id not seen yet (no status reported in this call and
   * none resumed from heartbeat details) is retried, with the reconnect
   * backoff, until this long after the call started: the vendor may not know
   * a just-created id yet. After that, or for an id that was seen, NOT_FOUND
   * is final (`VideoTaskNotFound`). 0 turns the retry off. Default 10000.
   */
  notFoundRetryMs?: number;
}

/** A JSON value as `generateVideo` sends it in a request body (a google.protobuf.Value). */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/**
 * The argument of `generateVideo` (serializable: a workflow passes it). The
 * wait options are those of `awaitVideoTask`.
 */
export interface GenerateVideoInput extends AwaitVideoTaskOptions {
  /**
   * The vendor's model family, the path segment of its create endpoint
   * `POST {upstream}/{family}/videos`: 1-32 characters of [a-z0-9_] (e.g.
   * `videos`, `kyyvideo2`, `sora`).
   */
  family: string;
  /**
   * The family's own request body, a JSON object (at most 64 KiB as JSON),
   * sent to the vendor unchanged; integral numbers arrive as integers
   * (`"duration": 10`, never `10.0`). Numbers must be finite; integers beyond
   * 2^53 are not exact (JavaScript numbers and Struct numbers are doubles).
   */
  body: { [key: string]: JsonValue };
  /**
   * The idempotency key: 1-128 printable ASCII characters, one per video.
   * Default: `WORKFLOW_ID/RUN_ID/ACTIVITY_ID` of the calling activity (the
   * same for every retry of the activity, new for a new run), or
   * `sha256:HEX` of the three when that is not 1-128 printable ASCII (see
   * `defaultRequestId`).
   */
  requestId?: string;
  /**
   * Deadline of one CreateVideoTask call. The sidecar retries a vendor that
   * answers 429 or 503 (or cannot be reached) within it, up to its own limit
   * of 2 minutes. Default 150000.
   */
  createTimeoutMs?: number;
}

/** `ApplicationFailure.type` values thrown by `awaitVideoTask` and `generateVideo`. */
export const VideoTaskFailureTypes = {
  /** The video failed (status FAILED). Non-retryable; details[0] is the task. */
  FAILED: 'VideoTaskFailed',
  /** gRPC NOT_FOUND: the upstream does not know the id. Non-retryable. */
  NOT_FOUND: 'VideoTaskNotFound',
  /** gRPC INVALID_ARGUMENT: the id is not 1-128 of [A-Za-z0-9_-]. Non-retryable. */
  INVALID_ARGUMENT: 'VideoTaskInvalidArgument',
  /** gRPC FAILED_PRECONDITION: the upstream rejects the sidecar's API key. Non-retryable. */
  FAILED_PRECONDITION: 'VideoTaskFailedPrecondition',
  /**
   * The sidecar was unreachable (message "sidecar at ADDR unreachable for
   * Ns": never reached), or kept failing transiently, for giveUpAfterMs.
   * Retryable. `details[0].lastCode` is the status that ended the last
   * stream (e.g. RESOURCE_EXHAUSTED when the sidecar's watch limit was hit).
   */
  SIDECAR_UNAVAILABLE: 'VideoTaskSidecarUnavailable',
  /**
   * No message from the sidecar for `maxSilentMs` (a wedged stream, or a
   * vendor that has not answered a first poll). Retryable.
   */
  SIDECAR_SILENT: 'VideoTaskSidecarSilent',
  /**
   * gRPC UNIMPLEMENTED: the target is not a videotask sidecar (another gRPC
   * server on that port) or one without WatchVideoTask. Non-retryable.
   */
  UNIMPLEMENTED: 'VideoTaskUnimplemented',
  /** gRPC UNAUTHENTICATED, e.g. from a proxy or mesh in front of the sidecar. Non-retryable. */
  UNAUTHENTICATED: 'VideoTaskUnauthenticated',
  /** gRPC PERMISSION_DENIED, e.g. from a mesh authorization policy. Non-retryable. */
  PERMISSION_DENIED: 'VideoTaskPermissionDenied',
  /** Any other gRPC error (e.g. INTERNAL, UNKNOWN). Retryable. */
  RPC_ERROR: 'VideoTaskRpcError',
  /** The worker's videotask settings are unusable (e.g. a `protoPath` that does not exist). Non-retryable. */
  CONFIGURATION: 'VideoTaskConfigurationError',
  /**
   * `generateVideo`: the request was refused and nothing was created: by the
   * vendor (its message is included), by the sidecar's checks (request id,
   * family, body), or by the activity's own (a body that is not JSON). gRPC
   * INVALID_ARGUMENT. Non-retryable: the same request is refused again.
   */
  CREATE_REFUSED: 'VideoTaskCreateRefused',
  /**
   * `generateVideo`: the outcome is unknown (gRPC ABORTED): the create
   * request was sent and no usable answer came back, so the vendor may have
   * created (and billed) the video. The sidecar remembers this for the
   * request id and never sends it again; a retry gets the same answer.
   * Non-retryable: start a new run (or pass a new `requestId`) to accept a
   * possible duplicate.
   */
  CREATE_OUTCOME_UNKNOWN: 'VideoTaskCreateOutcomeUnknown',
  /**
   * `generateVideo`: the request id was used with another family or body
   * (gRPC ALREADY_EXISTS); nothing was sent. Non-retryable.
   */
  CREATE_CONFLICT: 'VideoTaskCreateConflict',
  /**
   * `generateVideo`: the sidecar's spend guard (--max_creates_per_hour) is
   * used up, or it remembers its maximum of keys (gRPC RESOURCE_EXHAUSTED);
   * nothing was sent. Retryable: a later attempt creates once the hour has
   * room, and the guard still caps what is spent. List it in
   * `nonRetryableErrorTypes` to fail at once instead.
   */
  CREATE_BUDGET_EXHAUSTED: 'VideoTaskCreateBudgetExhausted',
  /**
   * `generateVideo`: the sidecar does not allow creates on the address the
   * worker reaches it at (it listens beyond loopback without
   * --allow_remote_create), or a mesh policy refused the call (gRPC
   * PERMISSION_DENIED). Non-retryable: fix the deployment.
   */
  CREATE_PERMISSION_DENIED: 'VideoTaskCreatePermissionDenied',
  /**
   * `generateVideo`: no outcome yet and nothing known to be created (gRPC
   * UNAVAILABLE: the vendor answered 429 or 503, or could not be reached,
   * until the deadline; the sidecar is draining; or it runs in fleet mode,
   * which does not support creates yet; or DEADLINE_EXCEEDED: another call
   * with this request id is still creating). Retryable: a retry with the
   * same request id is safe.
   */
  CREATE_UNAVAILABLE: 'VideoTaskCreateUnavailable',
} as const;

/** The failure types a workflow should list in `RetryPolicy.nonRetryableErrorTypes`. */
export const NON_RETRYABLE_VIDEO_TASK_FAILURE_TYPES: string[] = [
  VideoTaskFailureTypes.FAILED,
  VideoTaskFailureTypes.NOT_FOUND,
  VideoTaskFailureTypes.INVALID_ARGUMENT,
  VideoTaskFailureTypes.FAILED_PRECONDITION,
  VideoTaskFailureTypes.UNIMPLEMENTED,
  VideoTaskFailureTypes.UNAUTHENTICATED,
  VideoTaskFailureTypes.PERMISSION_DENIED,
  VideoTaskFailureTypes.CONFIGURATION,
  VideoTaskFailureTypes.CREATE_REFUSED,
  VideoTaskFailureTypes.CREATE_OUTCOME_UNKNOWN,
  VideoTaskFailureTypes.CREATE_CONFLICT,
  VideoTaskFailureTypes.CREATE_PERMISSION_DENIED,
];

/**
 * `details[0]` of the failures made from a gRPC status (every type but
 * `VideoTaskFailed`, `VideoTaskSidecarSilent` and `VideoTaskConfigurationError`).
 */
export interface VideoTaskRpcFailureDetails {
  /** The gRPC status code's name, e.g. 'NOT_FOUND'; 'UNAVAILABLE' when the activity gave up reconnecting. */
  code: string;
  /** The status message. */
  message: string;
  /**
   * For `VideoTaskSidecarUnavailable`: the status that ended the last stream
   * before the activity gave up ('RESOURCE_EXHAUSTED', 'DEADLINE_EXCEEDED',
   * 'UNAVAILABLE', 'OK' for a stream that ended without a final status, ...),
   * null when no stream got an answer. Absent for the other types.
   */
  lastCode?: string | null;
}

/** `details[0]` of a `VideoTaskSidecarSilent` failure. */
export interface VideoTaskSilenceDetails {
  /** How long nothing came from the sidecar (the `maxSilentMs` in force). */
  silentMs: number;
  /** The last status reported, as in the heartbeat details. */
  lastStatus: VideoTaskStatus;
}
