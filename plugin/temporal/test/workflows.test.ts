// The sample workflow is valid workflow code: it bundles with the worker's
// bundler (which rejects Node-only imports such as @grpc/grpc-js). No Temporal
// server is needed.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { DefaultLogger, bundleWorkflowCode } from '@temporalio/worker';
import { resolveProtoPath } from '../src/client';
import { repoRoot } from '../testing/harness';

describe('sample workflow', () => {
  it('bundles with bundleWorkflowCode', { timeout: 60_000 }, async () => {
    const { code } = await bundleWorkflowCode({
      workflowsPath: require.resolve('../src/workflows'),
      logger: new DefaultLogger('WARN'),
    });
    assert.match(code, /awaitVideoWorkflow/);
    assert.doesNotMatch(code, /@grpc\/grpc-js/);
  });
});

describe('proto', () => {
  it('is loaded from the repository, not a copy', () => {
    const proto = resolveProtoPath();
    assert.equal(proto, path.join(repoRoot(), 'proto', 'videotask', 'v1', 'video_task.proto'));
    assert.match(fs.readFileSync(proto, 'utf8'), /service VideoTaskService/);
  });
});
