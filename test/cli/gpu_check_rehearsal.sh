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
tar -tzf "$tmp/gpu.tgz" >"$tmp/pack.txt" && grep -q "summary.txt" "$tmp/pack.txt" && pass "the pack holds the summary" ||
  fail "the pack $tmp/gpu.tgz has no summary.txt"
# The exit status follows the summary: a stage that does not exist is reported, and a failing
# stage makes it non-zero.
OUT=$tmp/fail RINGATTN_GPU_REHEARSAL=1 RINGATTN_GPU_BIN=$bin RINGATTN_GPU_STAGES="2" \
  RINGATTN_GPU_DEADLINE=1 bash "$root/scripts/gpu/check.sh" >"$tmp/fail.log" 2>&1 &&
  fail "check.sh exits 0 with its only stage skipped" || pass "a skipped stage: non-zero exit"

cli_summary
