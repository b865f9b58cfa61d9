// CUDA implementations of the backend's attention operations (core/attention_tile.h): one shard of
// queries against one block of keys and values, the same tiles, skips, masks and statistics as
// the CPU backend (core/cpu/cpu_attention.cpp).
//
// Where the arguments live: q, k, v, dout, dq, dk, dv, acc, m, l, lse, delta, o are device
// memory. Positions (q_pos, k_pos) and segment ids (q_seg, k_seg) may be host or device memory:
// tiles are planned on the host, so device ones are copied back (which synchronises: the model
// passes host ones, model/attention/attention.cpp's RingTokens), and host ones are uploaded for
// the mask kernels (core/cuda/pinned_upload.h, without waiting).
//
// Each tile step is cuBLAS (batched over the tiles of one (query chunk, key chunk) pair, one per
// batch row and head) for the products and one kernel for the elementwise softmax work in between;
// or, for AttentionTileProblem::fused (bf16), one fused kernel per call (two in backward) that
// keeps every score tile in shared memory (core/cuda/fused_attention.h).
// Every call only queues work on the stream and returns (given host positions and segment ids):
// workspace goes back to the allocator in stream order, so the host plans the next ring step or
// layer while the device computes this one.
// AttentionTileStats: the same counts as the CPU backend (tiles per batch row, query head, query
// chunk and key chunk; flops of whole computed tiles: 4 nq nk D forward, 10 nq nk D backward).
// The statistics are planned on the host, so they are exact without reading anything back.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/attention_tile.h"

namespace ringattn::cuda {

void attention_forward_init(cudaStream_t stream, const AttentionForwardState& st, int64_t batch,
                            int64_t sq, int heads, int head_dim);
void attention_forward_block(cudaStream_t stream, cublasHandle_t cublas,
                             const AttentionTileProblem& p, const AttentionForwardState& st,
                             AttentionTileStats* stats);
void attention_forward_finish(cudaStream_t stream, const AttentionForwardState& st, float* o,
                              float* lse, int64_t batch, int64_t sq, int heads, int head_dim);
void attention_backward_delta(cudaStream_t stream, const float* dout, const float* o, float* delta,
                              int64_t batch, int64_t sq, int heads, int head_dim);
void attention_backward_block(cudaStream_t stream, cublasHandle_t cublas,
                              const AttentionTileProblem& p, const AttentionBackwardArgs& a,
                              AttentionTileStats* stats);

}  // namespace ringattn::cuda
