// Static checks of the Kubernetes manifests: every example renders with
// kustomize, every rendered object is valid against the Kubernetes (or Argo
// Workflows) API schema with no unknown field, and the sidecar in each
// workload follows the deployment rules of the issue (native sidecar, probes,
// resources, security context, Secret file, grace period, metrics).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import {
  BASE_DIR, DEPLOY_DIR, EXAMPLES_DIR, FLEET_DIR, SIDECAR_ANNOTATION, SIDECAR_NAME,
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

// ---- Argo: the step that waits is bounded ----------------------------------

// What a step must allow beyond the CLI's --timeout before Kubernetes ends the
// pod: image pulls and the sidecar's start.
const ARGO_START_MARGIN_SECONDS = 60;
// The CLI's exit code for "sidecar unavailable", the only one worth a retry.
const EXIT_SIDECAR_UNAVAILABLE = 5;

// The --timeout of a `videotask watch` command line, in seconds (undefined: none).
function watchTimeoutSeconds(argv) {
  assert.ok(argv.includes("watch"), `not a videotask watch: ${argv.join(" ")}`);
  for (let i = 0; i < argv.length; i++) {
    const m = /^--?timeout(?:=(.*))?$/.exec(argv[i]);
    if (m) return durationSeconds(m[1] ?? argv[i + 1]);
  }
  return undefined;
}

test("argo example: the watch step is bounded (--timeout, activeDeadlineSeconds) and retries only exit 5", () => {
  const objects = render(join(EXAMPLES_DIR, "argo"));
  const steps = [];
  for (const obj of objects.filter((o) => o.kind === "WorkflowTemplate" || o.kind === "Workflow")) {
    for (const t of obj.spec.templates || []) {
      const argv = [...(t.container?.command || []), ...(t.container?.args || [])];
      if (argv[0] === "videotask" && argv.includes("watch")) steps.push({ where: `${obj.kind}/${obj.metadata.name} template ${t.name}`, t, argv });
    }
  }
  assert.ok(steps.length > 0, "no template runs videotask watch");
  for (const { where, t, argv } of steps) {
    // 1. The CLI stops by itself.
    const timeout = watchTimeoutSeconds(argv);
    assert.ok(timeout > 0, `${where}: videotask watch needs --timeout (else it waits forever for a video that never finishes)`);
    // 2. Kubernetes ends the pod if the CLI does not, but only after the CLI's own timeout.
    const deadline = Number(t.activeDeadlineSeconds);
    assert.ok(Number.isInteger(deadline) && deadline > 0, `${where}: set activeDeadlineSeconds`);
    assert.ok(deadline >= timeout + ARGO_START_MARGIN_SECONDS,
      `${where}: activeDeadlineSeconds ${deadline} must exceed --timeout (${timeout}s) by ${ARGO_START_MARGIN_SECONDS}s, so the CLI's exit code (4) decides`);
    // 3. Retries: a bounded number, and only for exit 5 (sidecar unavailable).
    const rs = t.retryStrategy;
    assert.ok(rs, `${where}: retryStrategy (retry exit 5, sidecar unavailable)`);
    const limit = Number(rs.limit);
    assert.ok(Number.isInteger(limit) && limit >= 1 && limit <= 10, `${where}: retryStrategy.limit must be 1-10, is ${rs.limit}`);
    assert.ok([undefined, "OnFailure", "Always", "OnError"].includes(rs.retryPolicy), `${where}: retryPolicy ${rs.retryPolicy}`);
    assert.equal(String(rs.expression ?? "").replace(/\s+/g, " ").trim(), `asInt(lastRetry.exitCode) == ${EXIT_SIDECAR_UNAVAILABLE}`,
      `${where}: retryStrategy.expression must retry exit ${EXIT_SIDECAR_UNAVAILABLE} only (1, 3, 4, 6 are final)`);
  }
});

// ---- Temporal: the grace period is sized from the worker's drain ------------

// The sample worker's shutdownGraceTime, in seconds.
function workerShutdownGraceSeconds() {
  const file = join(DEPLOY_DIR, "..", "plugin", "temporal", "src", "worker.ts");
  const m = /\bshutdownGraceTime:\s*'([^']*)'/.exec(readFileSync(file, "utf8"));
  assert.ok(m, "plugin/temporal/src/worker.ts sets no shutdownGraceTime: in-flight awaits are cancelled at SIGTERM");
  return durationSeconds(m[1]);
}

