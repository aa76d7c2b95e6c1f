// Sample worker: registers the videotask activities and the sample workflow.
//
//   TEMPORAL_ADDRESS=localhost:7233 VIDEOTASK_TARGET=127.0.0.1:50051 \
//     node dist/src/worker.js
//
// Needs @temporalio/worker, an optional peer dependency of the package (the
// activities and workflows do not).
import { NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import { createVideoTaskActivities } from './activities';

/** The task queue of the sample worker and of deploy/kubernetes/examples/temporal. */
export const DEFAULT_TASK_QUEUE = 'videotask';

/**
 * The sample worker's options, all but the connection: environment
 * VIDEOTASK_TASK_QUEUE (default 'videotask'), TEMPORAL_NAMESPACE (default
 * 'default'), VIDEOTASK_TARGET (the sidecar; default 127.0.0.1:50051).
 */
export function sampleWorkerOptions(env: NodeJS.ProcessEnv = process.env): Omit<WorkerOptions, 'connection'> {
  return {
    namespace: env.TEMPORAL_NAMESPACE || 'default',
    taskQueue: env.VIDEOTASK_TASK_QUEUE || DEFAULT_TASK_QUEUE,
    workflowsPath: require.resolve('./workflows'),
    // The sidecar next to this worker; default $VIDEOTASK_TARGET, else 127.0.0.1:50051.
    activities: createVideoTaskActivities({ target: env.VIDEOTASK_TARGET }),
    // Every wait holds an activity slot for as long as the video takes (the
    // SDK's default is 100 slots). A wait is cheap: an idle gRPC stream on
    // the one HTTP/2 connection to the sidecar plus a timer, no thread and
    // no polling of its own (the sidecar polls each task once however many
    // wait for it). What grows with the number of waits is Temporal traffic
    // (each forwards a heartbeat at most every maxHeartbeatThrottleInterval:
    // 1000 waits, 50 heartbeats a second) and the vendor's rate budget (see
    // the package README, "Worker sizing"). Run other activities on another
    // task queue so that waits do not starve them of slots, or the reverse.
    maxConcurrentActivityTaskExecutions: 1000,
    // The worker forwards an activity's heartbeats to Temporal at most every
    // min(0.8 x heartbeatTimeout, this) (default 60 s), and Temporal delivers
    // a workflow's cancellation to the activity only in the answer to one:
    // so with the sample workflow's 1 m heartbeat timeout, Temporal sees a
    // heartbeat every 20 s instead of 48 s (two may be lost before it times
    // the attempt out) and a cancellation arrives within about 20 s.
    maxHeartbeatThrottleInterval: '20s',
    // On SIGTERM the worker stops taking tasks and gives the running ones
    // this long to finish (default 0: awaitVideoTask would be cancelled at
    // once). Waits still running then are cancelled and retried on another
    // worker, resuming from their heartbeat details. The pod's
    // terminationGracePeriodSeconds must cover this plus the sidecar's drain
    // (deploy/kubernetes/examples/temporal, checked by deploy/validate).
    shutdownGraceTime: '30s',
  };
}

async function main(): Promise<void> {
  const connection = await NativeConnection.connect({
    address: process.env.TEMPORAL_ADDRESS || 'localhost:7233',
  });
  try {
    const worker = await Worker.create({ connection, ...sampleWorkerOptions() });
    await worker.run();
  } finally {
    await connection.close();
  }
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
