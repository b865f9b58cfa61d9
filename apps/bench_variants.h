// The four implementations that `ringattn bench throughput` and `bench max-context` compare on
// the same model (issue 6; the columns of the paper's Table 3):
//   vanilla        materialised attention, FFN on the whole sequence at once
//   blockwise      memory-efficient (tiled) attention only: FFN still on the whole shard
//                  (model.ffn_chunk = the sequence length), i.e. "memory-efficient attention"
//   blockwise_ffn  tiled attention and the FFN `model.ffn_chunk` tokens at a time (BPT)
//   ring           BPT with the sequence split over every rank of the world (ring attention)
//
// How the world's ranks are used, so that every variant sees the same memory per rank:
//   vanilla / blockwise / blockwise_ffn: mesh fsdp = world, sp = 1, one sequence of S tokens per
//     rank (train.batch_size = world): each rank holds a whole sequence, the parameters are
//     sharded over every rank exactly as for ring;
//   ring: mesh sp = world, one sequence of S tokens split over the ranks (train.batch_size = 1).
// The config's mesh, batch size and micro-batches are replaced; its model, chunks, layout and
// loss_chunk are kept. Evaluation lengths are dropped (benchmarks do not evaluate), and so is
// memory_limit_gb: the benchmarks compare measured peaks with it rather than enforce it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/train_config.h"

namespace ringattn::apps {

enum class BenchVariant { Vanilla, Blockwise, BlockwiseFfn, Ring };

std::string_view variant_name(BenchVariant v);  // "vanilla", "blockwise", "blockwise_ffn", "ring"
// Error naming the accepted names.
BenchVariant parse_variant(std::string_view name);
std::vector<BenchVariant> parse_variants(const std::vector<std::string>& names);
std::vector<BenchVariant> all_variants();
AttentionImpl variant_impl(BenchVariant v);
bool variant_ffn_blockwise(BenchVariant v);

// `base` turned into variant `v` at sequence length `seq_len` for `world` ranks (see above).
// Not validated: call validate(cfg, world).
TrainConfig variant_config(const TrainConfig& base, BenchVariant v, int world, int64_t seq_len);
// The step between sequence lengths that `v` can split and tile on `world` ranks: every multiple
// of it passes the layout's split (2 x sp chunks for zigzag, sp for the others) and the attention
// tiles (runs that are multiples of lcm(q_chunk, k_chunk)).
int64_t variant_seq_unit(const TrainConfig& base, BenchVariant v, int world);

}  // namespace ringattn::apps
