// What a caller chooses about attention (the config's attention.* keys): the implementation,
// tile sizes, ring pieces, precision and kernel. Pure values: the config parser uses them without
// the attention code (model/attention/attention.h).
#pragma once

#include <cstdint>
#include <string_view>

#include "model/attention/layout.h"

namespace ringattn {

enum class AttentionImpl { Vanilla, Blockwise, Ring };
std::string_view impl_name(AttentionImpl impl);
AttentionImpl parse_impl(std::string_view name);  // Error naming the accepted values

// How a backend runs the tile steps (AttentionTileProblem::fused): `tiles` (GEMMs around softmax
// kernels, every backend) or `fused` (bf16 only: on CUDA, kernels that keep each score tile in
// shared memory; the CPU backend runs its tiles either way).
enum class AttentionKernel { Tiles, Fused };
std::string_view kernel_name(AttentionKernel kernel);  // "tiles" | "fused"

struct AttentionOptions {
  AttentionImpl impl = AttentionImpl::Blockwise;
  RingLayout layout = RingLayout::Zigzag;  // how the caller spread the sequence (ring)
  bool causal = true;
  int64_t q_chunk = 256, k_chunk = 256;  // tile sizes (blockwise and ring); ignored by vanilla
  // Ring: each rank's K/V shard goes around the ring in this many pieces (as equal as possible,
  // at most one per token), one full ring pass per piece. The ring's own buffers (two K/V pieces
  // in flight; in backward also three float32 dK/dV pieces) shrink by this factor, for this
  // many times more (smaller) messages. 1: the whole shard at once.
  int64_t ring_pieces = 1;
  float scale = 0;  // 0: 1/sqrt(head_dim)
  // Mixed precision: the tile GEMMs take bf16 operands (AttentionTileProblem::bf16), and the
  // ring's K/V blocks travel as bf16 (half the bytes; the same results, as the GEMMs round them
  // anyway). Inputs, outputs, statistics and the ring's dK/dV accumulators stay float32.
  bool bf16 = false;
  AttentionKernel kernel = AttentionKernel::Tiles;  // Fused needs bf16
};

}  // namespace ringattn
