#!/usr/bin/env bash
# What nvcc makes of the CUDA kernels, checked without a GPU (the ctest cuda_kernel_code):
#   - no kernel spills registers to local memory (ptxas for the build's architecture);
#   - no load, store or atomic of the project's kernels goes through a generic address (nvcc
#     could not tell which memory), and the attention kernels have no stack frame;
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
    /Compiling entry function/ { match($0, /function .[^ ]+/); kernel = substr($0, RSTART + 10, RLENGTH - 11); fr = st = ld = "?" }
    /spill stores/ { n = split($0, w, " "); for (i = 4; i <= n; ++i) { if (w[i] == "stores,") st = w[i - 3]; if (w[i] == "loads") ld = w[i - 3]; if (w[i] == "frame,") fr = w[i - 3] } }
    /Used [0-9]+ registers/ {
      match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
      smem = "0"; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
      printf "%s %s regs=%s smem=%s stack=%s spill_stores=%s spill_loads=%s\n", file, kernel, regs, smem, fr, st, ld
    }' <<<"$info" | c++filt |
    sed -E 's/ringattn::cuda::\(anonymous namespace\):://g; s/^([^ ]+ )void /\1/; s/\(.*\) regs=/ regs=/')
  [ -z "$report" ] || echo "$report"
  kernels=$(grep -c . <<<"$report" || true)
  if [ "$(grep -c 'Compiling entry function' <<<"$info" || true)" != "$kernels" ]; then
    fail "$name: could not read ptxas's report for every kernel"
  fi
  while read -r line; do
    case "$line" in *"spill_stores=0 spill_loads=0") ;; "") ;; *) fail "register spills: $line" ;; esac
    # The attention kernels keep their fragments and accumulators in registers: a stack frame
    # there means an array went to local memory. (Elsewhere one can be fine: double sincos's
    # slow path takes 40 bytes in the RoPE table kernel.)
    case "$name:$line" in
      fused_attention.ptx:*stack=0* | cuda_attention.ptx:*stack=0* | fused_attention.ptx: | cuda_attention.ptx:) ;;
      fused_attention.ptx:* | cuda_attention.ptx:*) fail "stack frame in an attention kernel: $line" ;;
    esac
  done <<<"$report"

  # Memory accesses through generic addresses in the project's kernels (cub's, in the toolkit,
  # are not ours to judge): every pointer there is known to be global, shared or local memory,
  # and a generic access costs an address-space test (for shared memory, 64-bit addressing too).
  generic_ls=$(awk '
    /^[.a-z ]*\.entry / { ours = ($0 !~ /\.entry _ZN3cub/) }
    {
      op = ($1 ~ /^@/) ? $2 : $1
      if (ours && op ~ /^(ld|st|ldu|atom|red|wmma\.load|wmma\.store)\./ &&
          op !~ /\.(global|shared|param|local|const)(\.|::|$)/) n++
    }
    END { print n + 0 }' "$ptx")
  [ "$generic_ls" = 0 ] || fail "$name: $generic_ls memory accesses through generic addresses"

  if [ "$name" = fused_attention.ptx ]; then
    bf16_loads=$(grep -cE 'wmma\.load\.[ab]\..*\.bf16' "$ptx" || true)
    generic=$(grep -E 'wmma\.load\.[ab]\..*\.bf16' "$ptx" | grep -vc '\.shared\.' || true)
    echo "$name: $bf16_loads bf16 fragment loads, $generic of them generic"
    [ "$bf16_loads" -gt 0 ] || fail "$name: no bf16 wmma.load at all (is this the fused kernels' PTX?)"
    [ "$generic" = 0 ] || fail "$name: $generic bf16 fragment loads through generic addresses"
    for k in forward_kernel backward_dkdv_kernel backward_dq_kernel; do
      for d in 64 128; do
        grep -q " $k<$d> " <<<"$report" || fail "$name: no $k<$d> in ptxas's report"
      done
    done
  fi
done

[ "$failed" = 0 ] && echo "cuda_kernel_code: all checks passed"
exit "$failed"
