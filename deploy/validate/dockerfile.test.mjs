// Static checks of deploy/Dockerfile (no container engine runs here): the
// stages, the non-root user the manifests rely on, the ENTRYPOINT and the
// CLI the probes run. The package list is checked against the binaries by
// deploy/check-runtime-libs.sh.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { BASE_DIR, DEPLOY_DIR, readYamlFile } from "./lib.mjs";

// Instructions with continuation lines joined and comments dropped.
function instructions(text) {
  const out = [];
  let cur = "";
  for (const raw of text.split("\n")) {
    if (/^\s*#/.test(raw)) continue;
    const line = raw.replace(/\s+$/, "");
    if (line.endsWith("\\")) { cur += `${line.slice(0, -1)} `; continue; }
    cur += line;
    if (cur.trim()) {
      const m = /^\s*(\w+)\s+(.*)$/s.exec(cur);
      out.push({ op: m[1].toUpperCase(), args: m[2].trim() });
    }
    cur = "";
  }
  return out;
}

function stages(ins) {
  const args = {};
  const list = [];
  for (const i of ins) {
    if (i.op === "ARG" && list.length === 0) {
      const [k, v] = i.args.split("=");
      args[k] = v;
    } else if (i.op === "FROM") {
      const m = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(i.args);
      const image = m[1].replace(/\$\{(\w+)\}/g, (_, k) => args[k] ?? "");
      list.push({ image, name: m[2], ins: [] });
    } else if (list.length) {
      list[list.length - 1].ins.push(i);
    }
  }
  return list;
}

const dockerfile = readFileSync(join(DEPLOY_DIR, "Dockerfile"), "utf8");
const all = stages(instructions(dockerfile));
const build = all.find((s) => s.name === "build");
const runtime = all.find((s) => s.name === "runtime");

test("two stages on debian:bookworm-slim, runtime last", () => {
  assert.ok(build && runtime, "stages named build and runtime");
  assert.equal(all[all.length - 1], runtime, "the runtime stage is the final image");
  for (const s of all) assert.equal(s.image, "debian:bookworm-slim", `stage ${s.name}`);
});

test("the build stage installs Debian's Bazel and builds the sidecar and the CLI", () => {
  const runs = build.ins.filter((i) => i.op === "RUN").map((i) => i.args).join("\n");
  assert.match(runs, /apt-get install[^\n]*\bbazel-bootstrap\b/);
  assert.match(runs, /\blibgrpc\+\+-dev\b/);
  assert.match(runs, /bazel\b[^\n]*\bbuild\b[^\n]*\/\/server:videotask_sidecar/);
  assert.match(runs, /\/\/plugin:videotask\b/);
});

test("the runtime stage installs no build tool", () => {
  const runs = runtime.ins.filter((i) => i.op === "RUN").map((i) => i.args).join("\n");
  assert.doesNotMatch(runs, /-dev\b|bazel|\bg\+\+|\bgcc\b|pkg-config/);
  assert.match(runs, /--no-install-recommends/);
  assert.match(runs, /rm -rf \/var\/lib\/apt\/lists/);
});

test("the runtime stage runs as the non-root UID of the manifests", () => {
  const users = runtime.ins.filter((i) => i.op === "USER");
  assert.ok(users.length > 0, "no USER");
  const uid = users[users.length - 1].args.split(":")[0];
  assert.match(uid, /^\d+$/, "USER must be numeric (runAsNonRoot can only verify a numeric UID)");
  assert.notEqual(uid, "0");
  const [carrier] = readYamlFile(join(BASE_DIR, "sidecar.yaml"));
  const sc = carrier.template.spec.initContainers[0].securityContext;
  assert.equal(String(sc.runAsUser), uid, "the manifests' runAsUser");
});

test("ENTRYPOINT is the sidecar, and the probes' CLI is on PATH", () => {
  const copies = runtime.ins.filter((i) => i.op === "COPY" && i.args.includes("--from=build")).map((i) => i.args.split(/\s+/));
  const copied = new Set();
  for (const parts of copies) {
    const dest = parts[parts.length - 1];
    for (const src of parts.slice(1, -1)) {
      if (src.startsWith("--")) continue;
      copied.add(dest.endsWith("/") ? dest + src.split("/").pop() : dest);
    }
  }
  const entry = runtime.ins.filter((i) => i.op === "ENTRYPOINT").pop();
  assert.ok(entry, "no ENTRYPOINT");
  const argv = JSON.parse(entry.args);
  assert.deepEqual(argv, ["/usr/local/bin/videotask_sidecar"], "exec-form ENTRYPOINT of the sidecar; the manifests pass only args");
  assert.ok(copied.has("/usr/local/bin/videotask_sidecar"), "the sidecar is copied from the build stage");
  // The manifests' exec probes run `videotask` by name.
  assert.ok(copied.has("/usr/local/bin/videotask"), "the CLI is at /usr/local/bin/videotask");
  const [carrier] = readYamlFile(join(BASE_DIR, "sidecar.yaml"));
  assert.equal(carrier.template.spec.initContainers[0].startupProbe.exec.command[0], "videotask");
});
