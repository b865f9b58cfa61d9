#!/usr/bin/env bash
# Sets up a fresh machine and runs the main job: trains the small model of configs/demo.json on
# the embedded retrieval task (no files needed) with ring attention over 4 ranks on the CPU, then
# evaluates it on held-out samples at 2048 tokens and checks the answer accuracy.
#
#   scripts/demo.sh                      # train (resumes if a run exists), evaluate, check
#   RANKS=4 MIN_ACCURACY=0.5 scripts/demo.sh
#   scripts/demo.sh --set run_dir=runs/demo2   # extra --set overrides go to train and eval
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

scripts/install-deps.sh
ringattn_build
ranks=${RANKS:-4}
min_accuracy=${MIN_ACCURACY:-0.5}
config=${DEMO_CONFIG:-configs/demo.json}
bin="$RINGATTN_BUILD/bin/ringattn"

echo "== training $config: ring attention over $ranks ranks (a progress line every few steps)"
start=$(date +%s)
mpirun -np "$ranks" "$bin" train --config "$config" --resume "$@"
echo "== training took $(($(date +%s) - start)) s"

echo "== evaluating on held-out samples (exact answer accuracy must be >= $min_accuracy)"
mpirun -np "$ranks" "$bin" eval --config "$config" --min-accuracy "$min_accuracy" "$@"
echo "== demo passed"
