#!/usr/bin/env bash
# The attention benchmarks of docs/benchmarks.md, in one run: throughput against sgemm, peak bytes
# of vanilla / blockwise / ring as S and N change, and ring balance and KV waiting.
# Writes one JSON per case under ${OUT:-runs/bench} and prints a summary table.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bin="$RINGATTN_BUILD/bin/ringattn"
out=${OUT:-runs/bench}
mkdir -p "$out"
common=(--heads 8 --head-dim 64 --causal)

run() {  # run NAME RANKS ARGS...
  local name=$1 np=$2
  shift 2
  echo "== $name"
  mpirun -np "$np" "$bin" bench attention "${common[@]}" "$@" --json "$out/$name.json" 2>&1 | grep -v '^\['
}

run blockwise_S8192_time 1 --impl blockwise --seq 8192 --kv-heads 8
run ring2_zigzag_S16384 2 --impl ring --layout zigzag --seq 16384 --kv-heads 8
# Memory: one timed iteration is enough, the counts are exact.
for S in 2048 4096 8192; do run vanilla_S$S 1 --impl vanilla --seq $S --kv-heads 8 --warmup 0 --repeat 1; done
for S in 4096 8192 16384; do run blockwise_S$S 1 --impl blockwise --seq $S --kv-heads 8 --warmup 0 --repeat 1; done
for np in 2 4; do run ring${np}_zigzag_S16384_mem $np --impl ring --layout zigzag --seq 16384 --kv-heads 8 --warmup 0 --repeat 1; done
# The same with grouped-query attention (Hkv = H/4, as LLaMA-style models use): KV and dK/dV
# buffers that travel the ring are 4x smaller.
for np in 1 2 4; do
  impl=ring; [ "$np" = 1 ] && impl=blockwise
  run gqa_${impl}${np}_S16384_mem $np --impl $impl --layout zigzag --seq 16384 --kv-heads 2 --warmup 0 --repeat 1
done

python3 - "$out" <<'PY'
import json, glob, os, sys
rows = []
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    j = json.load(open(f))
    rows.append((os.path.basename(f)[:-5], j))
print(f"{'case':28} {'Hkv':>3} {'S':>6} {'N':>2} {'fwd+bwd ms':>11} {'GFLOP/s':>8} {'sgemm':>7} {'%':>4} {'peak MiB':>9} {'own MiB':>8} {'wait%':>6} {'slow/fast':>9}")
for name, j in rows:
    r = j["rank_ms"]
    print(f"{name:28} {j['Hkv']:3d} {j['S']:6d} {j['ranks']:2d} {j['fwdbwd_ms']:11.1f} {j['gflops_fwdbwd']:8.1f} {j['sgemm_gflops']:7.1f} "
          f"{100*j['fraction_of_sgemm']:4.0f} {j['peak_bytes']/2**20:9.1f} {j['workspace_peak_bytes']/2**20:8.1f} "
          f"{100*j['kv_wait_fraction']:6.1f} {max(r)/min(r):9.3f}")
PY
