#!/usr/bin/env bash
# End-to-end checks of the training benchmarks: `bench train`, `bench throughput` and
# `bench max-context` on a tiny model (seconds each), checking that the JSON and CSV they write
# hold every field. Figures are not judged (performance is measured, not tested).
# Usage: bench_test.sh path/to/ringattn
set -uo pipefail
bin=${1:?usage: bench_test.sh RINGATTN_BINARY}
# shellcheck source=test/cli/lib.sh
source "$(dirname "$0")/lib.sh"

run() { expect_ok "$@"; }  # run NAME CMD...: must succeed

# check_json NAME FILE PYTHON-EXPR: the expression, over the parsed file `j`, must be true.
check_json() {
  if python3 -c "import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if ($3) else 1)" "$2" 2>/dev/null; then
    pass "$1"
  else
    fail "$1 ($3)"
  fi
}

cfgdir=$(cd "$(dirname "$0")/../../configs" && pwd)
tiny=(--config "$cfgdir/tiny.json" --set run_dir="$tmp/run" --set data.retrieval.num_records=4
  --set memory_limit_gb=0.008)

run "bench train on 2 ranks (ring)" mpirun -np 2 "$bin" bench train "${tiny[@]}" --set train.seq_len=256 \
  --steps 2 --json "$tmp/train.json"
check_json "bench train: throughput and MFU" "$tmp/train.json" \
  "j['tokens_per_s'] > 0 and 0 < j['mfu'] < 1 and j['sgemm_gflops'] > 0 and j['timed_steps'] == 1"
check_json "bench train: peak bytes per rank" "$tmp/train.json" \
  "len(j['rank_peak_bytes']) == 2 and j['peak_bytes'] == max(j['rank_peak_bytes']) > 0"
check_json "bench train: the peak's composition adds up to rank 0's peak; the plan is near it" \
  "$tmp/train.json" \
  "sum(p['bytes'] for p in j['rank0_peak_composition']) <= j['rank_peak_bytes'][0] and sum(p['bytes'] for p in j['rank0_peak_composition']) >= 0.95 * j['rank_peak_bytes'][0] and 0.9 < j['memory_plan_bytes'] / j['rank_peak_bytes'][0] < 1.5"
check_json "bench train: time breakdown" "$tmp/train.json" \
  "all(k in j['time_fraction'] for k in ('gemm','attention','elementwise','communication','other')) and j['breakdown_mean_s']['gemm_s'] > 0 and j['breakdown_mean_s']['attention_s'] > 0 and len(j['rank_breakdown_s']) == 2 and all(k in j['breakdown_mean_s'] for k in ('fsdp_gather_wait_s','fsdp_reduce_scatter_wait_s','dp_all_reduce_s','ring_kv_wait_s','other_s'))"
check_json "bench train: categories within the step" "$tmp/train.json" \
  "abs(sum(j['time_fraction'].values()) - 1) < 1e-6 and min(j['time_fraction'].values()) >= 0"

run "bench train in bf16 (MFU against the bf16 GEMM)" "$bin" bench train "${tiny[@]}" \
  --set mesh.sp=1 --set model.dtype=bf16 --set train.seq_len=128 --steps 2 --json "$tmp/train_bf16.json"
check_json "bench train bf16: peak is the bf16 GEMM" "$tmp/train_bf16.json" \
  "j['peak_gemm'] == 'bf16 GEMM' and j['peak_gemm_gflops'] > 0 and 'sgemm_gflops' not in j and 0 < j['mfu'] < 1"

run "bench throughput on 2 ranks" mpirun -np 2 "$bin" bench throughput "${tiny[@]}" \
  --seq-lens 128,256 --steps 2
check_json "bench throughput: a row per implementation and length" "$tmp/run/throughput.json" \
  "len(j['rows']) == 8 and all(r['tokens_per_s'] > 0 and r['peak_bytes'] > 0 for r in j['rows'])"
if [ "$(wc -l <"$tmp/run/throughput.csv")" -eq 9 ]; then pass "throughput.csv rows"; else fail "throughput.csv rows"; fi

run "bench max-context on 2 ranks" mpirun -np 2 "$bin" bench max-context "${tiny[@]}" \
  --impls blockwise_ffn,ring --resolution 0.25
check_json "max_context.json fields" "$tmp/run/max_context.json" \
  "[r['impl'] for r in j['results']] == ['blockwise_ffn','ring'] and all(set(['impl','ffn_blockwise','ranks','max_seq_len','peak_bytes']) <= set(r) for r in j['results'])"
check_json "max context: found lengths fit, ring goes further" "$tmp/run/max_context.json" \
  "all(0 < r['peak_bytes'] <= r['limit_bytes'] and r['max_seq_len'] > 0 and r['ranks'] == 2 for r in j['results']) and j['results'][1]['max_seq_len'] > j['results'][0]['max_seq_len']"
if [ -s "$tmp/run/max_context.csv" ]; then pass "max_context.csv written"; else fail "max_context.csv written"; fi

out=$("$bin" bench max-context --config "$cfgdir/tiny.json" --set memory_limit_gb=0 2>&1)
if [ $? -ne 0 ] && grep -q "memory_limit_gb" <<<"$out"; then pass "max-context without a limit"; else fail "max-context without a limit: $out"; fi
out=$("$bin" bench throughput --config "$cfgdir/tiny.json" --impls fast 2>&1)
if [ $? -ne 0 ] && grep -q "expected vanilla, blockwise, blockwise_ffn or ring" <<<"$out"; then pass "unknown impl"; else fail "unknown impl: $out"; fi

if [ $failures -ne 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "all bench CLI checks passed"
