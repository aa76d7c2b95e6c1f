// Checks of what operators run beside the sidecar: the PrometheusRule
// (deploy/prometheus/videotask-rules.yaml) and the Grafana dashboard
// (deploy/grafana/videotask-dashboard.json).
//
// Static: the rule is a valid monitoring.coreos.com/v1 PrometheusRule (the
// prometheus-operator schema, no unknown field), every PromQL expression of
// the rule and the dashboard parses (Prometheus' own lezer grammar), every
// alert has a severity, a summary and a description whose $labels survive
// the expression's aggregation, and the dashboard is well-formed (unique
// ids, panels on the grid without overlap, known template variables).
//
// Against the real binary: every metric (and label) the expressions use is
// in the /metrics output of a real sidecar, started the way the deploy
// tests start it (SIDECAR_BIN, CLI_BIN, SIM_BIN), on the simulated upstream.
// Metrics that exist only in a mode are listed per mode: FLEET_ONLY_METRICS
// must be absent without a Redis URL (so `videotask_fleet_mode == 0` means
// "configured for fleet mode and fallen back"), present with a real
// redis-server, and videotask_fleet_mode / videotask_redis_up must drop to
// 0 when that Redis is killed while the sidecar stays SERVING;
// ARCHIVE_ONLY_METRICS must be present with --archive_dir.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { parser } from "@prometheus-io/lezer-promql";
import {
  DEPLOY_DIR, EXAMPLES_DIR, SIDECAR_ANNOTATION, durationSeconds, exampleDirs, podSpecs, readYamlFile, render,
  sidecarOf, validateObject,
} from "./lib.mjs";
import {
  freePort, httpGet, metricValue, parseMetrics, run, secretDir, sleep, startRedis, startSim,
} from "./procs.mjs";

const RULES_FILE = join(DEPLOY_DIR, "prometheus", "videotask-rules.yaml");
const PODMONITOR_FILE = join(DEPLOY_DIR, "prometheus", "videotask-podmonitor.yaml");
const DASHBOARD_FILE = join(DEPLOY_DIR, "grafana", "videotask-dashboard.json");

// The metrics a sidecar exports only when it runs with --redis_url.
const FLEET_ONLY_METRICS = [
  "videotask_redis_up",
  "videotask_fleet_mode",
  "videotask_fleet_tokens_denied_total",
  "videotask_fleet_entries_rejected_total",
  "videotask_fleet_follower_tasks",
  "videotask_fleet_faults_total",
];
// The metrics a sidecar exports only with --archive_dir.
const ARCHIVE_ONLY_METRICS = [
  "videotask_archive_bytes_total",
  "videotask_archive_duration_seconds",
  "videotask_archive_failures_total",
];
// The metrics a sidecar exports only with --archive_url (a bucket). No
// bucket is started here: //tests/e2e:archive_s3_test checks them against
// the real sidecar and the stand-in S3.
const BUCKET_ONLY_METRICS = [
  "videotask_archive_s3_objects_total",
  "videotask_archive_credentials_ok",
];
const MODE_ONLY_METRICS = new Set([...FLEET_ONLY_METRICS, ...ARCHIVE_ONLY_METRICS, ...BUCKET_ONLY_METRICS]);
const baseName = (m) => m.replace(/_(bucket|sum|count)$/, "");
// Labels Prometheus adds to every series of a scraped pod (kubernetes_sd
// relabelling of the annotation-based scrape configs, and PodMonitors).
const TARGET_LABELS = new Set(["namespace", "pod", "container", "instance", "job", "endpoint", "service"]);
// What the operators need to hear about: alert -> the metrics its
// expression must use.
const REQUIRED_ALERTS = {
  VideotaskAPIKeyRejected: ["videotask_upstream_requests_total"],
  VideotaskRateLimited: ["videotask_rate_limited_total"],
  VideotaskFleetFallback: ["videotask_fleet_mode"],
  VideotaskRedisDown: ["videotask_redis_up"],
  VideotaskWatchesNearLimit: ["videotask_active_watches", "videotask_max_watches"],
  VideotaskSlowWatchers: ["videotask_slow_watchers_total"],
  VideotaskArchiveCredentialsRefused: ["videotask_archive_credentials_ok"],
};
const SEVERITIES = new Set(["critical", "warning", "info"]);
const GRAFANA_BUILTINS = new Set(["__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms"]);

// ---- PromQL --------------------------------------------------------------

