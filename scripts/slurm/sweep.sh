#!/usr/bin/env bash
# Submits one Slurm job (scripts/slurm/train.sbatch) per experiment config in a directory.
#
#   scripts/slurm/sweep.sh [--dry-run] DIR [sbatch options...] [-- ringattn options...]
#
#   scripts/slurm/sweep.sh configs/experiments
#   scripts/slurm/sweep.sh configs/experiments --nodes=2 --time=4:00:00 -- --set train.steps=200
#   scripts/slurm/sweep.sh --dry-run configs/experiments --partition=gpu
#
# Every DIR/*.json, in name order, becomes a job named after the file (so its run directory is
# runs/<name>-<job id> and its log <name>-<job id>.out). Options before `--` go to every sbatch,
# options after it to every trainer (--set overrides). --dry-run prints the sbatch commands only.
# Run from the repository: the jobs run in the submit directory.
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
dir=$1
shift
[ -d "$dir" ] || { echo "sweep.sh: no directory '$dir'" >&2; exit 2; }
sbatch_opts=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
  sbatch_opts+=("$1")
  shift
done
[ $# -eq 0 ] || shift  # the --
shopt -s nullglob
configs=("$dir"/*.json)
[ ${#configs[@]} -gt 0 ] || { echo "sweep.sh: no *.json in '$dir'" >&2; exit 2; }

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
