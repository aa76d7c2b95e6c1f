// Sample worker: registers the videotask activities and the sample workflow.
//
//   TEMPORAL_ADDRESS=localhost:7233 VIDEOTASK_TARGET=127.0.0.1:50051 \
//     node dist/src/worker.js
import { NativeConnection, Worker } from '@temporalio/worker';
import { createVideoTaskActivities } from './activities';

export const TASK_QUEUE = process.env.VIDEOTASK_TASK_QUEUE || 'videotask';

async function main(): Promise<void> {
  const connection = await NativeConnection.connect({
    address: process.env.TEMPORAL_ADDRESS || 'localhost:7233',
  });
  try {
    const worker = await Worker.create({
      connection,
      namespace: process.env.TEMPORAL_NAMESPACE || 'default',
      taskQueue: TASK_QUEUE,
      workflowsPath: require.resolve('./workflows'),
      // The sidecar next to this worker; default $VIDEOTASK_TARGET, else 127.0.0.1:50051.
      activities: createVideoTaskActivities({ target: process.env.VIDEOTASK_TARGET }),
      // A workflow's cancellation reaches the activity in the answer to a
      // heartbeat the worker sends; send them at least every 20 s (default:
      // 80% of the heartbeat timeout, at most 60 s).
      maxHeartbeatThrottleInterval: '20s',
      // On SIGTERM the worker stops taking tasks and gives the running ones
      // this long to finish (default 0: awaitVideoTask would be cancelled at
      // once). Waits still running then are cancelled and retried on another
      // worker, resuming from their heartbeat details. The pod's
      // terminationGracePeriodSeconds must cover this plus the sidecar's drain
      // (deploy/kubernetes/examples/temporal, checked by deploy/validate).
      shutdownGraceTime: '30s',
    });
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
