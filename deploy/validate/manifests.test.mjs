// Static checks of the Kubernetes manifests: every example renders with
// kustomize, every rendered object is valid against the Kubernetes (or Argo
// Workflows) API schema with no unknown field, and the sidecar in each
// workload follows the deployment rules of the issue (native sidecar, probes,
// resources, security context, Secret file, grace period, metrics).
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, test } from "node:test";
import {
  BASE_DIR, EXAMPLES_DIR, SIDECAR_ANNOTATION, SIDECAR_NAME,
  bytesOf, durationSeconds, exampleDirs, flagValue, hostPort, isLoopback,
  podSpecs, readYamlFile, render, sidecarOf, validateObject,
} from "./lib.mjs";

// Benchmark figure (BENCHMARKS.md): about 18 KiB of RSS per open watch,
// rounded up.
const BYTES_PER_WATCH = 20 * 1024;
// The process's own memory before any watch, generously.
const BASELINE_BYTES = 48 * 1024 * 1024;
// Kubernetes' default terminationGracePeriodSeconds.
const DEFAULT_GRACE = 30;

test("the sidecar source (base/sidecar.yaml) is a valid PodTemplate", async () => {
  const docs = readYamlFile(join(BASE_DIR, "sidecar.yaml"));
  assert.equal(docs.length, 1);
  assert.deepEqual(await validateObject(docs[0]), []);
  assert.equal(docs[0].metadata.annotations["config.kubernetes.io/local-config"], "true",
    "the carrier must be local-config so kustomize never outputs it");
});

test("every example directory is listed", () => {
  assert.deepEqual(exampleDirs(), ["airflow", "airflow-pod-template", "argo", "temporal"]);
});

const sidecarsSeen = [];

for (const example of exampleDirs()) {
  describe(`example ${example}`, () => {
    let objects;
    test("renders with kustomize", () => {
      objects = render(join(EXAMPLES_DIR, example));
      assert.ok(objects.length > 0, "nothing rendered");
    });

    test("every object is valid against the API schema", async () => {
      const problems = [];
      for (const obj of objects) problems.push(...(await validateObject(obj)));
      assert.deepEqual(problems, []);
    });

    test("no carrier object is left in the output", () => {
      for (const obj of objects) {
        assert.notEqual(obj.kind, "PodTemplate", `${obj.kind}/${obj.metadata.name} leaked`);
        assert.equal(obj.metadata?.annotations?.["config.kubernetes.io/local-config"], undefined);
      }
    });

    test("every opted-in workload runs the sidecar, configured by the rules", () => {
      const optedIn = objects.filter((o) => o.metadata?.annotations?.[SIDECAR_ANNOTATION] === "enabled");
      assert.ok(optedIn.length > 0, "no workload carries the annotation");
      let pods = 0;
      for (const obj of optedIn) {
        for (const pod of podSpecs(obj)) {
          pods++;
          checkPod(pod);
          sidecarsSeen.push({ example, where: pod.where, container: sidecarOf(pod.spec) });
        }
      }
      assert.ok(pods > 0, "no pod spec found in the opted-in workloads");
    });
  });
}

test("every example runs the same sidecar (one source: base/sidecar.yaml)", () => {
  assert.ok(sidecarsSeen.length >= exampleDirs().length);
  const [first, ...rest] = sidecarsSeen;
  for (const s of rest) {
    assert.deepEqual(s.container, first.container, `${s.example} ${s.where} differs from ${first.example} ${first.where}`);
  }
});

