// Sample workflow: awaits a video-generation task that something else created
// (this workflow creates none) and returns where the video is. Registered by
// the sample worker (src/worker.ts); other workers register it with
// `workflowsPath: require.resolve('videotask-temporal/workflows')` or by
// re-exporting it from their own workflows module.
//
// Only workflow-safe imports here: @temporalio/workflow, the dependency-free
// ./types, and `import type` of the activities.
import { proxyActivities } from '@temporalio/workflow';
import type { VideoTaskActivities } from './activities';
import { NON_RETRYABLE_VIDEO_TASK_FAILURE_TYPES, type VideoArchive } from './types';

const { awaitVideoTask } = proxyActivities<VideoTaskActivities>({
  // One attempt may wait as long as a video can take to render.
  startToCloseTimeout: '2h',
  // All attempts together: then the wait fails (a timeout failure) instead
  // of being retried forever while the sidecar stays unreachable.
  scheduleToCloseTimeout: '4h',
  // The activity heartbeats on every sidecar message and, when the stream is
  // silent (the sidecar waiting for the vendor) or reconnecting, on a timer
  // every third of this; the worker forwards them to Temporal at most every
  // min(0.8 x this, maxHeartbeatThrottleInterval) (20 s in the sample
  // worker). So a dead worker is noticed within a minute and the task is
  // awaited again elsewhere; a slow vendor never times it out.
  heartbeatTimeout: '1m',
  retry: {
    initialInterval: '5s',
    backoffCoefficient: 2,
    maximumInterval: '1m',
    // The activity already throws these as non-retryable; listing them keeps
    // that true even for a worker on an older version of the activity.
    nonRetryableErrorTypes: NON_RETRYABLE_VIDEO_TASK_FAILURE_TYPES,
  },
});

export interface AwaitedVideo {
  id: string;
  /** The vendor's URL; temporary, copy the video promptly (or use `archive`). */
  videoUrl: string;
  /** Seconds, when the vendor reports it. */
  durationSeconds?: number;
  /** The sidecar's durable copy (sidecar flag --archive_dir); null when not archived. */
  archive: VideoArchive | null;
  /** Why the sidecar could not archive the video; '' otherwise. */
  archiveError: string;
}

/** Awaits video task `taskId` and returns its video. Fails when the video fails. */
export async function awaitVideoWorkflow(taskId: string): Promise<AwaitedVideo> {
  const task = await awaitVideoTask(taskId);
  const video: AwaitedVideo = {
    id: task.id,
    videoUrl: task.videoUrl,
    archive: task.archive ?? null,
    archiveError: task.archiveError ?? '',
  };
  if (task.actualDuration) {
    video.durationSeconds = Number(task.actualDuration.seconds) + task.actualDuration.nanos / 1e9;
  }
  return video;
}
