#!/usr/bin/env bash
# Submits one Slurm job (scripts/slurm/train.sbatch) per training config: each CONFIG named, and
# each *.json in each DIR named.
#
#   scripts/slurm/sweep.sh [--dry-run] CONFIG|DIR... [sbatch options...] [-- ringattn options...]
#
#   scripts/slurm/sweep.sh configs/experiments/compare_*.json --ntasks-per-node=4 --gpus-per-node=0
#   scripts/slurm/sweep.sh configs/experiments/compare_*.json --ntasks-per-node=4 \
#     --gpus-per-node=0 --cpus-per-task=1 --time=1:00:00 -- --set train.steps=200
#   scripts/slurm/sweep.sh --dry-run configs/experiments/compare_*.json --ntasks-per-node=4
#
# Every config, in the order given (a DIR's in name order), becomes a job named after the file (so
# its run directory is runs/<name>-<job id> and its log <name>-<job id>.out). The arguments up to
# the first one that starts with `-` are configs and directories; options after them and before
# `--` go to every sbatch, options after `--` to every trainer (--set overrides). --dry-run prints
# the sbatch commands only. Run from the repository: the jobs run in the submit directory.
# Each job has train.sbatch's tasks (8 per node) unless an sbatch option says otherwise, and every
# config's mesh must fit that count. In configs/experiments/, compare_*.json train on the CPU and
# are sized for 4 ranks (batch_size 4: 8 tasks fail), hence --ntasks-per-node=4 --gpus-per-node=0;
# max_context_cpu.json and throughput_cpu.json are for `ringattn bench`, not training jobs
# (docs/experiments.md).
set -euo pipefail
sbatch_file=$(cd "$(dirname "$0")" && pwd)/train.sbatch

dry_run=0
if [ "${1:-}" = --dry-run ]; then
  dry_run=1
  shift
fi
if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 2
fi
shopt -s nullglob
configs=()
while [ $# -gt 0 ] && [[ $1 != -* ]]; do
  if [ -d "$1" ]; then
    found=("$1"/*.json)
    [ ${#found[@]} -gt 0 ] || { echo "sweep.sh: no *.json in '$1'" >&2; exit 2; }
    configs+=("${found[@]}")
  elif [ -f "$1" ]; then
    configs+=("$1")
  else
    echo "sweep.sh: no config file or directory '$1'" >&2
    exit 2
  fi
  shift
done
if [ ${#configs[@]} -eq 0 ]; then
  echo "sweep.sh: name config files or directories first, then the sbatch options (see --help)" >&2
  exit 2
fi
sbatch_opts=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
  sbatch_opts+=("$1")
  shift
done
[ $# -eq 0 ] || shift  # the --

submitted=0
for config in "${configs[@]}"; do
  name=$(basename "$config" .json)
  cmd=(sbatch --parsable --job-name="$name" "${sbatch_opts[@]}" "$sbatch_file" "$config" "$@")
  echo "+ $(printf '%q ' "${cmd[@]}")"
  [ "$dry_run" = 1 ] && continue
  id=$("${cmd[@]}")
  echo "$name: job $id, log $name-$id.out, run directory runs/$name-$id"
  submitted=$((submitted + 1))
done
[ "$dry_run" = 1 ] || echo "submitted $submitted job(s); watch them with: squeue -u $(id -un)"