test("temporal example: terminationGracePeriodSeconds = the worker's shutdownGraceTime + the sidecar's drain + a margin", () => {
  const workerGrace = workerShutdownGraceSeconds();
  assert.ok(workerGrace > 0, "shutdownGraceTime must be positive");
  const objects = render(join(EXAMPLES_DIR, "temporal"));
  const deployment = objects.find((o) => o.kind === "Deployment");
  assert.ok(deployment, "no Deployment in examples/temporal");
  const spec = deployment.spec.template.spec;
  const grace = spec.terminationGracePeriodSeconds;
  const drain = durationSeconds(flagValue(sidecarOf(spec), "shutdown_grace") ?? "10s");
  const margin = grace - workerGrace - drain;
  assert.ok(margin >= 3 && margin <= 30,
    `terminationGracePeriodSeconds ${grace} should be shutdownGraceTime ${workerGrace}s + VIDEOTASK_SHUTDOWN_GRACE ${drain}s + 3-30s, not ${margin}s more`);

  // The comment above it states the same figures.
  const source = readFileSync(join(EXAMPLES_DIR, "temporal", "worker-deployment.yaml"), "utf8").split("\n");
  const at = source.findIndex((l) => /^\s*terminationGracePeriodSeconds:/.test(l));
  const comment = [];
  for (let i = at - 1; i >= 0 && /^\s*#/.test(source[i]); i--) comment.unshift(source[i].replace(/^\s*#\s?/, ""));
  const text = comment.join(" ");
  assert.match(text, new RegExp(`shutdownGraceTime \\(${workerGrace}s\\)`), `the comment must name the worker's shutdownGraceTime (${workerGrace}s)`);
  assert.match(text, new RegExp(`VIDEOTASK_SHUTDOWN_GRACE \\(${drain}s\\)`), `the comment must name VIDEOTASK_SHUTDOWN_GRACE (${drain}s)`);
  assert.match(text, new RegExp(`${workerGrace} \\+ ${drain} \\+ ${margin}s`), `the comment's sum must be ${workerGrace} + ${drain} + ${margin}s`);
});

test("every example runs the same sidecar (one source: base/sidecar.yaml; plus components/fleet/fleet.yaml in fleet mode)", () => {
  assert.ok(sidecarsSeen.length >= exampleDirs().length);
  const [first, ...rest] = sidecarsSeen.map((s) => ({ ...s, container: withoutFleet(s.container) }));
  for (const s of rest) {
    assert.deepEqual(s.container, first.container, `${s.example} ${s.where} differs from ${first.example} ${first.where}`);
  }
});

// ---- fleet mode (components/fleet) ------------------------------------------

// The examples that run in fleet mode: many replicas on one vendor key.
const FLEET_EXAMPLES = ["airflow", "temporal"];

// What components/fleet adds to the sidecar: its carrier's init container
// (env, volumeMounts) and volumes.
function fleetCarrier() {
  const docs = readYamlFile(join(FLEET_DIR, "fleet.yaml"));
  assert.equal(docs.length, 1);
  const spec = docs[0].template.spec;
  return { doc: docs[0], container: spec.initContainers.find((c) => c.name === SIDECAR_NAME), volumes: spec.volumes };
}

// The container without what components/fleet adds.
function withoutFleet(container) {
  const { container: fleet } = fleetCarrier();
  const envNames = new Set(fleet.env.map((e) => e.name));
  const mountNames = new Set(fleet.volumeMounts.map((m) => m.name));
  const out = { ...container, env: (container.env || []).filter((e) => !envNames.has(e.name)) };
  if (container.volumeMounts) out.volumeMounts = container.volumeMounts.filter((m) => !mountNames.has(m.name));
  return out;
}

test("components/fleet: its carrier is a valid local-config PodTemplate that sets the three fleet variables", async () => {
  const { doc, container, volumes } = fleetCarrier();
  assert.deepEqual(await validateObject(doc), []);
  assert.equal(doc.metadata.annotations["config.kubernetes.io/local-config"], "true");
  assert.deepEqual(container.env.map((e) => e.name).sort(),
    ["VIDEOTASK_FLEET_MAX_UPSTREAM_QPS", "VIDEOTASK_REDIS_PASSWORD_FILE", "VIDEOTASK_REDIS_URL"]);
  assert.equal(volumes.length, 1);
  // The base's sidecar stays single-pod: fleet settings come only from here.
  const base = readYamlFile(join(BASE_DIR, "sidecar.yaml"))[0].template.spec.initContainers[0];
  assert.ok(!(base.env || []).some((e) => /REDIS|FLEET/.test(e.name)), "base/sidecar.yaml must not set fleet variables");
});

for (const example of exampleDirs()) {
  test(`example ${example}: fleet mode ${FLEET_EXAMPLES.includes(example) ? "on every sidecar, configured by the rules" : "off"}; no Redis shipped`, () => {
    const objects = render(join(EXAMPLES_DIR, example));
    const pods = objects.filter((o) => o.metadata?.annotations?.[SIDECAR_ANNOTATION] === "enabled").flatMap(podSpecs);
    assert.ok(pods.length > 0);
    for (const pod of pods) {
      const c = sidecarOf(pod.spec);
      const inFleet = flagValue(c, "redis_url") !== undefined;
      // All or none: the fleet budget holds only if every sidecar that uses
      // the key takes its tokens from it.
      assert.equal(inFleet, FLEET_EXAMPLES.includes(example), `${pod.where}: fleet mode ${inFleet ? "on" : "off"}`);
      if (inFleet) checkFleet(pod, c);
    }
    // The user's Redis, not ours: nothing Redis-like is rendered.
    for (const obj of objects) {
      assert.ok(!/redis/i.test(obj.metadata?.name ?? ""), `${obj.kind}/${obj.metadata?.name}: the project ships no Redis`);
      const images = podSpecs(obj).flatMap((p) => [...(p.spec.initContainers || []), ...(p.spec.containers || [])]).map((c) => c.image);
      for (const image of images) assert.ok(!/redis/i.test(image ?? ""), `${obj.kind}/${obj.metadata?.name}: image ${image}: the project ships no Redis`);
    }
  });
}

function checkFleet({ where, spec }, c) {
  const at = `${where} ${SIDECAR_NAME}`;
  // One source: the values are those of components/fleet/fleet.yaml.
  const { container: fleet } = fleetCarrier();
  for (const e of fleet.env) {
    assert.deepEqual((c.env || []).filter((x) => x.name === e.name), [e], `${at}: ${e.name} differs from components/fleet/fleet.yaml`);
  }

  // The URL: redis://host:port[/db] or unix:PATH, and no password in it
  // (anyone who can read the pod spec would have it).
  const url = flagValue(c, "redis_url");
  assert.match(url, /^(redis:\/\/[^\s/@:]+:\d+(\/\d+)?|unix:\/\S+)$/, `${at}: VIDEOTASK_REDIS_URL ${url}: redis://host:port[/db] or unix:PATH, without a password`);
  if (url.startsWith("redis://")) {
    const u = new URL(url);
    assert.ok(!isLoopback(u.hostname), `${at}: Redis is shared by the fleet: not a loopback address`);
    const port = Number(u.port);
    assert.ok(port > 0 && port < 65536, `${at}: Redis port ${u.port}`);
  }

  // The password: a file from a whole-directory Secret mount (re-read on
  // rotation), never an env var or a literal.
  const pwFile = flagValue(c, "redis_password_file");
  assert.ok(pwFile, `${at}: VIDEOTASK_REDIS_PASSWORD_FILE`);
  const mount = (c.volumeMounts || []).find((m) => pwFile.startsWith(`${m.mountPath.replace(/\/$/, "")}/`));
  assert.ok(mount, `${at}: ${pwFile} is not under a volume mount`);
  assert.equal(mount.subPath, undefined, `${at}: subPath mounts are not updated when the Secret rotates`);
  assert.equal(mount.readOnly, true, `${at}: mount the Redis password read-only`);
  const volume = (spec.volumes || []).find((v) => v.name === mount.name);
  assert.ok(volume?.secret?.secretName, `${at}: volume ${mount.name} must be a Secret`);
  const key = pwFile.slice(mount.mountPath.replace(/\/$/, "").length + 1);
  if (volume.secret.items) assert.ok(volume.secret.items.some((i) => i.path === key), `${at}: Secret items lack ${key}`);
  // Its own mount: not the API key's directory, not nested in it.
  const keyMount = (c.volumeMounts || []).find((m) => flagValue(c, "api_key_file").startsWith(`${m.mountPath.replace(/\/$/, "")}/`));
  assert.notEqual(mount.name, keyMount.name, `${at}: the Redis password needs its own Secret volume`);
  for (const [a, b] of [[mount.mountPath, keyMount.mountPath], [keyMount.mountPath, mount.mountPath]]) {
    assert.ok(!`${a}/`.startsWith(`${b.replace(/\/$/, "")}/`), `${at}: mounts ${a} and ${b} overlap`);
  }
  assert.ok(!(c.env || []).some((e) => /PASSWORD/.test(e.name) && e.name !== "VIDEOTASK_REDIS_PASSWORD_FILE"), `${at}: a password in env`);

  // The fleet budget: a positive rate; the local cap stays set (it is what
  // a pod may send while Redis is unreachable).
  const fleetQps = Number(flagValue(c, "fleet_max_upstream_qps"));
  assert.ok(Number.isFinite(fleetQps) && fleetQps > 0, `${at}: VIDEOTASK_FLEET_MAX_UPSTREAM_QPS must be the vendor's per-key limit (> 0)`);
  const localQps = Number(flagValue(c, "max_upstream_qps"));
  assert.ok(localQps > 0 && localQps <= fleetQps,
    `${at}: VIDEOTASK_MAX_UPSTREAM_QPS (${localQps}) should not exceed the fleet's (${fleetQps}): one pod could then spend the whole budget`);
}

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
