// The workflow-safe entry, `videotask-temporal/workflow`: the failure types,
// statuses and the other constants and types, nothing that loads Node
// modules. Temporal bundles workflow code with webpack and refuses Node
// built-ins and @temporalio/activity in it (sdk-typescript
// packages/worker/src/workflow/bundler.ts, `disallowedModules`), so workflow
// code must not import the package's main entry (the gRPC client needs
// node:fs, node:path, @grpc/grpc-js). The type-only exports below are erased
// at compile time.
export * from './types';
export type { VideoTaskActivities } from './activities';
export type { AwaitedVideo, GenerateVideoRequest } from './workflows';
