// A workflow interceptor module for replay tests (bundled into the workflow
// code with bundleWorkflowCode's workflowInterceptorModules): reports, through
// the `replayCapture` sink, the options and arguments of every activity the workflow
// schedules and the workflow's result, so that a test sees what the real
// workflow code did in the real workflow runtime while replaying a history.
// The test registers the sink with `callDuringReplay: true` (sinks are not
// called during replay otherwise: sdk-typescript packages/worker/src/sinks.ts).
import {
  proxySinks,
  type ActivityOptions,
  type Sinks,
  type WorkflowInterceptorsFactory,
} from '@temporalio/workflow';

export interface ReplayCaptureSinks extends Sinks {
  replayCapture: {
    activity(activityType: string, options: ActivityOptions, args: unknown[]): void;
    result(result: unknown): void;
  };
}

const { replayCapture } = proxySinks<ReplayCaptureSinks>();

export const interceptors: WorkflowInterceptorsFactory = () => ({
  inbound: [
    {
      async execute(input, next) {
        const result = await next(input);
        replayCapture.result(result);
        return result;
      },
    },
  ],
  outbound: [
    {
      scheduleActivity(input, next) {
        replayCapture.activity(input.activityType, input.options, input.args);
        return next(input);
      },
    },
  ],
});
