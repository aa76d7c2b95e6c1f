#!/usr/bin/env bash
# The standalone simulated upstream as scripts use it: the port line, the
# demo scenario, the key from the flag or the environment, the control API,
# and exit 0 on SIGTERM/SIGINT. Plain bash: HTTP over /dev/tcp.
set -euo pipefail

BIN="${1:?usage: $0 path/to/sim_upstream_server}"
WORK="$(mktemp -d "${TEST_TMPDIR:-/tmp}/sim_server_test.XXXXXX")"
PID=""
cleanup() {
  if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }

# start ARGS... : starts the server with stdout/stderr in $WORK; sets PID, PORT.
start() {
  : >"$WORK/out"
  : >"$WORK/err"
  "$BIN" "$@" >"$WORK/out" 2>"$WORK/err" &
  PID=$!
  PORT=""
  for _ in $(seq 1 200); do
    PORT="$(sed -n 's/^SIM_UPSTREAM_PORT=\([0-9][0-9]*\)$/\1/p' "$WORK/out")"
    [[ -n "$PORT" ]] && break
    kill -0 "$PID" 2>/dev/null || fail "server exited early: $(cat "$WORK/err")"
    sleep 0.05
  done
  [[ -n "$PORT" ]] || fail "no SIM_UPSTREAM_PORT line; stdout: $(cat "$WORK/out")"
}

# stop SIGNAL: signals the server, expects exit 0 within 5 s.
stop() {
  kill "-$1" "$PID"
  for _ in $(seq 1 100); do
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.05
  done
  kill -0 "$PID" 2>/dev/null && fail "still running 5 s after SIG$1"
  local rc=0
  wait "$PID" || rc=$?
  PID=""
  [[ "$rc" == 0 ]] || fail "exit status $rc after SIG$1"
}

# http METHOD PATH [KEY] [BODY]: prints "STATUS BODY".
http() {
  local method="$1" path="$2" key="${3:-}" body="${4:-}" auth="" reply
  [[ -n "$key" ]] && auth="Authorization: Bearer $key"$'\r\n'
  exec 3<>"/dev/tcp/127.0.0.1/$PORT"
  printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "$method" "$path" "$auth" "${#body}" "$body" >&3
  reply="$(cat <&3)"
  exec 3<&-
  local status="${reply#HTTP/1.1 }"
  status="${status%% *}"
  echo "$status ${reply##*$'\r\n\r\n'}"
}

status_of() {  # status_of ID KEY: the task's "status" field, or the HTTP code
  local r
  r="$(http GET "/kyyReactApiServer/v1/result/$1" "$2")"
  if [[ "$r" == 200\ * ]]; then
    sed -n 's/.*"status":"\([a-z]*\)".*/\1/p' <<<"$r"
  else
    echo "${r%% *}"
  fi
}

expect_seq() {  # expect_seq ID KEY S1 S2 ...
  local id="$1" key="$2" got
  shift 2
  for want in "$@"; do
    got="$(status_of "$id" "$key")"
    [[ "$got" == "$want" ]] || fail "$id: got $got, want $want"
  done
}

# --- demo scenario, key from the flag, SIGTERM ------------------------------
start --port=0 --api_key=flag-key --scenario=demo --verbose
[[ "$(wc -l <"$WORK/out")" == 1 ]] || fail "stdout is not exactly one line: $(cat "$WORK/out")"
expect_seq demo-completes flag-key queued queued processing processing processing completed completed
r="$(http GET /kyyReactApiServer/v1/result/demo-completes flag-key)"
[[ "$r" == *'"video_url":"https://cdn.invalid/videos/demo-completes.mp4"'* ]] || fail "no video_url: $r"
[[ "$r" == *'"actualDuration":8'* ]] || fail "no actualDuration: $r"
expect_seq demo-fails flag-key queued processing failed
r="$(http GET /kyyReactApiServer/v1/result/demo-fails flag-key)"
[[ "$r" == *'"error":"unsupported reference material"'* ]] || fail "no error: $r"
expect_seq some-other-id flag-key queued processing processing completed
expect_seq demo-fails wrong-key 401
expect_seq demo-fails "" 401
# The control API.
r="$(http PUT /_sim/tasks/scripted "" '{"queued_polls":0,"processing_polls":1,"fails":true,"error":"x"}')"
[[ "$r" == 204* ]] || fail "PUT task: $r"
expect_seq scripted flag-key processing failed
r="$(http POST /_sim/faults "" '{"id":"scripted","kind":"rate_limit","retry_after":"3"}')"
[[ "$r" == 204* ]] || fail "POST fault: $r"
expect_seq scripted flag-key 429 failed
r="$(http POST /_sim/faults "" '{"kind":"volcano"}')"
[[ "$r" == 400* ]] || fail "bad fault: $r"
r="$(http GET /_sim/counts)"
[[ "$r" == '200 {"tasks":{'*'"scripted":4'*'},"total":22}' ]] || fail "counts: $r"
[[ "$(http POST /_sim/reset)" == 204* ]] || fail "reset"
[[ "$(http GET /_sim/counts)" == '200 {"tasks":{},"total":0}' ]] || fail "counts after reset"
grep -q 'GET /kyyReactApiServer/v1/result/demo-completes -> 200' "$WORK/err" || fail "--verbose logged nothing: $(cat "$WORK/err")"
grep -q 'flag-key' "$WORK/err" && fail "the key was logged"
stop TERM

# --- the key from the environment; the flag wins over it; SIGINT ------------
VIDEOTASK_SIM_API_KEY=env-key start --scenario=demo
expect_seq demo-fails env-key queued
expect_seq demo-fails sim-key 401
[[ ! -s "$WORK/err" ]] || fail "logs without --verbose: $(cat "$WORK/err")"
stop INT
VIDEOTASK_SIM_API_KEY=env-key start --api_key=flag-key
expect_seq demo-fails flag-key queued
expect_seq demo-fails env-key 401
stop TERM
start
expect_seq demo-fails sim-key queued  # the default key
stop TERM

# --- the empty scenario: unknown ids are 404 ---------------------------------
start --scenario=empty --threads=2
expect_seq demo-completes sim-key 404
[[ "$(http PUT /_sim/tasks/t "" '{}')" == 204* ]] || fail "PUT"
expect_seq t sim-key queued processing completed
stop TERM

# --- bad flags ---------------------------------------------------------------
rc=0
"$BIN" --scenario=nope >/dev/null 2>&1 || rc=$?
[[ "$rc" != 0 ]] || fail "--scenario=nope was accepted"
rc=0
"$BIN" --port=70000 >/dev/null 2>&1 || rc=$?
[[ "$rc" != 0 ]] || fail "--port=70000 was accepted"

echo PASS
