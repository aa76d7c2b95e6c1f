// The sample workflow is valid workflow code: it bundles with the worker's
// bundler (which rejects Node-only imports such as @grpc/grpc-js). No Temporal
// server is needed. And the API embedded in the package is the repository's.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import * as protoLoader from '@grpc/proto-loader';
import { DefaultLogger, bundleWorkflowCode } from '@temporalio/worker';
import { PROTO_LOADER_OPTIONS, PROTO_RELATIVE_PATH, loadVideoTaskPackageDefinition } from '../src/client';
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

describe('the API embedded in the package', () => {
  // The descriptor is made from the repository's proto at build time
  // (scripts/embed-proto.js): it must encode and decode every message exactly
  // as the proto itself does.
  it('matches the repository\'s video_task.proto', () => {
    const protoFile = path.join(repoRoot(), PROTO_RELATIVE_PATH);
    assert.match(fs.readFileSync(protoFile, 'utf8'), /service VideoTaskService/);
    const fromProto = protoLoader.loadSync(protoFile, PROTO_LOADER_OPTIONS);
    const embedded = loadVideoTaskPackageDefinition();
    assert.deepEqual(Object.keys(embedded).sort(), Object.keys(fromProto).sort());
    const methods = (def: protoLoader.PackageDefinition) =>
      def['videotask.v1.VideoTaskService'] as protoLoader.ServiceDefinition;
    assert.deepEqual(Object.keys(methods(embedded)).sort(), ['GetVideoTask', 'WatchVideoTask']);
    const task = {
      id: 'proj_1', model: 'videos', createTime: { seconds: '1761635478', nanos: 5 },
      status: 'VIDEO_TASK_STATUS_COMPLETED', videoUrl: 'https://cdn.invalid/v.mp4',
      actualDuration: { seconds: '8', nanos: 250 }, error: 'e', observeTime: { seconds: '1761635600', nanos: 1 },
      archive: {
        uri: 'file:///videos/proj_1.mp4', sha256: 'ab'.repeat(32), sizeBytes: '5242880',
        contentType: 'video/mp4', archiveTime: { seconds: '1761635700', nanos: 0 },
      },
      archiveError: '',
    };
    const samples: Record<string, [string, object][]> = {
      WatchVideoTask: [
        ['request', { id: 'proj_1' }],
        ['response', { type: 'EVENT_TYPE_TRANSITION', task, previousStatus: 'VIDEO_TASK_STATUS_PROCESSING' }],
      ],
      GetVideoTask: [
        ['request', { id: 'proj_1' }],
        ['response', task],
      ],
    };
    for (const [method, cases] of Object.entries(samples)) {
      const a = methods(embedded)[method];
      const b = methods(fromProto)[method];
      assert.equal(a.path, b.path);
      assert.equal(a.responseStream, b.responseStream);
      for (const [kind, message] of cases) {
        const ser = kind === 'request' ? [a.requestSerialize, b.requestSerialize] : [a.responseSerialize, b.responseSerialize];
        const de = kind === 'request' ? [a.requestDeserialize, b.requestDeserialize] : [a.responseDeserialize, b.responseDeserialize];
        const bytes = ser[1](message);
        assert.ok(bytes.length > 0);
        assert.deepEqual(ser[0](message), bytes, `${method} ${kind} encodes alike`);
        assert.deepEqual(de[0](bytes), de[1](bytes), `${method} ${kind} decodes alike`);
        assert.deepEqual(de[0](bytes), message, `${method} ${kind} round-trips`);
      }
    }
  });
});
