#!/usr/bin/env bash
# The ringattn executable on the simulated GPU (a -DRINGATTN_CUDA=SIM build, core/cuda_sim): the
# attention tool with --device cuda, one rank and a ring of two ranks sharing the simulated GPU
# through the MPI transport, against the CPU; the fused kernels (their body on the simulation's
# host block) against the bf16 tiles, as on a GPU; and the fused path of `bench attention` and
# `bench train`. (What scripts/gpu/check.sh's stages 2, 6 and 7 do on a GPU, at sizes the
# simulation runs in seconds.)
# Usage: cuda_sim_test.sh path/to/ringattn
set -uo pipefail
bin=${1:?usage: cuda_sim_test.sh RINGATTN_BINARY}
# shellcheck source=test/cli/lib.sh
source "$(dirname "$0")/lib.sh"
root=$(cd "$(dirname "$0")/../.." && pwd)
export OPENBLAS_NUM_THREADS=1

"$bin" --version | grep -q "CUDA devices visible: 1" && pass "--version: one simulated GPU" ||
  fail "--version: $("$bin" --version | tr '\n' ' ')"

expect_ok "make input" "$bin" attention --make-input "$tmp/in.safetensors" --batch 2 --seq 192 \
  --heads 4 --kv-heads 2 --head-dim 32 --with-grad --segments 2
expect_ok "blockwise on the CPU" "$bin" attention --input "$tmp/in.safetensors" \
  --output "$tmp/cpu.safetensors" --impl blockwise --causal --q-chunk 32 --k-chunk 48
for precision in f32 bf16; do
  tol=1e-4
  [ $precision = bf16 ] && tol=8e-3
  expect_ok "blockwise on the GPU ($precision)" "$bin" attention --input "$tmp/in.safetensors" \
    --output "$tmp/gpu.safetensors" --impl blockwise --causal --q-chunk 32 --k-chunk 48 \
    --device cuda --precision $precision
  expect_ok "blockwise GPU == CPU ($precision)" "$bin" attention --compare "$tmp/gpu.safetensors" \
    "$tmp/cpu.safetensors" --tolerance $tol
  expect_ok "ring on 2 ranks on the GPU ($precision)" mpirun -np 2 "$bin" attention \
    --input "$tmp/in.safetensors" --output "$tmp/ring.safetensors" --impl ring --layout zigzag \
    --causal --q-chunk 32 --k-chunk 48 --device cuda --precision $precision
  expect_ok "ring GPU == CPU ($precision)" "$bin" attention --compare "$tmp/ring.safetensors" \
    "$tmp/cpu.safetensors" --tolerance $tol
done
# The compare itself can fail: a float32 result against the bf16 one differs beyond 1e-4.
expect_error "bf16 GPU != f32 CPU at 1e-4" "MISMATCH" "$bin" attention \
  --compare "$tmp/ring.safetensors" "$tmp/cpu.safetensors" --tolerance 1e-4
# The fused kernels, as stage 2 of scripts/gpu/check.sh compares them: against the bf16 tiles
# (8e-3, the tests' fused tolerance), on one rank and as a 2-rank ring.
expect_ok "bf16 tiles on the GPU" "$bin" attention --input "$tmp/in.safetensors" \
  --output "$tmp/tiles.safetensors" --impl blockwise --causal --device cuda --precision bf16 \
  --q-chunk 64 --k-chunk 64
expect_ok "fused kernels on the GPU" "$bin" attention --input "$tmp/in.safetensors" \
  --output "$tmp/fused.safetensors" --impl blockwise --causal --device cuda --precision bf16 \
  --kernel fused
expect_ok "fused == bf16 tiles" "$bin" attention --compare "$tmp/fused.safetensors" \
  "$tmp/tiles.safetensors" --tolerance 8e-3
expect_ok "fused ring on 2 ranks" mpirun -np 2 "$bin" attention --input "$tmp/in.safetensors" \
  --output "$tmp/fused_ring.safetensors" --impl ring --layout zigzag --causal --device cuda \
  --precision bf16 --kernel fused
expect_ok "fused ring == bf16 tiles" "$bin" attention --compare "$tmp/fused_ring.safetensors" \
  "$tmp/tiles.safetensors" --tolerance 8e-3
expect_ok "make input, head dim 40" "$bin" attention --make-input "$tmp/d40.safetensors" \
  --seq 64 --heads 2 --kv-heads 2 --head-dim 40 --with-grad
expect_error "fused kernels refuse head dim 40" "multiple of 16" "$bin" attention \
  --input "$tmp/d40.safetensors" --output "$tmp/d40_out.safetensors" --impl blockwise \
  --device cuda --precision bf16 --kernel fused

