# shellcheck shell=bash
# Sourced by the end-to-end CLI test scripts: the environment every mpirun needs here (root,
# oversubscription, one BLAS thread per rank), a temporary directory removed on exit, and the
# pass/fail bookkeeping. A script ends with `cli_summary`, which fails when any check failed.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl_base_warn_component_unused=0 OMPI_MCA_hwloc_base_binding_policy=none
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
# OpenMPI's shared-memory path named up front (test/CMakeLists.txt says why), unless set already.
export OMPI_MCA_pml=${OMPI_MCA_pml:-ob1} OMPI_MCA_btl=${OMPI_MCA_btl:-self,vader,tcp}
# Under the sanitizer stage, ASan's options for these short processes (scripts/test-sanitizers.sh).
if [ -n "${RINGATTN_CLI_ASAN_OPTIONS:-}" ]; then export ASAN_OPTIONS=$RINGATTN_CLI_ASAN_OPTIONS; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
passes=0

pass() { echo "ok   $1"; passes=$((passes + 1)); }
fail() { echo "FAIL $1"; failures=$((failures + 1)); }

# expect_ok NAME CMD...: the command must succeed.
expect_ok() {
  local name=$1
  shift
  local out
  if out=$("$@" 2>&1); then pass "$name"; else fail "$name: $(tail -5 <<<"$out")"; fi
}

# expect_status NAME ok|error PATTERN CMD...: the command must succeed (ok) or fail (error), and
# print PATTERN.
expect_status() {
  local name=$1 want=$2 pattern=$3
  shift 3
  local out rc
  out=$("$@" 2>&1)
  rc=$?
  if { [ "$want" = ok ] && [ $rc -eq 0 ]; } || { [ "$want" = error ] && [ $rc -ne 0 ]; }; then
    if grep -q -- "$pattern" <<<"$out"; then
      pass "$name"
      return
    fi
  fi
  fail "$name (exit $rc, expected /$pattern/): $(tail -3 <<<"$out")"
}

# expect_error NAME PATTERN CMD...: the command must exit non-zero and print PATTERN.
expect_error() { expect_status "$1" error "$2" "${@:3}"; }

# expect_output NAME PATTERN CMD...: the command must succeed and print PATTERN (a warning, say).
expect_output() { expect_status "$1" ok "$2" "${@:3}"; }

cli_summary() {
  echo "$passes passed, $failures failed"
  [ "$failures" -eq 0 ]
}
