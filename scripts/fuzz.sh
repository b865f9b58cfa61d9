#!/usr/bin/env bash
# Builds the libFuzzer targets of test/fuzz (clang, -fsanitize=fuzzer,address,undefined) into
# build-fuzz and runs each for a bounded time on its committed seed corpus: the safetensors
# reader, the token file reader and the config parser. Fails on any crash, sanitizer report,
# leak, timeout or out-of-memory; the input that caused it is kept in build-fuzz/artifacts/.
#
#   scripts/fuzz.sh                   # each target FUZZ_SECONDS (default 45) seconds
#   FUZZ_SECONDS=600 scripts/fuzz.sh  # longer, by hand
#   scripts/fuzz.sh config            # one target
#
# clang is not part of the main build (CI builds with gcc): this script installs it on demand.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${RINGATTN_FUZZ_BUILD:-$root/build-fuzz}
seconds=${FUZZ_SECONDS:-45}
jobs=${RINGATTN_JOBS:-$(nproc 2>/dev/null || echo 2)}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors token_file config)

"$root/scripts/install-deps.sh" clang libclang-rt-dev
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DRINGATTN_CUDA=OFF -DRINGATTN_FUZZ=ON -DRINGATTN_BUILD_TESTS=OFF \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -g1" >/dev/null
start=$(date +%s)
cmake --build "$build" -j "$jobs" --target "${targets[@]/#/fuzz_}"
echo "fuzz: build took $(($(date +%s) - start)) s"

# Leaks are bugs in the readers too (no MPI is initialised in the fuzz targets).
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
mkdir -p "$build/artifacts"
for t in "${targets[@]}"; do
  seeds=$root/test/fuzz/corpus/$t
  work=$build/corpus/$t # new inputs found in this run (not committed)
  mkdir -p "$work"
  echo "fuzz: $t for $seconds s (seeds: ${seeds#"$root"/})"
  start=$(date +%s)
  "$build/bin/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" "$work" "$seeds" \
    >"$build/fuzz_$t.log" 2>&1 || {
    tail -60 "$build/fuzz_$t.log"
    echo "fuzz: $t FAILED (input kept in $build/artifacts/)"
    exit 1
  }
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$build/fuzz_$t.log" | tr '\n' ' '
  echo
  echo "fuzz: $t ok ($(($(date +%s) - start)) s)"
done