// Parses one expression: the tree, or a list of problems.
function parsePromql(expr) {
  const tree = parser.parse(expr);
  const problems = [];
  const c = tree.cursor();
  do {
    if (c.type.isError) problems.push(`syntax error at ${c.from}: ...${expr.slice(Math.max(0, c.from - 20), c.from + 20)}...`);
  } while (c.next());
  if (!problems.length && tree.topNode.firstChild === null) problems.push("empty expression");
  return { tree, problems };
}

const text = (expr, node) => expr.slice(node.from, node.to);
function childrenOf(node) {
  const out = [];
  for (let ch = node.firstChild; ch; ch = ch.nextSibling) out.push(ch);
  return out;
}
function descendants(node, name) {
  const out = [];
  const walk = (n) => { for (const ch of childrenOf(n)) { if (ch.name === name) out.push(ch); walk(ch); } };
  walk(node);
  return out;
}

// The metric names an expression selects, each with the label names its
// matchers use, and the labels of its by()/on()/ignoring()/without()
// clauses.
function promqlUses(expr) {
  const { tree, problems } = parsePromql(expr);
  if (problems.length) return { problems, selectors: [], groupings: [] };
  const selectors = [];
  for (const vs of descendants(tree.topNode, "VectorSelector")) {
    const id = childrenOf(vs).find((n) => n.name === "Identifier");
    const labels = descendants(vs, "LabelName").map((n) => text(expr, n));
    if (!id) {
      problems.push(`a selector without a metric name: ${text(expr, vs)}`);
      continue;
    }
    selectors.push({ metric: text(expr, id), labels });
  }
  const groupings = [];
  for (const g of descendants(tree.topNode, "GroupingLabels")) {
    for (const l of descendants(g, "LabelName")) groupings.push(text(expr, l));
  }
  return { problems, selectors, groupings, tree };
}

// The labels an alert's result series carry, as far as the outermost
// aggregations tell: null when not limited (no aggregation at the top).
function outputLabels(expr, tree) {
  const tops = [];
  const walk = (n) => {
    for (const ch of childrenOf(n)) {
      if (ch.name === "AggregateExpr") tops.push(ch);
      else walk(ch);
    }
  };
  walk(tree.topNode);
  if (!tops.length) return null;
  let allowed = null;
  for (const agg of tops) {
    const mod = childrenOf(agg).find((n) => n.name === "AggregateModifier");
    let labels = new Set();
    if (mod && childrenOf(mod).some((n) => n.name === "By")) {
      labels = new Set(descendants(mod, "LabelName").map((n) => text(expr, n)));
    } else if (mod) {
      return null; // without(...): everything else survives
    }
    allowed = allowed === null ? labels : new Set([...allowed].filter((l) => labels.has(l)));
  }
  return allowed;
}

// Grafana variables -> values PromQL accepts; unknown variables are errors.
function substituteGrafana(expr, variables) {
  const unknown = [];
  const out = expr.replace(/\$\{(\w+)(?::\w+)?\}|\$(\w+)/g, (_, a, b) => {
    const name = a || b;
    if (GRAFANA_BUILTINS.has(name)) return "5m";
    if (!variables.has(name)) { unknown.push(name); return "x"; }
    return ".*";
  });
  return { expr: out, unknown };
}

// ---- the files -------------------------------------------------------------

function loadRule() {
  const docs = readYamlFile(RULES_FILE);
  assert.equal(docs.length, 1, `${RULES_FILE}: one PrometheusRule`);
  return docs[0];
}
function alertsOf(rule) {
  return rule.spec.groups.flatMap((g) => g.rules.map((r) => ({ group: g.name, ...r })));
}
function loadDashboard() {
  return JSON.parse(readFileSync(DASHBOARD_FILE, "utf8"));
}
function dashboardPanels(dash) {
  return (dash.panels || []).flatMap((p) => [p, ...(p.panels || [])]);
}
function dashboardVariables(dash) {
  return new Set((dash.templating?.list || []).map((v) => v.name));
}
// Every PromQL expression of the dashboard, with where it is, variables
// substituted.
function dashboardExprs(dash) {
  const vars = dashboardVariables(dash);
  const out = [];
  for (const p of dashboardPanels(dash)) {
    for (const t of p.targets || []) out.push({ where: `panel "${p.title}" ${t.refId}`, raw: t.expr });
  }
  for (const v of dash.templating?.list || []) {
    if (v.type !== "query") continue;
    const q = typeof v.query === "string" ? v.query : v.query?.query;
    const m = /^label_values\((.*),\s*(\w+)\)$/.exec(q || "");
    assert.ok(m, `variable ${v.name}: label_values(selector, label) expected, got ${q}`);
    out.push({ where: `variable ${v.name}`, raw: m[1], label: m[2] });
  }
  return out.map((e) => ({ ...e, ...substituteGrafana(e.raw, vars) }));
}
// Every metric and label the rule and the dashboard use.
function allUses() {
  const uses = [];
  for (const a of alertsOf(loadRule())) uses.push({ where: `alert ${a.alert}`, ...promqlUses(a.expr) });
  for (const e of dashboardExprs(loadDashboard())) {
    const u = promqlUses(e.expr);
    if (e.label) u.groupings.push(e.label);
    uses.push({ where: `dashboard ${e.where}`, ...u });
  }
  return uses;
}

