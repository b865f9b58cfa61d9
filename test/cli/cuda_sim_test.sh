#!/usr/bin/env bash
# The ringattn executable on the simulated GPU (a -DRINGATTN_CUDA=SIM build, core/cuda_sim): the
# attention tool with --device cuda, one rank and a ring of two ranks sharing the simulated GPU
# through the MPI transport, against the CPU; and the fused kernels, which the simulated build
# lacks, refused with a message that says so. (What scripts/gpu/check.sh's stage 2 does on a GPU,
# at a size the simulation runs in seconds.)
# Usage: cuda_sim_test.sh path/to/ringattn
set -uo pipefail
bin=${1:?usage: cuda_sim_test.sh RINGATTN_BINARY}
# shellcheck source=test/cli/lib.sh
source "$(dirname "$0")/lib.sh"
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
expect_error "no fused kernels simulated" "do not run in the simulated CUDA build" "$bin" attention \
  --input "$tmp/in.safetensors" --output "$tmp/fused.safetensors" --impl blockwise --causal \
  --device cuda --precision bf16 --kernel fused

cli_summary
