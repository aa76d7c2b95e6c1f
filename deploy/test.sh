#!/usr/bin/env bash
# Deployment checks: the container image, the Kubernetes manifests, the alerts
# and the dashboard.
#
#   deploy/test.sh
#
# 1. the tools are here (installs nothing; ./dev installs them: Debian
#    packages yamllint shellcheck nodejs npm binutils redis-server, and
#    `npm ci` in deploy/validate; kubectl 1.27+ (kustomize v5) on PATH);
# 2. yamllint (deploy/.yamllint) on every YAML file of the project, and
#    ShellCheck on every shell script it ships;
# 3. every example under deploy/kubernetes/examples renders with
#    `kubectl kustomize` and validates against the Kubernetes / Argo
#    Workflows API schemas, and the sidecar follows the deployment rules
#    (deploy/validate/manifests.test.mjs);
# 4. deploy/Dockerfile: its stages, user, ENTRYPOINT and CLI
#    (deploy/validate/dockerfile.test.mjs), and its runtime stage installs a
#    package for every shared library the binaries need
#    (deploy/check-runtime-libs.sh);
# 5. the sidecar's args and env from the rendered manifests start the real
#    sidecar, whose probes (the real CLI) pass, and it exits 0 on SIGTERM;
#    in fleet mode (components/fleet) with a real redis-server on loopback
#    (deploy/validate/sidecar-run.test.mjs);
# 6. the PrometheusRule (deploy/prometheus) and the Grafana dashboard
#    (deploy/grafana): schema, PromQL syntax, and every metric they use is
#    in the real sidecar's /metrics (deploy/validate/observability.test.mjs).
#
# Steps 4 to 6 need the binaries, by default from bazel-bin:
#   SIDECAR_BIN  (bazel-bin/server/videotask_sidecar)
#   CLI_BIN      (bazel-bin/plugin/videotask)
#   SIM_BIN      (bazel-bin/tests/sim/sim_upstream_server)
# KUBECTL overrides the kubectl used to render.
#
# Ends with the line "deploy: N passed, M failed"; exits 1 when M > 0.
set -uo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$DEPLOY")"
VALIDATE="$DEPLOY/validate"

SIDECAR_BIN="${SIDECAR_BIN:-$ROOT/bazel-bin/server/videotask_sidecar}"
CLI_BIN="${CLI_BIN:-$ROOT/bazel-bin/plugin/videotask}"
SIM_BIN="${SIM_BIN:-$ROOT/bazel-bin/tests/sim/sim_upstream_server}"
KUBECTL="${KUBECTL:-kubectl}"
export SIDECAR_BIN CLI_BIN SIM_BIN KUBECTL

passed=0
failed=0
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

say() { printf '[deploy] %s\n' "$*"; }
pass() { passed=$((passed + 1)); printf 'PASS: %s\n' "$1"; }
fail() {
  failed=$((failed + 1))
  printf 'FAIL: %s\n' "$1"
  # Details, without the lines of what was fine.
  if [ $# -gt 1 ] && [ -n "$2" ]; then printf '%s\n' "$2" | grep -v '^ok: ' | sed 's/^/    /'; fi
}

# check NAME CMD...: one test; shows the command's output when it fails.
check() {
  local name="$1" out
  shift
  if out="$("$@" 2>&1)"; then
    pass "$name"
  else
    fail "$name" "$out"
  fi
}

# node_tests NAME FILE: a node:test file; its tests count one by one.
node_tests() {
  local name="$1" file="$2" tap rc np nf
  tap="$WORK/$(basename "$file").tap"
  node --test --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$tap" "$file"
  rc=$?
  np="$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$tap" 2>/dev/null | tail -n 1)"
  nf="$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$tap" 2>/dev/null | tail -n 1)"
  np="${np:-0}"
  nf="${nf:-0}"
  passed=$((passed + np))
  failed=$((failed + nf))
  if [ "$rc" -ne 0 ] && [ "$nf" -eq 0 ]; then
    fail "$name (node --test exited $rc)"
  else
    say "$name: $np passed, $nf failed"
  fi
}

# ---- 1. tools -------------------------------------------------------------
say "tools"
have() { command -v "$1" >/dev/null 2>&1; }
tools_ok=1
need() {
  local tool="$1" why="$2"
  if have "$tool"; then
    pass "tool $tool"
  else
    fail "tool $tool is missing: $why"
    tools_ok=0
  fi
}
need yamllint "apt-get install yamllint"
need shellcheck "apt-get install shellcheck"
need node "apt-get install nodejs npm"
need readelf "apt-get install binutils"
need redis-server "apt-get install redis-server (fleet mode runs against a real Redis)"
need ldd "part of Debian's libc-bin"
need dpkg "run on Debian (bookworm, like the image)"
kustomize_ok=0
if have "$KUBECTL"; then
  # `kubectl kustomize` v5 (components, replacements with wildcards):
  # kubectl 1.27 or later. Debian bookworm's kubernetes-client is 1.20
  # (kustomize v2): too old.
  kver="$("$KUBECTL" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')"
  if [ -n "$kver" ] && [ "$kver" -ge 5 ]; then
    pass "tool kubectl (kustomize v$kver)"
    kustomize_ok=1
  else
    fail "tool kubectl: its built-in kustomize is ${kver:+v$kver, }too old or unknown; need v5+ (kubectl 1.27+)"
  fi
