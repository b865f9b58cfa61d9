#!/usr/bin/env bash
# scripts/gpu/check.sh rehearsed on the simulated GPU (a -DRINGATTN_CUDA=SIM build): every stage a
# lease runs, at the rehearsal's sizes, with nvidia-smi and compute-sanitizer stood in for, must
# pass, so that a broken command (a renamed flag or config key, a test filter that matches
# nothing, a shell quoting slip) shows here and not in a GPU lease's minutes. Stages 3 and 4 are
# left out: they run the [device] and [cuda] groups, which ctest runs itself (device_np*,
# cuda_np1). Stage 1 (the build) is not needed: the binaries are this build's.
# Usage: gpu_check_rehearsal.sh BIN_DIR
set -uo pipefail
bin=${1:?usage: gpu_check_rehearsal.sh BIN_DIR}
# shellcheck source=test/cli/lib.sh
source "$(dirname "$0")/lib.sh"
root=$(cd "$(dirname "$0")/../.." && pwd)
stages="0 2 9 5 6 7 8"

OUT=$tmp/check RINGATTN_GPU_REHEARSAL=1 RINGATTN_GPU_BIN=$bin RINGATTN_GPU_STAGES="$stages" \
  RINGATTN_GPU_PACK=$tmp/gpu.tgz bash "$root/scripts/gpu/check.sh" >"$tmp/console.log" 2>&1
rc=$?
summary=$tmp/check/summary.txt
for n in $stages; do
  line=$(grep "^stage $n " "$summary" 2>/dev/null)
  case "$line" in
    *" ok "*) pass "stage $n: ${line#stage $n }" ;;
    "") fail "stage $n: not in the summary" ;;
    *) fail "stage $n: $line"$'\n'"$(tail -20 "$(awk '{print $NF}' <<<"$line")")" ;;
  esac
done
[ $rc -eq 0 ] && pass "check.sh exits 0" || fail "check.sh exits $rc: $(tail -5 "$tmp/console.log")"
tar -tzf "$tmp/gpu.tgz" >"$tmp/pack.txt" && grep -q "summary.txt" "$tmp/pack.txt" &&
  pass "the pack holds the summary" || fail "the pack $tmp/gpu.tgz has no summary.txt"
grep -q "^REHEARSAL" "$summary" && pass "the summary says it is a rehearsal" ||
  fail "the summary does not say it is a rehearsal"
# The exit status follows the summary: a stage skipped for the deadline, a stage that does not
# exist and a failing stage each make it non-zero, and each is in the summary.
# exits_non_zero NAME PATTERN STAGES DIR [ENV...]: check.sh, run for STAGES into $tmp/DIR with
# ENV set, exits non-zero and its summary has a line matching PATTERN.
exits_non_zero() {
  local name=$1 pattern=$2 stages=$3 dir=$tmp/$4
  shift 4
  env OUT="$dir" RINGATTN_GPU_REHEARSAL=1 RINGATTN_GPU_BIN="$bin" RINGATTN_GPU_STAGES="$stages" \
    "$@" bash "$root/scripts/gpu/check.sh" >"$dir.log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ] && grep -qE "$pattern" "$dir/summary.txt"; then
    pass "$name: exit $rc"
  else
    fail "$name: exit $rc, summary: $(cat "$dir/summary.txt" 2>/dev/null)"
  fi
}
exits_non_zero "a stage skipped for the deadline" "^stage 2 .*SKIPPED" 2 skipped \
  RINGATTN_GPU_DEADLINE=1
exits_non_zero "an unknown stage" "^stage 12 .*no such stage" "0 12" unknown
# A test binary that fails: stage 9 runs it under the compute-sanitizer stand-in.
mkdir -p "$tmp/bad_bin"
ln -s "$bin/ringattn" "$tmp/bad_bin/ringattn"
printf '#!/bin/sh\necho "failing on purpose"; exit 1\n' >"$tmp/bad_bin/ringattn_tests"
chmod +x "$tmp/bad_bin/ringattn_tests"
bin=$tmp/bad_bin exits_non_zero "a failing stage" "^stage 9 .*FAILED" 9 failing

cli_summary
