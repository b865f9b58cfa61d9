// Host-side planning of one attention tile call, shared by every backend so that they cut the
// same tiles, skip the same ones and report the same statistics (core/attention_tile.h has the
// contract). A backend's own plan adds what only it needs (score strides, device staging).
//
// Written in C++17 (it is also compiled by nvcc for the CUDA backend).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/attention_tile.h"

namespace ringattn {

// A contiguous run of one shard's tokens that becomes one side of a tile.
struct TileChunk {
  int64_t begin = 0, end = 0;
  int64_t pos_min = 0, pos_max = 0;  // positions are ascending: the first and the last
  int64_t size() const { return end - begin; }
};

// The segment ids one chunk of one batch row sees.
struct SegmentRange {
  int32_t lo = 0, hi = 0;
};

enum class TileKind { Skip, Full, Masked };

struct TilePlan {
  bool causal = false, segmented = false;
  std::vector<int64_t> q_pos, k_pos;  // host copies; 0..n-1 when the problem gives none
  std::vector<int32_t> q_seg, k_seg;  // host copies [B, S]; empty without segment ids
  std::vector<TileChunk> qc, kc;
  std::vector<SegmentRange> q_ranges, k_ranges;  // [b * chunks + c]
  int64_t max_q = 0, max_k = 0;                  // largest chunk on each side

  // Checks the problem (sizes, heads, q/k/v given, segment ids on both sides or neither, causal
  // positions ascending) and plans it. Positions and segment ids are host copies of the
  // problem's (empty: none given), whatever memory the problem's own pointers live in.
  TilePlan(const AttentionTileProblem& p, std::vector<int64_t> q_positions,
           std::vector<int64_t> k_positions, std::vector<int32_t> q_segments,
           std::vector<int32_t> k_segments);

  TileKind classify(int64_t b, size_t qi, size_t ki) const;
};

// AttentionTileProblem::fused: whether the call runs the fused kernels, after checking that they
// can (bf16; head_dim a multiple of 16, at most 128): an Error naming what is wrong otherwise.
// Shared by the CUDA backend and the emulated device of the tests.
bool runs_fused(const AttentionTileProblem& p);

// A host copy of n values at a host pointer; empty for a null pointer (or n <= 0).
template <typename T>
std::vector<T> host_values(const T* p, int64_t n) {
  return p && n > 0 ? std::vector<T>(p, p + n) : std::vector<T>();
}

// Counts one tile of `kind` into the statistics; `flops` are those of the whole tile.
void count_tile(AttentionTileStats& stats, TileKind kind, double flops);
// The statistics of a whole call without running it: every (batch row, head) tile of the plan
// counted with flops_per_elem * nq * nk * head_dim flops (forward 4, backward 10, as the
// backends count them).
AttentionTileStats plan_stats(const TilePlan& plan, int64_t batch, int heads, int head_dim,
                              double flops_per_elem);
// to += from (nothing when `to` is null: the caller did not ask for statistics).
void add_tile_stats(AttentionTileStats* to, const AttentionTileStats& from);

}  // namespace ringattn
