#!/usr/bin/env bash
# Builds deploy/Dockerfile for real and runs the image: buildah with chroot
# isolation (no Docker daemon or OCI runtime needed) on a Debian bookworm base
# that mmdebstrap makes from this machine's apt sources, standing in for
# debian:bookworm-slim (no registry is needed either). Then it starts the
# image's sidecar as the image's user (65532) on loopback and checks:
# `videotask health` (run from the image) answers SERVING, GET /metrics
# responds, a `videotask watch` through the sidecar reaches COMPLETED against
# the simulated upstream (with --sim), and SIGTERM drains it to exit 0.
# The sidecar is stopped by its PID; the container and temp files are removed.
#
#   deploy/image-test.sh [--sim PATH_TO_sim_upstream_server] [--fresh-base]
#
# Needs root and the Debian packages buildah and mmdebstrap (./dev installs
# them). The base image (localhost/videotask-debian-bookworm:slim) is kept
# for the next run unless --fresh-base; the built image is
# localhost/videotask-sidecar:dev. Prints one "ok:"/"FAIL:" line per check
# and ends with "image: N passed, M failed"; exits 1 on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE=localhost/videotask-debian-bookworm:slim
IMAGE=localhost/videotask-sidecar:dev
API_KEY=image-test-key

sim_bin=""
fresh_base=0
while [ $# -gt 0 ]; do
  case "$1" in
    --sim) sim_bin="$2"; shift 2 ;;
    --fresh-base) fresh_base=1; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "image-test: unknown argument: $1" >&2; exit 2 ;;
  esac
done

passed=0
failed=0
ok() { printf 'ok: %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL: %s\n' "$*"; failed=$((failed + 1)); }
log() { printf '[image] %s\n' "$*" >&2; }
finish() {
  printf 'image: %d passed, %d failed\n' "$passed" "$failed"
  [ "$failed" -eq 0 ]
}

