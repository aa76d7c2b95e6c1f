// The package's main entry (Node only: the gRPC client and the activities).
// Workflow code imports `videotask-temporal/workflow` instead (src/workflow.ts).
export { MAX_REQUEST_ID_LENGTH, createVideoTaskActivities, defaultRequestId } from './activities';
export type { VideoTaskActivities, VideoTaskActivitiesOptions } from './activities';
export {
  DEFAULT_CREATE_TIMEOUT_MS,
  DEFAULT_GIVE_UP_AFTER_MS,
  DEFAULT_INITIAL_BACKOFF_MS,
  DEFAULT_MAX_BACKOFF_MS,
  DEFAULT_MAX_SILENT_MS,
  DEFAULT_NOT_FOUND_RETRY_MS,
  DEFAULT_TARGET,
  PROTO_LOADER_OPTIONS,
  PROTO_RELATIVE_PATH,
  VideoTaskBodyError,
  VideoTaskClient,
  VideoTaskConfigurationError,
  VideoTaskRpcError,
  VideoTaskSilenceError,
  loadVideoTaskPackageDefinition,
  toStruct,
} from './client';
export type { CreateOptions, CreateVideoTaskRequest, ProtoStruct, ProtoValue, VideoTaskClientOptions, WatchOptions } from './client';
export * from './types';