// Labels docs/sidecar.md's Metrics section documents, e.g. `name{code}`: a counter
// gets such a label with its first increment, so a fresh sidecar may not
// show it yet.
function documentedLabels() {
  const readme = readFileSync(join(DEPLOY_DIR, "..", "docs", "sidecar.md"), "utf8");
  const out = new Map();
  for (const m of readme.matchAll(/`(videotask_[a-z0-9_]+)\{([a-z_, ]+)\}`/g)) {
    out.set(m[1], new Set(m[2].split(",").map((l) => l.trim())));
  }
  return out;
}

// ---- static checks ---------------------------------------------------------

describe("PrometheusRule", () => {
  test("is a valid monitoring.coreos.com/v1 PrometheusRule (schema, no unknown field)", async () => {
    const rule = loadRule();
    assert.equal(rule.apiVersion, "monitoring.coreos.com/v1");
    assert.equal(rule.kind, "PrometheusRule");
    assert.deepEqual(await validateObject(rule), []);
    assert.ok(rule.spec.groups.length > 0);
    const groupNames = rule.spec.groups.map((g) => g.name);
    assert.equal(new Set(groupNames).size, groupNames.length, "duplicate group names");
  });

  test("every alert: a parsing expression, a sane `for`, a severity, a summary and a description", () => {
    const names = new Set();
    for (const a of alertsOf(loadRule())) {
      assert.ok(a.alert && !a.record, `${a.group}: only alerts here, got ${JSON.stringify(a)}`);
      assert.match(a.alert, /^Videotask[A-Z][A-Za-z0-9]+$/, `alert name ${a.alert}`);
      assert.ok(!names.has(a.alert), `duplicate alert ${a.alert}`);
      names.add(a.alert);
      const { problems, selectors } = promqlUses(a.expr);
      assert.deepEqual(problems, [], `${a.alert}: ${a.expr}`);
      assert.ok(selectors.length > 0, `${a.alert}: selects no metric`);
      if (a.for !== undefined) {
        const s = durationSeconds(a.for);
        assert.ok(s > 0 && s <= 3600, `${a.alert}: for ${a.for}`);
      }
      assert.ok(SEVERITIES.has(a.labels?.severity), `${a.alert}: labels.severity must be one of ${[...SEVERITIES]}`);
      assert.ok(a.annotations?.summary, `${a.alert}: annotations.summary`);
      assert.ok(a.annotations?.description, `${a.alert}: annotations.description`);
    }
  });

  test("the $labels an alert's annotations show survive its aggregation", () => {
    for (const a of alertsOf(loadRule())) {
      const { tree } = parsePromql(a.expr);
      const allowed = outputLabels(a.expr, tree);
      const used = [...JSON.stringify(a.annotations).matchAll(/\$labels\.(\w+)/g)].map((m) => m[1]);
      for (const l of used) {
        assert.ok(allowed === null || allowed.has(l), `${a.alert}: annotations use $labels.${l}, which its aggregation drops (keeps: ${[...(allowed || [])].join(", ")})`);
      }
    }
  });

  test("has the alerts that matter: key rejected, sustained 429s, fleet fallback, Redis down, watches near max, slow watchers", () => {
    const byName = new Map(alertsOf(loadRule()).map((a) => [a.alert, a]));
    for (const [name, metrics] of Object.entries(REQUIRED_ALERTS)) {
      const a = byName.get(name);
      assert.ok(a, `alert ${name} is missing`);
      const used = new Set(promqlUses(a.expr).selectors.map((s) => s.metric));
      for (const m of metrics) assert.ok(used.has(m), `${name} must use ${m}`);
    }
    assert.match(byName.get("VideotaskAPIKeyRejected").expr, /code=~"401\|403"/);
    assert.ok(byName.get("VideotaskRateLimited").for, "VideotaskRateLimited: sustained means a `for`");
  });
});

