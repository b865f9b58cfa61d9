#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: installs dependencies, builds once, runs ctest
# (single- and multi-rank tests under mpirun with 1, 2 and 4 ranks).
# Extra arguments go to ctest, e.g. scripts/test.sh -R attention
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

scripts/install-deps.sh
ringattn_build
"$RINGATTN_BUILD/bin/ringattn" --version
cd "$RINGATTN_BUILD"
ctest --output-on-failure --timeout 900 "$@"