# The benchmarks' fused path, as stages 6 and 7 run it (the figures mean nothing here).
expect_ok "bench attention --fused" "$bin" bench attention --device cuda --impl blockwise \
  --seq 256 --heads 4 --kv-heads 2 --head-dim 32 --causal --q-chunk 64 --k-chunk 64 --fused \
  --json "$tmp/bench_attention.json"
grep -q '"kernel": "fused"' "$tmp/bench_attention.json" && pass "bench attention: fused in the JSON" ||
  fail "bench attention: no fused kernel in $tmp/bench_attention.json"
expect_ok "bench train, fused" "$bin" bench train --config "$root/configs/tiny.json" \
  --set device=cuda --set model.dtype=bf16 --set attention.kernel=fused --set mesh.sp=1 \
  --set train.seq_len=128 --set train.batch_size=1 --set run_dir="$tmp/bench_train" --steps 2 \
  --json "$tmp/bench_train.json"

# A device fault on one rank mid-run (the simulation's injected fault, at the 150th kernel launch
# of rank 1's resumed run: step 3 or 4 of 4), over each transport: the job ends at once (the peer
# waits in a collective: rank 1 ends the job), the failing call is named with file and line, and
# the checkpoint saved before is intact: the run resumes from it to the end.
tbase=(--config "$root/configs/tiny.json" --set device=cuda --set train.seq_len=128
  --set train.batch_size=1 --set train.steps=4 --set checkpoint.every=2 --set checkpoint.keep_last=0
  --set eval.every=0 --set peak_tflops=1)
for transport in mpi nccl; do
  run=$tmp/fault_$transport
  expect_ok "train to step 2 ($transport)" mpirun -np 2 "$bin" train "${tbase[@]}" \
    --set comm.transport=$transport --set run_dir="$run" --set train.steps=2
  start=$(date +%s)
  out=$(RINGATTN_DEBUG_FAULTS=sim_fault_launch=150,sim_fault_rank=1 timeout 60 mpirun -np 2 "$bin" \
    train "${tbase[@]}" --set comm.transport=$transport --set run_dir="$run" --resume 2>&1)
  rc=$?
  took=$(($(date +%s) - start))
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] &&
    grep -q "resumed from .*step_2" <<<"$out" &&
    grep -q "injected: sim_fault_launch=150" <<<"$out" &&
    grep -q "\[rank 1\] \[error\] [A-Z]* error in .* (at [a-z/_]*\.c[a-z]*:[0-9]*)" <<<"$out"; then
    pass "a device fault on rank 1 after resuming ends the job, naming the call ($transport)"
  else
    fail "device fault on rank 1 ($transport, exit $rc): $(tail -4 <<<"$out")"
  fi
  [ "$took" -lt 20 ] && pass "the fault ended the job in ${took} s ($transport)" ||
    fail "the fault took ${took} s to end the job ($transport)"
  [ -f "$run/checkpoints/step_2/COMPLETE" ] && [ ! -e "$run/checkpoints/step_4" ] &&
    pass "step 2's checkpoint kept, no step 4 ($transport)" ||
    fail "checkpoints after the fault ($transport): $(ls "$run/checkpoints")"
  out=$(timeout 120 mpirun -np 2 "$bin" train "${tbase[@]}" --set comm.transport=$transport \
    --set run_dir="$run" --resume 2>&1) && grep -q "resumed from .*step_2" <<<"$out" &&
    [ -f "$run/checkpoints/step_4/COMPLETE" ] &&
    pass "resumed from step 2 to step 4 after the fault ($transport)" ||
    fail "resume after the fault ($transport): $(tail -3 <<<"$out")"
done
RINGATTN_DEBUG_FAULTS=sim_fault_launch=15O "$bin" --version >"$tmp/typo.log" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q "RINGATTN_DEBUG_FAULTS: 'sim_fault_launch=15O' is not KEY=INTEGER" "$tmp/typo.log" &&
  pass "a typo in the fault's launch number ends the program at its start" ||
  fail "typo in sim_fault_launch (exit $rc): $(tail -2 "$tmp/typo.log")"
RINGATTN_DEBUG_FAULTS=sim_fault_lunch=150 "$bin" --version >"$tmp/typo.log" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q "RINGATTN_DEBUG_FAULTS: unknown key 'sim_fault_lunch'" "$tmp/typo.log" &&
  pass "a misspelt fault key ends the program at its start" ||
  fail "misspelt sim_fault_launch (exit $rc): $(tail -2 "$tmp/typo.log")"
RINGATTN_DEBUG_FAULTS=sim_fault_launch=0 "$bin" --version >"$tmp/typo.log" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q "sim_fault_launch=0 must be at least 1" "$tmp/typo.log" &&
  pass "a fault at launch 0 (which would never fire) ends the program at its start" ||
  fail "sim_fault_launch=0 (exit $rc): $(tail -2 "$tmp/typo.log")"

cli_summary
