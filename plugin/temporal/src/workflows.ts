// Sample workflows: awaitVideoWorkflow awaits a video-generation task that
// something else created and returns where the video is; generateVideoWorkflow
// creates the video through the sidecar (exactly once per run: the request id
// is the run's and the activity's) and returns the same. Registered by the
// sample worker (src/worker.ts); other workers register them with
// `workflowsPath: require.resolve('videotask-temporal/workflows')` or by
// re-exporting them from their own workflows module.
//
// Only workflow-safe imports here: @temporalio/workflow, the dependency-free
// ./types, and `import type` of the activities.
import { proxyActivities } from '@temporalio/workflow';
import type { VideoTaskActivities } from './activities';
import { NON_RETRYABLE_VIDEO_TASK_FAILURE_TYPES, type GenerateVideoInput, type VideoArchive, type VideoTask } from './types';

const { awaitVideoTask, generateVideo } = proxyActivities<VideoTaskActivities>({
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
    // that true even for a worker on an older version of the activity. For
    // generateVideo they include a refused create and an unknown outcome
    // (the vendor may have created the video: never created twice); a used-up
    // spend guard (VideoTaskCreateBudgetExhausted) is retried with this backoff.
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
  return awaitedVideo(await awaitVideoTask(taskId));
}

/** The argument of generateVideoWorkflow: what to create (see GenerateVideoInput). */
export type GenerateVideoRequest = Pick<GenerateVideoInput, 'family' | 'body' | 'requestId'>;

/**
 * Creates a video (the vendor's `family` endpoint with `body`) and returns it
 * once COMPLETED. The request id defaults to this run's workflow id, run id
 * and the activity's id: every retry of the activity reuses it, so the video
 * is created once; a new run creates a new one. Fails when the create is
 * refused, its outcome is unknown, or the video fails.
 */
export async function generateVideoWorkflow(request: GenerateVideoRequest): Promise<AwaitedVideo> {
  return awaitedVideo(await generateVideo(request));
}

function awaitedVideo(task: VideoTask): AwaitedVideo {
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
