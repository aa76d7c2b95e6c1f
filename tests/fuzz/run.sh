#!/usr/bin/env bash
# Builds the libFuzzer targets (--config=fuzz: clang-14, ASan + UBSan) and
# runs each for SECONDS (default 20), one after the other. `./dev fuzz` and
# the fuzz stage of `./dev test` call this.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]
#
# The build uses an output base of its own (CC=clang-14 reconfigures Bazel's
# C++ toolchain for a whole output base; the gcc builds keep theirs), whose
# Bazel server exits after 5 idle minutes. Each run starts from the seeds in
# tests/fuzz/corpus/TARGET and the past findings in regressions/TARGET; what
# it discovers goes to a scratch corpus ($VIDEOTASK_FUZZ_WORK, else a
# temporary directory), so the committed seeds stay small. A crash input is
# kept there and its path printed: copy it to regressions/TARGET/ with the
# fix. Prints one line per target with its figures, then
# "fuzz: N passed, M failed"; exits non-zero on any failure.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT" || exit 2
SECONDS_EACH="${1:-20}"
shift || true
case "$SECONDS_EACH" in '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;; esac

TARGETS=("$@")
if [ "${#TARGETS[@]}" -eq 0 ]; then
  mapfile -t TARGETS < <(sed -n 's/^ *name = "\([a-z_]*_fuzzer\)",$/\1/p' tests/fuzz/BUILD.bazel)
fi

hash="$(printf '%s' "$ROOT" | md5sum | cut -c1-12)"
OUTPUT_BASE="${VIDEOTASK_FUZZ_OUTPUT_BASE:-${XDG_CACHE_HOME:-$HOME/.cache}/bazel-videotask-fuzz-$hash}"
bazel_fuzz() { bazel --output_base="$OUTPUT_BASE" --max_idle_secs=300 "$@"; }

labels=()
for t in "${TARGETS[@]}"; do labels+=("//tests/fuzz:$t"); done
echo "[fuzz] building ${#TARGETS[@]} targets with clang-14 (output base $OUTPUT_BASE)" >&2
if ! bazel_fuzz build --config=fuzz "${labels[@]}" 2>&1 | grep -v "Cannot export local symbol" >&2; then :; fi
if ! bazel_fuzz build --config=fuzz "${labels[@]}" >/dev/null 2>&1; then
  echo "fuzz: build failed"
  printf 'fuzz: 0 passed, %d failed\n' "${#TARGETS[@]}"
  exit 1
fi
BIN="$(bazel_fuzz info --config=fuzz bazel-bin 2>/dev/null)/tests/fuzz"

WORK="${VIDEOTASK_FUZZ_WORK:-}"
if [ -z "$WORK" ]; then
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"

passed=0
failed=0
for t in "${TARGETS[@]}"; do
  mkdir -p "$WORK/$t" "$WORK/artifacts"
  log="$WORK/$t.log"
  regress=()
  [ -d "tests/fuzz/regressions/$t" ] && regress=("tests/fuzz/regressions/$t")
  # -timeout: one input taking this long is a finding (a hang).
  TEST_TMPDIR="$WORK" \
  ASAN_OPTIONS="abort_on_error=1:detect_leaks=1" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    timeout $((SECONDS_EACH + 120)) "$BIN/$t" -max_total_time="$SECONDS_EACH" -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$WORK/artifacts/$t-" \
      "$WORK/$t" "tests/fuzz/corpus/$t" "${regress[@]}" >"$log" 2>&1
  rc=$?
  done_line="$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -1)"
  cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$done_line")"
  ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$done_line")"
  corp="$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$done_line")"
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  eps="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")"
  rss="$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")"
  figures="runs=${runs:-?} exec/s=${eps:-?} cov=${cov:-?} ft=${ft:-?} corpus=${corp:-?} rss=${rss:-?}MB"
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    echo "fuzz: $t PASSED ${SECONDS_EACH}s $figures"
  else
    failed=$((failed + 1))
    echo "fuzz: $t FAILED (exit $rc) $figures"
    grep -E 'FUZZ_CHECK|ERROR: |SUMMARY: |runtime error|Test unit written|artifact_prefix' "$log" | head -20 | sed 's/^/    /'
    tail -n 40 "$log" | sed 's/^/    | /'
    if [ -z "${VIDEOTASK_FUZZ_WORK:-}" ]; then
      keep="$(mktemp -d -t videotask-fuzz-XXXXXX)"
      cp -r "$WORK/artifacts" "$log" "$keep/" 2>/dev/null
      echo "    crash inputs and log kept in $keep"
    fi
  fi
done
printf 'fuzz: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
