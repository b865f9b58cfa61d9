// The attention operations a backend provides: one shard of queries against one block of keys
// and values, forward (online softmax, ../shared/design/ring-attention.md section 2) and backward
// (section 3). Vanilla, blockwise and ring attention are all built from these, above the backend.
//
// Layouts (row-major, float32 on the CPU backend):
//   q, o, dout, dq, acc : [B, Sq, H, D]      k, v, dk, dv : [B, Sk, Hkv, D]
//   m, l, lse, delta    : [B, H, Sq]         (float32 always)
// Query head h reads key/value head h / (H / Hkv) (grouped-query attention).
// Positions are GLOBAL token positions, ascending within each shard; they decide the causal mask
// (key position <= query position). Segment ids, when given, restrict attention to equal ids.
// Tiles: the work is cut into q_chunk x k_chunk tiles. A tile whose keys are all in the future of
// its queries is skipped; a tile entirely in the past runs without a mask; only tiles that straddle
// the diagonal (or hold segment ids) apply the element mask. A tile never spans a break in the
// positions (zigzag shards have one), so zigzag and striped shards skip exactly what they should.
#pragma once

#include <cstdint>

namespace ringattn {

// Large finite negative for masked scores: exp(kMaskedScore - m) is 0 and never NaN.
inline constexpr float kMaskedScore = -1e30f;

struct AttentionTileProblem {
  int64_t batch = 1, sq = 0, sk = 0;
  int heads = 1, kv_heads = 1, head_dim = 0;
  float scale = 1.0f;  // usually 1/sqrt(head_dim)
  bool causal = false;
  int64_t q_chunk = 0, k_chunk = 0;  // tile sizes; <= 0 means the whole shard/block (vanilla)
  // Positions and segment ids may live in host or device memory (the CUDA backend copies them
  // to the device when needed); q, k, v and every output are on the backend's device.
  const int64_t* q_pos = nullptr;  // [Sq] global positions of the queries
  const int64_t* k_pos = nullptr;  // [Sk] global positions of the keys
  const int32_t* q_seg = nullptr;  // [B, Sq] or null
  const int32_t* k_seg = nullptr;  // [B, Sk] or null
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  // Mixed precision (model.dtype = bf16): every tile GEMM takes bfloat16 operands, products
  // summed in float32. q, k, v and dout are rounded (nearest even) once per call; P is rounded
  // before P V and P^T dO, dS before dS K and dS^T Q. The softmax, its statistics (m, l, lse,
  // delta), acc, dq, dk and dv stay float32, and l sums the unrounded P (delta = rowsum(dO O)
  // comes from the float32 dO). Each call rounds its own copies (CPU: bf16-valued float32; CUDA:
  // bf16, which needs head_dim % 8 == 0 for aligned slices), counted by the allocator.
  bool bf16 = false;
  // Under bf16 only: operands already in bfloat16, used instead of q (k, v), which may then be
  // null, and not rounded again: the results equal those of float32 operands holding the same
  // values. q_bf16 [B, Sq, H, D]: the model keeps q in bf16; k_bf16 and v_bf16 [B, Sk, Hkv, D]
  // (both or neither): the ring's blocks travel so, half the bytes of float32. On CUDA 16-byte
  // aligned (head_dim % 8 == 0 keeps every head slice so).
  const uint16_t* q_bf16 = nullptr;
  const uint16_t* k_bf16 = nullptr;
  const uint16_t* v_bf16 = nullptr;
  // Under bf16 only, a request to the CUDA backend: run the call as fused kernels that keep each
  // score tile in shared memory (core/cuda/fused_attention_body.h; head_dim a multiple of 16, at
  // most 128) instead of cuBLAS GEMMs around softmax kernels. The same function and rounding
  // points, other float32 summation orders (a tolerance apart). q_chunk and k_chunk then only
  // shape the statistics (the kernels cut their own 64 x 64 tiles). The CPU backend has one tile
  // path and ignores it.
  bool fused = false;
};

// Running forward state (the (m, l, acc) form): acc unnormalised.
struct AttentionForwardState {
  float* acc = nullptr;  // [B, Sq, H, D]
  float* m = nullptr;    // [B, H, Sq]
  float* l = nullptr;    // [B, H, Sq]
};

struct AttentionBackwardArgs {
  const float* dout = nullptr;   // [B, Sq, H, D]
  const float* lse = nullptr;    // [B, H, Sq] final LSE from the forward
  const float* delta = nullptr;  // [B, H, Sq] rowsum(dout * o), from attention_backward_delta
  float* dq = nullptr;           // [B, Sq, H, D]   accumulated (+=)
  float* dk = nullptr;           // [B, Sk, Hkv, D] accumulated (+=)
  float* dv = nullptr;           // [B, Sk, Hkv, D] accumulated (+=)
};

// What a call computed: lets tests and benchmarks check that causal tiles were skipped.
struct AttentionTileStats {
  int64_t tiles_computed = 0, tiles_masked = 0, tiles_skipped = 0;
  double flops = 0;  // matmul FLOPs actually executed
};

}  // namespace ringattn
