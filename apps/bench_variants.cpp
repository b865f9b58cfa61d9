#include "apps/bench_variants.h"

#include <numeric>

#include "core/error.h"

namespace ringattn::apps {

std::string_view variant_name(BenchVariant v) {
  switch (v) {
    case BenchVariant::Vanilla:
      return "vanilla";
    case BenchVariant::Blockwise:
      return "blockwise";
    case BenchVariant::BlockwiseFfn:
      return "blockwise_ffn";
    case BenchVariant::Ring:
      return "ring";
  }
  return "?";
}

BenchVariant parse_variant(std::string_view name) {
  for (BenchVariant v : all_variants())
    if (variant_name(v) == name) return v;
  RA_FAIL("unknown implementation '{}': expected vanilla, blockwise, blockwise_ffn or ring", name);
}

std::vector<BenchVariant> parse_variants(const std::vector<std::string>& names) {
  std::vector<BenchVariant> out;
  for (const std::string& n : names) out.push_back(parse_variant(n));
  RA_CHECK(!out.empty(), "--impls: name at least one of vanilla, blockwise, blockwise_ffn, ring");
  return out;
}

std::vector<BenchVariant> all_variants() {
  return {BenchVariant::Vanilla, BenchVariant::Blockwise, BenchVariant::BlockwiseFfn,
          BenchVariant::Ring};
}

AttentionImpl variant_impl(BenchVariant v) {
  switch (v) {
    case BenchVariant::Vanilla:
      return AttentionImpl::Vanilla;
    case BenchVariant::Blockwise:
    case BenchVariant::BlockwiseFfn:
      return AttentionImpl::Blockwise;
    case BenchVariant::Ring:
      return AttentionImpl::Ring;
  }
  return AttentionImpl::Blockwise;
}

bool variant_ffn_blockwise(BenchVariant v) {
  return v == BenchVariant::BlockwiseFfn || v == BenchVariant::Ring;
}

TrainConfig variant_config(const TrainConfig& base, BenchVariant v, int world, int64_t seq_len) {
  TrainConfig c = base;
  const bool ring = v == BenchVariant::Ring;
  c.attention.impl = variant_impl(v);
  c.mesh = MeshConfig{};
  c.mesh.dp = 1;
  c.mesh.tp = 1;
  c.mesh.fsdp = ring ? 1 : world;
  c.mesh.sp = ring ? world : 1;
  c.train.seq_len = seq_len;
  c.train.batch_size = ring ? 1 : world;
  c.train.micro_batches = 1;
  c.eval.seq_lens.clear();
  c.eval.every = 0;
  // The benchmarks compare each variant's measured peak with the limit themselves (see
  // bench_max_context_search.h for why it must never be enforced inside a step); the trainer's
  // up-front estimate check is also off, as the measurement is the answer being sought.
  c.memory_limit_gb = 0;
  // Not blockwise: the FFN takes the whole shard in one chunk (its [tokens, intermediate]
  // activations exist for every token at once).
  if (!variant_ffn_blockwise(v)) c.model.ffn_chunk = ring ? seq_len / world : seq_len;
  return c;
}

int64_t variant_seq_unit(const TrainConfig& base, BenchVariant v, int world) {
  int64_t split = 1;
  if (v == BenchVariant::Ring && world > 1)
    split = base.attention.layout == RingLayout::Zigzag ? 2 * int64_t(world) : int64_t(world);
  // Vanilla needs no tiling, but the same grid for every variant keeps the lengths comparable.
  return split * std::lcm(base.attention.q_chunk, base.attention.k_chunk);
}

}  // namespace ringattn::apps
