#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: installs dependencies, builds once, runs ctest
# (single- and multi-rank tests under mpirun with 1, 2 and 4 ranks), then the stages that need
# more than ctest: a real one-node Slurm cluster running the sbatch script, the libFuzzer
# targets (clang) for a bounded time on their seed corpus, and the whole ctest suite again built
# with AddressSanitizer + UndefinedBehaviorSanitizer (its own build directory).
# Extra arguments go to ctest, e.g. scripts/test.sh -R attention
# RINGATTN_SKIP_SLURM_TEST=1 / RINGATTN_SKIP_FUZZ=1 / RINGATTN_SKIP_SANITIZERS=1 skip those
# stages (never in CI);
# FUZZ_SECONDS sets each fuzz target's time (default here 30).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

scripts/install-deps.sh
ringattn_build
"$RINGATTN_BUILD/bin/ringattn" --version
# -j: the tests declare how many processes they start (PROCESSORS), so ctest pairs one-rank
# groups and runs the 4-rank ones and the CLI scripts alone.
(cd "$RINGATTN_BUILD" && ctest --output-on-failure --timeout 900 -j "${RINGATTN_JOBS:-$(nproc 2>/dev/null || echo 2)}" "$@")

if [ "${RINGATTN_SKIP_SLURM_TEST:-0}" != 1 ]; then
  echo "== Slurm: one-node cluster on localhost, submit, resume, preempt (scripts/slurm/test-local.sh)"
  scripts/slurm/test-local.sh
fi

if [ "${RINGATTN_SKIP_FUZZ:-0}" != 1 ]; then
  echo "== fuzz: safetensors reader, token file reader, config parser (scripts/fuzz.sh)"
  FUZZ_SECONDS=${FUZZ_SECONDS:-30} scripts/fuzz.sh
fi

if [ "${RINGATTN_SKIP_SANITIZERS:-0}" != 1 ]; then
  echo "== sanitizers: every ctest built with ASan + UBSan (scripts/test-sanitizers.sh)"
  scripts/test-sanitizers.sh --timeout 900
fi