test("PodMonitor: valid, and selects every pod the examples give the sidecar, on its metrics port", async () => {
  const docs = readYamlFile(PODMONITOR_FILE);
  assert.equal(docs.length, 1);
  const pm = docs[0];
  assert.equal(pm.kind, "PodMonitor");
  assert.deepEqual(await validateObject(pm), []);
  const match = pm.spec.selector.matchLabels;
  assert.ok(match && Object.keys(match).length > 0 && !pm.spec.selector.matchExpressions, "select by matchLabels");
  assert.equal(pm.spec.podMetricsEndpoints.length, 1);
  const ep = pm.spec.podMetricsEndpoints[0];
  let pods = 0;
  for (const example of exampleDirs()) {
    for (const obj of render(join(EXAMPLES_DIR, example))) {
      if (obj.metadata?.annotations?.[SIDECAR_ANNOTATION] !== "enabled") continue;
      for (const pod of podSpecs(obj)) {
        pods++;
        const labels = pod.podMeta?.labels || {};
        for (const [k, v] of Object.entries(match)) assert.equal(labels[k], v, `${example} ${pod.where}: pod label ${k}=${v} (the PodMonitor's selector)`);
        const port = (sidecarOf(pod.spec).ports || []).find((p) => p.name === ep.port);
        assert.ok(port, `${example} ${pod.where}: the sidecar has no port named ${ep.port}`);
        assert.equal(ep.path ?? "/metrics", pod.podMeta.annotations["prometheus.io/path"]);
      }
    }
  }
  assert.ok(pods > 0);
});

