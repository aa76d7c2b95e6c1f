#!/usr/bin/env bash
# The benchmark in a small configuration, as CI runs it: it must run to the
# end and its counts must be right (every stream opened and saw COMPLETED,
# one upstream request per task per interval through the sidecar, one per
# watcher per interval for the naive baseline). Speed is not checked here;
# BENCHMARKS.md records the full runs.
set -euo pipefail

BENCH="${1:?usage: $0 path/to/watch_bench}"
OUT="$(mktemp "${TEST_TMPDIR:-/tmp}/watch_bench.XXXXXX")"
trap 'rm -f "$OUT"' EXIT

STREAMS=300
TASKS=10
"$BENCH" --streams="$STREAMS" --tasks="$TASKS" --interval=1s --heartbeat=250ms \
  --idle_window=4s --channels=2 --throughput_requests=500 >"$OUT" || {
  cat "$OUT"
  echo "FAIL: watch_bench exited non-zero" >&2
  exit 1
}
cat "$OUT"

value() { sed -n "s/^$1=//p" "$OUT"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

grep -q '^| measure | sidecar | naive baseline |$' "$OUT" || fail "no result table"
[ "$(value streams_opened)" = "$STREAMS" ] || fail "streams_opened=$(value streams_opened)"
[ "$(value completed_watchers)" = "$STREAMS" ] || fail "completed_watchers=$(value completed_watchers)"
[ "$(value watch_errors)" = "0" ] || fail "watch_errors=$(value watch_errors)"
[ "$(value failures)" = "0" ] || fail "failures=$(value failures)"
[ "$(value threads_before)" -gt 0 ] || fail "threads_before=$(value threads_before)"
# Through the sidecar: one request per task per interval (jitter and the
# window's edges allow a little either way).
awk -v r="$(value upstream_per_task_per_interval)" 'BEGIN { exit !(r >= 0.6 && r <= 1.25) }' ||
  fail "upstream_per_task_per_interval=$(value upstream_per_task_per_interval), want ~1"
# The baseline: one request per watcher per interval, i.e. streams/tasks per task.
awk -v r="$(value baseline_per_task_interval)" -v want=$((STREAMS / TASKS)) \
  'BEGIN { exit !(r >= 0.8 * want && r <= 1.2 * want) }' ||
  fail "baseline_per_task_interval=$(value baseline_per_task_interval), want ~$((STREAMS / TASKS))"
awk -v r="$(value client_requests_per_second)" 'BEGIN { exit !(r > 0) }' ||
  fail "client_requests_per_second=$(value client_requests_per_second)"
echo "PASS"
