#!/usr/bin/env bash
# What nvcc makes of the CUDA kernels, checked without a GPU (the ctest cuda_kernel_code):
#   - no kernel spills registers to local memory (ptxas for the build's architecture);
#   - no load or store goes through a generic address (nvcc could not tell the memory);
#   - the fused attention kernels load their bf16 fragments with wmma.load's .shared form, which
#     becomes ldmatrix. The generic form (what wmma::load_matrix_sync compiles to) turns each
#     fragment into four generic-address loads, and each transposed one into MOVMs as well.
# Usage: cuda_kernel_code.sh PTXAS ARCH FILE.ptx...   (ARCH as ptxas takes it, e.g. sm_90)
# Prints each kernel's registers, shared memory and spills, then what failed, if anything.
set -euo pipefail
ptxas=$1 arch=$2
shift 2
failed=0
fail() {
  echo "FAIL: $*"
  failed=1
}

for ptx in "$@"; do
  [ -s "$ptx" ] || { fail "$ptx is missing or empty"; continue; }
  name=$(basename "$ptx")
  info=$("$ptxas" -arch="$arch" -v "$ptx" -o /dev/null 2>&1) || { echo "$info"; fail "ptxas failed on $name"; continue; }
  # ptxas -v: per kernel a "Compiling entry function" line, then its frame/spill and register lines.
  report=$(awk -v file="$name" '
    /Compiling entry function/ { match($0, /function .[^ ]+/); kernel = substr($0, RSTART + 10, RLENGTH - 11) }
    /spill stores/ { n = split($0, w, " "); for (i = 4; i <= n; ++i) { if (w[i] == "stores,") st = w[i - 3]; if (w[i] == "loads") ld = w[i - 3] } }
    /Used [0-9]+ registers/ {
      match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
      smem = "0"; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
      printf "%s %s regs=%s smem=%s spill_stores=%s spill_loads=%s\n", file, kernel, regs, smem, st, ld
    }' <<<"$info" | c++filt |
    sed -E 's/ringattn::cuda::\(anonymous namespace\):://g; s/^([^ ]+ )void /\1/; s/\(.*\) regs=/ regs=/')
  [ -z "$report" ] || echo "$report"
  kernels=$(grep -c . <<<"$report" || true)
  if [ "$(grep -c 'Compiling entry function' <<<"$info" || true)" != "$kernels" ]; then
    fail "$name: could not read ptxas's report for every kernel"
  fi
  while read -r line; do
    case "$line" in *"spill_stores=0 spill_loads=0") ;; "") ;; *) fail "register spills: $line" ;; esac
  done <<<"$report"

  # Loads and stores through generic addresses: every one of the kernels' pointers is known to
  # be global, shared or local memory, and a generic access costs an address-space test (and
  # for shared memory, the wider 64-bit addressing).
  generic_ls=$({ grep -E '^[[:space:]]*(@!?%p[0-9]+[[:space:]]+)?(ld|st)\.' "$ptx" || true; } |
    awk '{ op = ($1 ~ /^@/) ? $2 : $1; if (op !~ /\.(global|shared|param|local|const)(\.|$)/) n++ } END { print n + 0 }')
  [ "$generic_ls" = 0 ] || fail "$name: $generic_ls loads or stores through generic addresses"

  if [ "$name" = fused_attention.ptx ]; then
    bf16_loads=$(grep -cE 'wmma\.load\.[ab]\..*\.bf16' "$ptx" || true)
    generic=$(grep -E 'wmma\.load\.[ab]\..*\.bf16' "$ptx" | grep -vc '\.shared\.' || true)
    echo "$name: $bf16_loads bf16 fragment loads, $generic of them generic"
    [ "$bf16_loads" -gt 0 ] || fail "$name: no bf16 wmma.load at all (is this the fused kernels' PTX?)"
    [ "$generic" = 0 ] || fail "$name: $generic bf16 fragment loads through generic addresses"
    for k in forward_kernel backward_dkdv_kernel backward_dq_kernel; do
      grep -q " $k<" <<<"$report" || fail "$name: no $k in ptxas's report"
    done
  fi
done

[ "$failed" = 0 ] && echo "cuda_kernel_code: all checks passed"
exit "$failed"
