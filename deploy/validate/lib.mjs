// Shared helpers of the deploy tests: render the kustomizations, validate
// objects against the Kubernetes / Argo Workflows API schemas, and read the
// sidecar's settings out of the rendered manifests.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

export const DEPLOY_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const KUBE_DIR = join(DEPLOY_DIR, "kubernetes");
export const BASE_DIR = join(KUBE_DIR, "base");
export const EXAMPLES_DIR = join(KUBE_DIR, "examples");
export const FLEET_DIR = join(KUBE_DIR, "components", "fleet");
export const SIDECAR_NAME = "videotask-sidecar";
export const SIDECAR_ANNOTATION = "videotask.dev/sidecar";

// Every example: a directory under examples/ with a kustomization.yaml.
export function exampleDirs() {
  return readdirSync(EXAMPLES_DIR, { withFileTypes: true })
    .filter((d) => d.isDirectory() && existsSync(join(EXAMPLES_DIR, d.name, "kustomization.yaml")))
    .map((d) => d.name)
    .sort();
}

export function parseYamlDocs(text, what) {
  const docs = parseAllDocuments(text);
  const out = [];
  for (const doc of docs) {
    if (doc.errors.length) {
      throw new Error(`${what}: YAML error: ${doc.errors.map((e) => e.message).join("; ")}`);
    }
    const js = doc.toJS();
    if (js !== null && js !== undefined) out.push(js);
  }
  return out;
}

// `kubectl kustomize DIR`, parsed. KUBECTL overrides the binary.
export function render(dir) {
  const kubectl = process.env.KUBECTL || "kubectl";
  const res = spawnSync(kubectl, ["kustomize", dir], { encoding: "utf8", maxBuffer: 64 << 20 });
  if (res.error) throw new Error(`${kubectl} kustomize ${dir}: ${res.error.message}`);
  if (res.status !== 0) throw new Error(`${kubectl} kustomize ${dir} failed:\n${res.stderr}`);
  return parseYamlDocs(res.stdout, dir);
}

export function readYamlFile(path) {
  return parseYamlDocs(readFileSync(path, "utf8"), path);
}

// ---- schema validation -------------------------------------------------

const MODEL_MODULES = {
  v1: "kubernetes-models/v1",
  "apps/v1": "kubernetes-models/apps/v1",
  "batch/v1": "kubernetes-models/batch/v1",
  "argoproj.io/v1alpha1": "@kubernetes-models/argo-workflows/argoproj.io/v1alpha1",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
};

async function modelClass(apiVersion, kind) {
  const mod = MODEL_MODULES[apiVersion];
  if (!mod) return null;
  const m = await import(mod);
  return m[kind] || null;
}

// Wraps a JSON value so that we learn which object keys the schema validator
// looked at. The validators are compiled from the OpenAPI schemas: for an
// object with declared properties they read exactly those properties; for a
// map (labels, resources.limits) they enumerate the keys. A key of a
// declared-properties object that the validator never read is a field the
// API does not have: the API server would reject it (kubectl's default
// strict field validation) or silently drop it.
function track(value, path, records) {
  if (Array.isArray(value)) return value.map((v, i) => track(v, `${path}[${i}]`, records));
  if (value === null || typeof value !== "object") return value;
  const target = {};
  for (const [k, v] of Object.entries(value)) target[k] = track(v, `${path}.${k}`, records);
  const rec = { path, target, read: new Set(), enumerated: false };
  records.push(rec);
  return new Proxy(target, {
    get(t, k, r) {
      if (typeof k === "string") rec.read.add(k);
      return Reflect.get(t, k, r);
    },
    has(t, k) {
      if (typeof k === "string") rec.read.add(k);
      return Reflect.has(t, k);
    },
    ownKeys(t) {
      rec.enumerated = true;
      return Reflect.ownKeys(t);
    },
  });
}

