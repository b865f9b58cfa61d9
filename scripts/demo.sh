#!/usr/bin/env bash
# Sets up a fresh machine and runs the main job on an embedded default. Until the trainer exists,
# the main job is the attention check: random inputs, ring attention on 4 ranks with the zigzag
# layout, checked against blockwise attention on 1 rank (forward and backward).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

scripts/install-deps.sh
ringattn_build
ranks=${RANKS:-4}
out=${RINGATTN_DEMO_DIR:-runs/demo}
mkdir -p "$out"
bin="$RINGATTN_BUILD/bin/ringattn"
echo "== attention check: ring on $ranks ranks (zigzag, causal) vs blockwise on 1 rank"
"$bin" attention --make-input "$out/input.safetensors" --batch 1 --seq 4096 --heads 8 \
  --kv-heads 2 --head-dim 64 --with-grad --seed 1
OPENBLAS_NUM_THREADS=1 mpirun -np "$ranks" "$bin" attention --input "$out/input.safetensors" \
  --output "$out/ring.safetensors" --impl ring --layout zigzag --causal
"$bin" attention --input "$out/input.safetensors" --output "$out/blockwise.safetensors" \
  --impl blockwise --causal
"$bin" attention --compare "$out/ring.safetensors" "$out/blockwise.safetensors" --tolerance 1e-4
