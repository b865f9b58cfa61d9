// Launches of the fused bf16 attention kernels (core/cuda/fused_attention_body.h has what they
// compute and how). The arguments' pointers are device memory, positions and segment ids too (the
// caller, core/cuda/cuda_attention.cu, uploads them); every call only queues work on `stream`.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "core/cuda/fused_attention_body.h"
#include "core/error.h"

namespace ringattn::cuda {

// What the launchers and fused_occupancy refuse (on a GPU and simulated): a head dim without
// kernels, heads that do not divide into the kv heads.
inline void check_fused_head_dim(int head_dim) {
  RA_CHECK(fused::head_dim_fits(head_dim),
           "fused attention needs head_dim to be a multiple of 16 and at most {}, got {}",
           fused::kMaxHeadDim, head_dim);
}
inline void check_fused_args(const fused::Args& a) {
  check_fused_head_dim(a.p.head_dim);
  RA_CHECK(a.p.kv_heads > 0 && a.p.heads % a.p.kv_heads == 0,
           "fused attention: {} heads over {} kv heads", a.p.heads, a.p.kv_heads);
}

// Folds the keys of `a` into the running state a.acc, a.m, a.l.
void launch_fused_forward(cudaStream_t stream, const fused::Args& a);
// Adds this block's gradients into a.dq, a.dk, a.dv (two kernels: dK/dV, then dQ).
void launch_fused_backward(cudaStream_t stream, const fused::Args& a);
// Blocks of each kernel one multiprocessor of the current device runs at once at this head dim
// (cudaOccupancyMaxActiveBlocksPerMultiprocessor: registers and shared memory), as text:
// "forward 2, dK/dV 2, dQ 2 blocks of 128 threads per SM (shared memory 97.0 / 106.5 / 79.5 KiB;
// kernels for head dims up to 128)".
std::string fused_occupancy(int head_dim);

}  // namespace ringattn::cuda