work="$(mktemp -d)"
ctr=""
runner_pid=""
sidecar_pid=""
sim_pid=""

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Waits up to $2 seconds for PID $1 to be gone.
wait_gone() {
  local pid=$1 i
  for ((i = 0; i < $2 * 10; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  return 1
}

cleanup() {
  set +e
  if alive "$sidecar_pid"; then
    kill -TERM "$sidecar_pid"
    wait_gone "$sidecar_pid" 10 || kill -KILL "$sidecar_pid"
  fi
  if alive "$runner_pid"; then
    wait_gone "$runner_pid" 5 || kill -KILL "$runner_pid"
  fi
  if alive "$sim_pid"; then
    kill -TERM "$sim_pid"
    wait_gone "$sim_pid" 5 || kill -KILL "$sim_pid"
  fi
  [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

for tool in buildah mmdebstrap; do
  if ! command -v "$tool" >/dev/null; then
    fail "$tool not found (Debian package $tool; ./dev installs it)"
    finish
    exit 1
  fi
done
if [ "$(id -u)" -ne 0 ]; then
  fail "needs root (buildah's chroot isolation)"
  finish
  exit 1
fi

# ---- base image ---------------------------------------------------------------
if [ "$fresh_base" -eq 1 ] || ! buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  log "making the bookworm base with mmdebstrap (this machine's apt sources)"
  started=$SECONDS
  if mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm \
       "$work/bookworm.tar" >"$work/mmdebstrap.log" 2>&1; then
    base_ctr=$(buildah from scratch)
    buildah add "$base_ctr" "$work/bookworm.tar" / >/dev/null
    buildah config --cmd /bin/bash "$base_ctr"
    buildah commit --quiet "$base_ctr" "$BASE_IMAGE" >/dev/null
    buildah rm "$base_ctr" >/dev/null
    rm -f "$work/bookworm.tar"
    ok "bookworm base made ($((SECONDS - started)) s)"
  else
    tail -20 "$work/mmdebstrap.log" >&2
    fail "mmdebstrap could not make the bookworm base"
    finish
    exit 1
  fi
fi

# ---- build ----------------------------------------------------------------------
log "buildah bud -f deploy/Dockerfile (chroot isolation; Bazel builds inside, ~1.5 min)"
started=$SECONDS
old_image=$(buildah inspect --type image --format '{{.FromImageID}}' "$IMAGE" 2>/dev/null || true)
dangling_before=$(buildah images --quiet --no-trunc --filter dangling=true | sort)
if buildah bud --isolation chroot --network host --pull=never --no-cache --force-rm \
     --build-arg DEBIAN_IMAGE="$BASE_IMAGE" \
     -f "$ROOT/deploy/Dockerfile" -t "$IMAGE" "$ROOT" >"$work/build.log" 2>&1; then
  ok "deploy/Dockerfile builds ($((SECONDS - started)) s)"
  # This build's leftovers (its build stage, the previous image it untagged).
  new_image=$(buildah inspect --type image --format '{{.FromImageID}}' "$IMAGE")
  for leftover in $(comm -13 <(echo "$dangling_before") \
                      <(buildah images --quiet --no-trunc --filter dangling=true | sort)) \
                  "$old_image"; do
    if [ -n "$leftover" ] && [ "${leftover#sha256:}" != "$new_image" ]; then
      buildah rmi "$leftover" >/dev/null 2>&1 || true
    fi
  done
else
  tail -40 "$work/build.log" >&2
  fail "deploy/Dockerfile does not build"
  finish
  exit 1
fi

user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")
entrypoint=$(buildah inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$IMAGE")
if [ "$user" = "65532:65532" ] && [ "$entrypoint" = '[/usr/local/bin/videotask_sidecar]' ]; then
  ok "image runs /usr/local/bin/videotask_sidecar as 65532:65532"
else
  fail "image user is '$user', entrypoint $entrypoint"
fi

# ---- run ----------------------------------------------------------------------------
upstream="http://127.0.0.1:9/kyyReactApiServer/v1"  # nothing is polled without --sim
if [ -n "$sim_bin" ]; then
  "$sim_bin" --port=0 --api_key="$API_KEY" --scenario=demo >"$work/sim.out" 2>"$work/sim.err" &
  sim_pid=$!
  for ((i = 0; i < 100; i++)); do
    grep -qs '^SIM_UPSTREAM_PORT=' "$work/sim.out" && break
    sleep 0.1
  done
  sim_port=$(sed -n 's/^SIM_UPSTREAM_PORT=//p' "$work/sim.out")
  if [ -z "$sim_port" ]; then
    fail "the simulated upstream did not start: $(cat "$work/sim.err")"
    finish
    exit 1
  fi
  upstream="http://127.0.0.1:${sim_port}/kyyReactApiServer/v1"
fi

ctr=$(buildah from --pull=never "$IMAGE")
# chroot isolation shares the host's network, so loopback ports work both ways.
buildah run --isolation chroot --user 65532:65532 --env "VIDEOTASK_API_KEY=$API_KEY" "$ctr" -- \
  /usr/local/bin/videotask_sidecar --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 \
  --upstream_url="$upstream" --poll_interval=200ms --heartbeat_interval=1s --shutdown_grace=5s \
  >"$work/sidecar.out" 2>"$work/sidecar.err" &
runner_pid=$!

for ((i = 0; i < 300; i++)); do
  grep -qs sidecar_started "$work/sidecar.err" && break
  alive "$runner_pid" || break
  sleep 0.1
done
grpc_port=$(grep -o 'grpc_target=[^ ]*' "$work/sidecar.err" | head -1 | sed 's/.*://')
metrics_port=$(grep -o 'metrics_port=[0-9]*' "$work/sidecar.err" | head -1 | cut -d= -f2)
if [ -z "$grpc_port" ] || [ -z "$metrics_port" ]; then
  cat "$work/sidecar.err" >&2
  fail "the image's sidecar did not start"
  finish
  exit 1
fi

# The sidecar's own PID: a descendant of `buildah run` named videotask_sidecar.
find_sidecar() {
  local queue=("$runner_pid") pid child kids
  while [ "${#queue[@]}" -gt 0 ]; do
    pid=${queue[0]}
    queue=("${queue[@]:1}")
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "videotask_sidec" ]; then
      echo "$pid"
      return 0
    fi
    kids=$(cat /proc/"$pid"/task/*/children 2>/dev/null || true)
    for child in $kids; do queue+=("$child"); done
  done
  return 1
}
sidecar_pid=$(find_sidecar || true)
uid=$(awk '/^Uid:/ {print $2}' "/proc/$sidecar_pid/status" 2>/dev/null || true)
if [ -n "$sidecar_pid" ] && [ "$uid" = "65532" ]; then
  ok "the image's sidecar runs as UID 65532 (pid $sidecar_pid, gRPC 127.0.0.1:$grpc_port)"
else
  fail "the image's sidecar process not found or not UID 65532 (pid '$sidecar_pid', uid '$uid')"
fi

in_image() {
  buildah run --isolation chroot --user 65532:65532 "$ctr" -- "$@"
}

serving=0
for ((i = 0; i < 30; i++)); do
  if in_image /usr/local/bin/videotask health --target="127.0.0.1:$grpc_port" --timeout=2s \
       >"$work/health.out" 2>&1; then
    serving=1
    break
  fi
  sleep 1
done
if [ "$serving" -eq 1 ]; then
  ok "videotask health (from the image) answers SERVING"
else
  fail "videotask health never answered SERVING: $(cat "$work/health.out")"
fi

metrics=""
if exec 3<>"/dev/tcp/127.0.0.1/$metrics_port"; then
  printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  metrics=$(timeout 10 cat <&3 || true)
  exec 3<&-
fi
if grep -q '^HTTP/1\.[01] 200' <<<"$metrics" && grep -q '^videotask_active_watches ' <<<"$metrics"; then
  ok "GET /metrics responds (127.0.0.1:$metrics_port)"
else
  fail "GET /metrics: $(head -c 300 <<<"$metrics")"
fi

if [ -n "$sim_bin" ]; then
  if in_image /usr/local/bin/videotask watch demo-completes --target="127.0.0.1:$grpc_port" \
       --timeout=60s --quiet >"$work/watch.out" 2>&1 &&
     grep -q 'VIDEO_TASK_STATUS_COMPLETED' "$work/watch.out"; then
    ok "videotask watch through the image's sidecar reaches COMPLETED (libcurl to the upstream)"
  else
    fail "videotask watch demo-completes: $(tail -5 "$work/watch.out")"
  fi
fi

if [ -n "$sidecar_pid" ]; then
  kill -TERM "$sidecar_pid"
  if wait_gone "$sidecar_pid" 15; then
    set +e
    wait "$runner_pid"
    rc=$?
    set -e
    if [ "$rc" -eq 0 ] && grep -q sidecar_stopped "$work/sidecar.err"; then
      ok "SIGTERM drains the image's sidecar and it exits 0"
    else
      fail "after SIGTERM: exit code $rc; $(tail -3 "$work/sidecar.err")"
    fi
  else
    fail "the image's sidecar still runs 15 s after SIGTERM"
  fi
fi
if grep -q "$API_KEY" "$work/sidecar.err" "$work/sidecar.out"; then
  fail "the API key appears in the sidecar's output"
fi

finish
