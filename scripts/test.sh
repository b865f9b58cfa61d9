#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: installs dependencies, builds once, runs ctest
# (single- and multi-rank tests under mpirun with 1, 2 and 4 ranks), then the stages that need
# more than ctest: a real one-node Slurm cluster running the sbatch script.
# Extra arguments go to ctest, e.g. scripts/test.sh -R attention
# RINGATTN_SKIP_SLURM_TEST=1 skips the Slurm stage (never in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

scripts/install-deps.sh
ringattn_build
"$RINGATTN_BUILD/bin/ringattn" --version
(cd "$RINGATTN_BUILD" && ctest --output-on-failure --timeout 900 "$@")

if [ "${RINGATTN_SKIP_SLURM_TEST:-0}" != 1 ]; then
  echo "== Slurm: one-node cluster on localhost, submit, resume, preempt (scripts/slurm/test-local.sh)"
  scripts/slurm/test-local.sh
fi