function checkPod({ where, spec, podMeta, grace }) {
  const c = sidecarOf(spec);
  assert.ok(c, `${where}: no ${SIDECAR_NAME} container`);
  const at = `${where} ${SIDECAR_NAME}`;

  // Native sidecar.
  assert.ok((spec.initContainers || []).includes(c), `${at}: must be an init container`);
  assert.equal(c.restartPolicy, "Always", `${at}: native sidecar needs restartPolicy: Always`);
  const workers = spec.containers || [];
  assert.ok(workers.length > 0, `${where}: no worker container`);

  // Image: a registry-qualified, pinned tag.
  assert.match(c.image, /^[^:]+\/[^:]+:[^:]+$/, `${at}: image must have a registry path and a tag`);
  assert.doesNotMatch(c.image, /:latest$/, `${at}: pin the image tag`);

  // gRPC stays on loopback; workers find it at 127.0.0.1:50051.
  const listen = flagValue(c, "listen");
  assert.equal(listen, "127.0.0.1:50051", `${at}: --listen`);

  // Probes: exec `videotask health` against the listen address.
  for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
    const p = c[probe];
    assert.ok(p?.exec?.command, `${at}: ${probe} must be an exec probe`);
    const cmd = p.exec.command;
    assert.equal(cmd[0], "videotask", `${at}: ${probe} runs the CLI`);
    assert.ok(cmd.includes("health"), `${at}: ${probe} runs videotask health`);
    assert.ok(cmd.includes(`--target=${listen}`), `${at}: ${probe} targets ${listen}`);
    assert.ok((p.timeoutSeconds || 1) >= 2, `${at}: ${probe} timeoutSeconds too short for a gRPC call`);
  }
  const drain = durationSeconds(flagValue(c, "shutdown_grace") ?? "10s");
  const live = c.livenessProbe;
  assert.ok((live.periodSeconds || 10) * (live.failureThreshold || 3) > drain,
    `${at}: liveness must not restart a sidecar that drains (NOT_SERVING) for ${drain}s`);

  // Resources from the benchmark figures.
  const r = c.resources || {};
  assert.ok(r.requests?.cpu, `${at}: cpu request`);
  assert.ok(r.requests?.memory, `${at}: memory request`);
  assert.ok(r.limits?.memory, `${at}: memory limit`);
  const maxWatches = Number(flagValue(c, "max_watches") ?? 100000);
  assert.ok(maxWatches * BYTES_PER_WATCH + BASELINE_BYTES <= bytesOf(r.limits.memory),
    `${at}: ${maxWatches} watches x 20 KiB do not fit the ${r.limits.memory} memory limit: lower VIDEOTASK_MAX_WATCHES or raise the limit`);

  // Security context.
  const sc = c.securityContext || {};
  assert.equal(sc.runAsNonRoot, true, `${at}: runAsNonRoot`);
  assert.ok(sc.runAsUser > 0, `${at}: runAsUser must be a non-root UID`);
  assert.equal(sc.allowPrivilegeEscalation, false, `${at}: allowPrivilegeEscalation`);
  assert.equal(sc.readOnlyRootFilesystem, true, `${at}: readOnlyRootFilesystem`);
  assert.notEqual(sc.privileged, true, `${at}: privileged`);
  assert.ok(sc.capabilities?.drop?.includes("ALL"), `${at}: drop ALL capabilities`);
  assert.ok(!(sc.capabilities?.add?.length), `${at}: adds capabilities`);

  // The API key: a file from a whole-directory Secret mount (rotation
  // without restart), never a literal in the manifest.
  assert.ok(!(c.env || []).some((e) => e.name === "VIDEOTASK_API_KEY"), `${at}: VIDEOTASK_API_KEY in the manifest`);
  const keyFile = flagValue(c, "api_key_file");
  assert.ok(keyFile, `${at}: no api_key_file`);
  const mount = (c.volumeMounts || []).find((m) => keyFile.startsWith(`${m.mountPath.replace(/\/$/, "")}/`));
  assert.ok(mount, `${at}: ${keyFile} is not under a volume mount`);
  assert.equal(mount.subPath, undefined, `${at}: subPath mounts are not updated when the Secret rotates`);
  assert.equal(mount.readOnly, true, `${at}: mount the key read-only`);
  const volume = (spec.volumes || []).find((v) => v.name === mount.name);
  assert.ok(volume?.secret?.secretName, `${at}: volume ${mount.name} must be a Secret`);
  const key = keyFile.slice(mount.mountPath.replace(/\/$/, "").length + 1);
  if (volume.secret.items) {
    assert.ok(volume.secret.items.some((i) => i.path === key), `${at}: Secret items lack ${key}`);
  }
  assert.equal(key, "api-key", `${at}: the README's Secret has the key api-key`);
  assert.ok(!(c.env || []).some((e) => e.valueFrom?.secretKeyRef), `${at}: secrets in env do not rotate`);

  // Configuration by environment variables.
  assert.ok((c.env || []).filter((e) => e.name.startsWith("VIDEOTASK_")).length >= 5, `${at}: configure by env`);
  const upstream = flagValue(c, "upstream_url");
  assert.match(upstream, /^https:\/\//, `${at}: the upstream must be HTTPS`);
  assert.notEqual(flagValue(c, "allow_insecure_upstream"), "true", `${at}: insecure upstream`);

  // Grace period covers the sidecar's drain after the worker's exit.
  const g = grace ?? DEFAULT_GRACE;
  assert.ok(g >= drain + 5, `${where}: terminationGracePeriodSeconds ${g} < shutdown_grace ${drain}s + 5s`);

  // Metrics: reachable by Prometheus and announced by the usual annotations.
  const metrics = hostPort(flagValue(c, "metrics_listen"));
  assert.ok(metrics, `${at}: metrics_listen must be host:port`);
  assert.ok(!isLoopback(metrics.host), `${at}: Prometheus cannot scrape a loopback metrics_listen`);
  const port = (c.ports || []).find((p) => p.name === "metrics");
  assert.equal(port?.containerPort, metrics.port, `${at}: containerPort "metrics" must be the metrics_listen port`);
  const ann = podMeta?.annotations || {};
  assert.equal(ann["prometheus.io/scrape"], "true", `${where}: prometheus.io/scrape`);
  assert.equal(ann["prometheus.io/port"], String(metrics.port), `${where}: prometheus.io/port`);
  assert.equal(ann["prometheus.io/path"], "/metrics", `${where}: prometheus.io/path`);

  // The gRPC port is deliberately not declared (loopback only).
  assert.ok(!(c.ports || []).some((p) => p.containerPort === hostPort(listen).port), `${at}: do not expose the gRPC port`);
}