describe("Grafana dashboard", () => {
  test("parses and is well-formed: title, uid, unique panel ids, panels on the grid without overlap", () => {
    const dash = loadDashboard();
    assert.ok(dash.title && dash.uid, "title and uid");
    assert.match(dash.uid, /^[a-zA-Z0-9_-]{1,40}$/);
    assert.equal(typeof dash.schemaVersion, "number");
    const panels = dashboardPanels(dash);
    assert.ok(panels.length > 0);
    const ids = panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, "duplicate panel ids");
    const rects = [];
    for (const p of panels) {
      const g = p.gridPos;
      assert.ok(g && [g.x, g.y, g.w, g.h].every(Number.isInteger), `panel "${p.title}": gridPos`);
      assert.ok(g.x >= 0 && g.w > 0 && g.x + g.w <= 24 && g.h > 0, `panel "${p.title}": gridPos outside the 24 columns`);
      for (const r of rects) {
        const overlap = g.x < r.x + r.w && r.x < g.x + g.w && g.y < r.y + r.h && r.y < g.y + g.h;
        assert.ok(!overlap, `panels "${p.title}" and "${r.title}" overlap`);
      }
      rects.push({ ...g, title: p.title });
      if (p.type === "row") continue;
      assert.ok(p.title, `panel ${p.id}: title`);
      assert.equal(p.datasource?.uid, "${datasource}", `panel "${p.title}": use the datasource variable`);
      assert.ok((p.targets || []).length > 0, `panel "${p.title}": no query`);
      const refIds = p.targets.map((t) => t.refId);
      assert.equal(new Set(refIds).size, refIds.length, `panel "${p.title}": duplicate refId`);
    }
    const ds = dash.templating.list.find((v) => v.name === "datasource");
    assert.equal(ds?.type, "datasource");
    assert.equal(ds?.query, "prometheus");
  });

  test("every query parses as PromQL and uses only defined variables", () => {
    const exprs = dashboardExprs(loadDashboard());
    assert.ok(exprs.length > 10);
    for (const e of exprs) {
      assert.deepEqual(e.unknown, [], `${e.where}: unknown variables in ${e.raw}`);
      const { problems, selectors } = promqlUses(e.expr);
      assert.deepEqual(problems, [], `${e.where}: ${e.raw}`);
      assert.ok(selectors.length > 0, `${e.where}: selects no metric`);
    }
  });

  test("shows every metric the sidecar is documented to export, and the fleet ones", () => {
    const used = new Set(allUses().filter((u) => u.where.startsWith("dashboard")).flatMap((u) => u.selectors.map((s) => s.metric)));
    const doc = readFileSync(join(DEPLOY_DIR, "..", "docs", "sidecar.md"), "utf8");
    const section = doc.slice(doc.indexOf("## Metrics"), doc.indexOf("\n## ", doc.indexOf("## Metrics") + 1));
    const documented = new Set([...section.matchAll(/`(videotask_[a-z0-9_]+)/g)].map((m) => m[1]));
    assert.ok(documented.size >= 10, "docs/sidecar.md's Metrics section lists the metrics");
    const shown = new Set([...used].map(baseName));
    for (const m of [...documented, ...MODE_ONLY_METRICS]) assert.ok(shown.has(m), `the dashboard does not show ${m}`);
  });
});

// ---- against the real sidecar ----------------------------------------------

const BINS = { SIDECAR_BIN: process.env.SIDECAR_BIN, CLI_BIN: process.env.CLI_BIN, SIM_BIN: process.env.SIM_BIN };
const API_KEY = "observability-test-key-0123456789";

async function scrape(port) {
  const m = await httpGet(`http://127.0.0.1:${port}/metrics`);
  assert.equal(m.status, 200, "GET /metrics");
  return parseMetrics(m.body);
}

async function waitFor(what, fn, timeoutMs) {
  const until = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last.ok) return last;
    } catch (err) {
      last = { err };
    }
    if (Date.now() > until) assert.fail(`${what} within ${timeoutMs} ms; last: ${last.err ?? last.detail ?? ""}`);
    await sleep(200);
  }
}

describe("the rule's and the dashboard's metrics exist in the real sidecar's /metrics", () => {
  let dir;
  let sim;
  const children = [];
  let single; // series of a single-pod sidecar
  let fleet; // series of a sidecar in fleet mode
  let archive; // series of a sidecar with --archive_dir

  async function startSidecar(extraArgs, tag, getId = "demo-completes") {
    const grpcPort = await freePort();
    const metricsPort = await freePort();
    const keyDir = mkdtempSync(join(dir, "key-"));
    secretDir(keyDir, "api-key")("v1", API_KEY);
    const child = spawn(BINS.SIDECAR_BIN, [
      `--listen=127.0.0.1:${grpcPort}`, `--metrics_listen=127.0.0.1:${metricsPort}`,
      `--upstream_url=http://127.0.0.1:${sim.port}/kyyReactApiServer/v1`, `--api_key_file=${join(keyDir, "api-key")}`,
      "--shutdown_grace=1s", ...extraArgs,
    ], { env: { PATH: process.env.PATH }, stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    const sc = { child, grpcPort, metricsPort, log: "" };
    child.stdout.on("data", (d) => { sc.log += d; });
    child.stderr.on("data", (d) => { sc.log += d; });
    const target = `--target=127.0.0.1:${grpcPort}`;
    sc.cli = (...args) => run([BINS.CLI_BIN, target, ...args], { env: { PATH: process.env.PATH }, timeoutMs: 15000 });
    await waitFor(`${tag} sidecar SERVING`, async () => {
      if (child.exitCode !== null) throw new Error(`exited ${child.exitCode}:\n${sc.log}`);
      const r = await sc.cli("--timeout=2s", "health");
      return { ok: r.code === 0, detail: r.out };
    }, 30000);
    // An upstream request, so that the per-code counters exist.
    const got = await sc.cli("--timeout=10s", "--quiet", "get", getId);
    assert.equal(got.code, 0, `${tag}: videotask get ${getId}: ${got.out}\n${sc.log}`);
    return sc;
  }

  before(async () => {
    const missing = Object.entries(BINS).filter(([, p]) => !p || !existsSync(p)).map(([k, p]) => `${k}=${p ?? "(unset)"}`);
    if (missing.length) {
      throw new Error(`missing binaries: ${missing.join(", ")}; bazel build //server:videotask_sidecar //plugin:videotask //tests/sim:sim_upstream_server`);
    }
    dir = mkdtempSync(join(tmpdir(), "videotask-observability-"));
    // Videos of unscripted ids on the sim itself (loopback), for archiving.
    sim = await startSim(BINS.SIM_BIN, dir, API_KEY, ["--video_urls_on_sim"]);
  });

  after(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    if (sim) sim.child.kill("SIGKILL");
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("single-pod mode: every metric but the fleet ones is there, and no fleet metric", { timeout: 60000 }, async () => {
    const sc = await startSidecar([], "single-pod");
    single = await scrape(sc.metricsPort);
    for (const m of FLEET_ONLY_METRICS) {
      assert.ok(!single.has(m), `${m} is exported without --redis_url: the alerts' "fleet configured" test (the series exists) would be wrong`);
    }
    for (const u of allUses()) {
      for (const { metric } of u.selectors) {
        if (MODE_ONLY_METRICS.has(baseName(metric))) continue;
        assert.ok(single.has(metric), `${u.where}: ${metric} is not in the sidecar's /metrics (and not in FLEET_ONLY_METRICS, ARCHIVE_ONLY_METRICS or BUCKET_ONLY_METRICS)`);
      }
    }
  });

  test("fleet mode (a real redis-server): the fleet metrics are there; killing Redis turns fleet_mode and redis_up to 0, still SERVING", { timeout: 90000 }, async (t) => {
    const redis = await startRedis(dir);
    children.push(redis.child);
    const sc = await startSidecar([`--redis_url=redis://127.0.0.1:${redis.port}/0`, "--fleet_max_upstream_qps=10"], "fleet");
    await waitFor("fleet mode (videotask_fleet_mode 1, videotask_redis_up 1)", async () => {
      const s = await scrape(sc.metricsPort);
      return { ok: metricValue(s, "videotask_fleet_mode") === 1 && metricValue(s, "videotask_redis_up") === 1,
        detail: `fleet_mode=${metricValue(s, "videotask_fleet_mode")} redis_up=${metricValue(s, "videotask_redis_up")}\n${sc.log}` };
    }, 15000);
    fleet = await scrape(sc.metricsPort);
    for (const m of FLEET_ONLY_METRICS) assert.ok(fleet.has(m), `${m} is not in /metrics in fleet mode`);

    redis.child.kill("SIGKILL");
    const t0 = Date.now();
    await waitFor("local mode after Redis was killed (videotask_fleet_mode 0, videotask_redis_up 0)", async () => {
      const s = await scrape(sc.metricsPort);
      return { ok: metricValue(s, "videotask_fleet_mode") === 0 && metricValue(s, "videotask_redis_up") === 0,
        detail: `fleet_mode=${metricValue(s, "videotask_fleet_mode")} redis_up=${metricValue(s, "videotask_redis_up")}` };
    }, 10000);
    const fellBackMs = Date.now() - t0;
    const h = await sc.cli("--timeout=2s", "health");
    assert.equal(h.code, 0, `not SERVING with Redis down: ${h.out}`);
    t.diagnostic(`fell back ${fellBackMs} ms after Redis was killed`);
  });

  test("with --archive_dir: the archive metrics are there (after a real archive failure)", { timeout: 60000 }, async () => {
    // A 1-byte cap makes archiving fail (reason too_large): the failure
    // counter's series appears with its first failure. Unscripted ids
    // complete after 3 polls, and their video is on the sim (loopback);
    // the demo-completes video is not, so it is not fetched here.
    const archiveDir = mkdtempSync(join(dir, "archive-"));
    const sc = await startSidecar([`--archive_dir=${archiveDir}`, "--archive_max_bytes=1", "--poll_interval=1s"], "archive", "archive-warmup");
    const w = await sc.cli("--timeout=30s", "--quiet", "watch", "archive-fails");
    assert.equal(w.code, 0, `videotask watch archive-fails: ${w.out}\n${sc.log}`);
    archive = await scrape(sc.metricsPort);
    for (const m of ARCHIVE_ONLY_METRICS) assert.ok(archive.has(m), `${m} is not in /metrics with --archive_dir`);
  });

  test("every label the expressions match on or group by exists on the metrics they use (or docs/sidecar.md documents it), or is a target label", () => {
    assert.ok(single && fleet && archive, "needs the three scrapes (see the tests above)");
    const documented = documentedLabels();
    for (const u of allUses()) {
      const known = new Set(TARGET_LABELS);
      for (const { metric, labels } of u.selectors) {
        const s = single.get(metric) || fleet.get(metric) || archive.get(metric);
        const metricLabels = new Set([...(s?.labels || []), ...(documented.get(baseName(metric)) || []), ...TARGET_LABELS, "__name__"]);
        if (metric.endsWith("_bucket")) metricLabels.add("le");
        for (const l of labels) assert.ok(metricLabels.has(l), `${u.where}: ${metric} has no label ${l} (it has: ${[...(s?.labels || [])].join(", ") || "none"})`);
        for (const l of metricLabels) known.add(l);
      }
      for (const l of u.groupings) assert.ok(known.has(l), `${u.where}: groups by ${l}, which none of its metrics has`);
    }
  });
});