// Validates one object against its API schema. Returns a list of problems
// (empty when valid).
export async function validateObject(obj) {
  const { apiVersion, kind } = obj || {};
  const where = `${kind}/${obj?.metadata?.name}`;
  const cls = await modelClass(apiVersion, kind);
  if (!cls || typeof cls.prototype.validate !== "function") {
    return [`${where}: no schema known for apiVersion ${apiVersion} kind ${kind}`];
  }
  const problems = [];
  const records = [];
  const tracked = track(obj, "", records);
  try {
    cls.prototype.validate.call(tracked);
  } catch (err) {
    problems.push(`${where}: ${err.message}`);
  }
  for (const rec of records) {
    if (rec.enumerated || rec.read.size === 0) continue;
    for (const key of Object.keys(rec.target)) {
      if (!rec.read.has(key)) problems.push(`${where}: unknown field ${`${rec.path}.${key}`.replace(/^\./, "")}`);
    }
  }
  return problems;
}

// ---- the sidecar in rendered manifests ----------------------------------

// The pod spec and pod metadata of each workload, with where they are.
export function podSpecs(obj) {
  const out = [];
  const name = `${obj.kind}/${obj.metadata?.name}`;
  switch (obj.kind) {
    case "Pod":
      out.push({ where: name, spec: obj.spec, podMeta: obj.metadata, grace: obj.spec?.terminationGracePeriodSeconds });
      break;
    case "Deployment":
    case "StatefulSet":
    case "DaemonSet":
    case "Job":
    case "ReplicaSet":
      out.push({
        where: name,
        spec: obj.spec?.template?.spec,
        podMeta: obj.spec?.template?.metadata,
        grace: obj.spec?.template?.spec?.terminationGracePeriodSeconds,
      });
      break;
    case "WorkflowTemplate":
    case "Workflow":
      // Argo: each template that runs a pod; volumes and pod metadata are
      // workflow-wide. Argo leaves the pod's grace period at the default.
      for (const t of obj.spec?.templates || []) {
        if (!t.container && !t.script && !t.containerSet) continue;
        out.push({
          where: `${name} template ${t.name}`,
          spec: { initContainers: t.initContainers, containers: [t.container || t.script].filter(Boolean), volumes: obj.spec.volumes },
          podMeta: obj.spec.podMetadata,
          grace: undefined,
          argoTemplate: t,
        });
      }
      break;
    default:
      break;
  }
  return out;
}

export function sidecarOf(spec) {
  return (spec?.initContainers || []).find((c) => c.name === SIDECAR_NAME)
    || (spec?.containers || []).find((c) => c.name === SIDECAR_NAME);
}

// The value a sidecar flag gets from a container spec: a --flag in args
// wins over the VIDEOTASK_<FLAG> environment variable, as in the binary.
export function flagValue(container, flag) {
  const args = [...(container.command || []).slice(1), ...(container.args || [])];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    for (const prefix of [`--${flag}=`, `-${flag}=`]) {
      if (a.startsWith(prefix)) return a.slice(prefix.length);
    }
    if ((a === `--${flag}` || a === `-${flag}`) && i + 1 < args.length) return args[i + 1];
  }
  const env = (container.env || []).find((e) => e.name === `VIDEOTASK_${flag.toUpperCase()}`);
  return env ? env.value : undefined;
}

// Abseil duration syntax ("10s", "1h30m", "500ms") to seconds.
export function durationSeconds(text) {
  const units = { ns: 1e-9, us: 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600 };
  const re = /(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)/g;
  let total = 0;
  let consumed = 0;
  for (const m of String(text).matchAll(re)) {
    total += Number(m[1]) * units[m[2]];
    consumed += m[0].length;
  }
  if (consumed !== String(text).length || consumed === 0) throw new Error(`not a duration: ${text}`);
  return total;
}

// Kubernetes quantity to bytes (memory).
export function bytesOf(q) {
  const m = /^(\d+(?:\.\d+)?)([KMGTE]i?|k)?$/.exec(String(q));
  if (!m) throw new Error(`not a memory quantity: ${q}`);
  const mult = { Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4, k: 1e3, K: 1e3, M: 1e6, G: 1e9, T: 1e12 };
  return Number(m[1]) * (m[2] ? mult[m[2]] : 1);
}

// "host:port" -> { host, port }
export function hostPort(addr) {
  const m = /^(.*):(\d+)$/.exec(addr || "");
  if (!m) return null;
  return { host: m[1].replace(/^\[|\]$/g, ""), port: Number(m[2]) };
}

export function isLoopback(host) {
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}