else
  fail "tool kubectl is missing: need kubectl 1.27+ (built-in kustomize v5+) on PATH, or KUBECTL=/path/to/kubectl"
fi
node_ok=0
if [ -d "$VALIDATE/node_modules/kubernetes-models" ] && [ -d "$VALIDATE/node_modules/yaml" ] \
  && [ -d "$VALIDATE/node_modules/@kubernetes-models/prometheus-operator" ] \
  && [ -d "$VALIDATE/node_modules/@prometheus-io/lezer-promql" ]; then
  pass "npm packages in deploy/validate"
  node_ok=1
else
  fail "npm packages missing in deploy/validate: run (cd deploy/validate && npm ci)"
fi

# ---- 2. yamllint and shellcheck --------------------------------------------
say "lint"
# The project's own files: not Bazel's output, node_modules, .git or
# vendored third_party code.
project_files() {
  find "$ROOT" \( -name .git -o -name node_modules -o -name 'bazel-*' -o -path "$ROOT/third_party" \) -prune \
    -o -type f -print | sort
}
mapfile -t yaml_files < <(project_files | grep -E '\.ya?ml$')
yaml_files+=("$DEPLOY/.yamllint")
if have yamllint; then
  check "yamllint (${#yaml_files[@]} files)" yamllint --strict -c "$DEPLOY/.yamllint" "${yaml_files[@]}"
fi
shell_files=()
while IFS= read -r f; do
  case "$f" in
    *.sh | *.bash) shell_files+=("$f") ;;
    *)
      if head -c 64 "$f" 2>/dev/null | head -n 1 | grep -qE '^#!.*[/ ](ba)?sh([[:space:]]|$)'; then
        shell_files+=("$f")
      fi
      ;;
  esac
done < <(project_files)
if have shellcheck; then
  check "shellcheck (${#shell_files[@]} scripts: $(printf '%s ' "${shell_files[@]#"$ROOT"/}"))" \
    shellcheck "${shell_files[@]}"
fi

# ---- 3. manifests -----------------------------------------------------------
say "manifests: kustomize + API schema + deployment rules"
if [ "$tools_ok" -eq 1 ] && [ "$kustomize_ok" -eq 1 ] && [ "$node_ok" -eq 1 ]; then
  node_tests "manifests" "$VALIDATE/manifests.test.mjs"
else
  fail "manifests: not run (tools missing, see above)"
fi

# ---- 4. the image ------------------------------------------------------------
say "image: Dockerfile structure"
if [ "$node_ok" -eq 1 ] && have node; then
  node_tests "Dockerfile" "$VALIDATE/dockerfile.test.mjs"
else
  fail "Dockerfile: not checked (tools missing, see above)"
fi
say "image: runtime packages vs the binaries' shared libraries"
bins_ok=1
for var in SIDECAR_BIN CLI_BIN SIM_BIN; do
  if [ ! -x "${!var}" ]; then
    fail "binary $var=${!var} is missing: bazel build //server:videotask_sidecar //plugin:videotask //tests/sim:sim_upstream_server"
    bins_ok=0
  fi
done
if [ -x "$SIDECAR_BIN" ] && [ -x "$CLI_BIN" ]; then
  check "Dockerfile runtime stage installs every needed library package" \
    "$DEPLOY/check-runtime-libs.sh" "$SIDECAR_BIN" "$CLI_BIN"
  # The check must catch a missing package: drop one from a copy.
  sed '/^FROM .* AS runtime/,$ { /libgrpc++1\.51/d; /libcurl4/d }' "$DEPLOY/Dockerfile" >"$WORK/Dockerfile.broken"
  if "$DEPLOY/check-runtime-libs.sh" --dockerfile "$WORK/Dockerfile.broken" "$SIDECAR_BIN" >"$WORK/broken.log" 2>&1; then
    fail "the library check catches a package missing from the runtime stage" "$(cat "$WORK/broken.log")"
  else
    pass "the library check catches a package missing from the runtime stage"
  fi
else
  fail "Dockerfile runtime libraries: not checked (binaries missing, see above)"
fi

# ---- 5. the manifests' settings on the real sidecar -------------------------
say "manifests' args and env on the real sidecar"
if [ "$bins_ok" -eq 1 ] && [ "$kustomize_ok" -eq 1 ] && [ "$node_ok" -eq 1 ]; then
  node_tests "sidecar run" "$VALIDATE/sidecar-run.test.mjs"
else
  fail "sidecar run: not run (binaries or tools missing, see above)"
fi

# ---- 6. alerts and dashboard ------------------------------------------------
say "operations: PrometheusRule and Grafana dashboard against the real sidecar's /metrics"
if [ "$bins_ok" -eq 1 ] && [ "$node_ok" -eq 1 ] && have redis-server; then
  node_tests "observability" "$VALIDATE/observability.test.mjs"
else
  fail "observability: not run (binaries, npm packages or redis-server missing, see above)"
fi

printf '\ndeploy: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
