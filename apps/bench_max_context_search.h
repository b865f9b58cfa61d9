// The search behind `ringattn bench max-context` (issue 6): the longest train.seq_len for which
// one full training step (forward, backward, optimizer) of an implementation stays within
// memory_limit_gb per rank, as counted by the allocator. Doubling, then bisection, on the grid of
// lengths the implementation can split and tile (variant_seq_unit).
//
// Why it cannot hang: a limit that is enforced by the allocator raises an Error on the one rank
// that crosses it, in the middle of a step whose collectives the other ranks are already waiting
// in; that rank's unwinding (ring and FSDP destructors wait for transfers in flight) and the
// others' collectives then wait for each other forever. So trials never hit an allocator limit:
// each trial runs with the limit lifted, every rank measures its own peak, the peaks are
// all-reduced (max), and "fits" = (max peak <= limit) is computed from that one number, so every
// rank reaches the same verdict and takes the same next length.
// Why lifting the limit is safe: the search only ever tries a length above the largest one known
// to fit by doubling it (or between two lengths already tried), and no buffer of a step grows
// faster than S^2 (vanilla's scores; everything else is linear), so a trial's real footprint is at
// most 4x the limit. The first trial is the smallest length of the grid, and before it the
// model's persistent state alone (parameter, gradient and AdamW shards) is compared with the
// limit; if it does not fit, nothing is run.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "apps/bench_variants.h"
#include "comm/mesh.h"
#include "model/train_config.h"

namespace ringattn::apps {

struct MaxContextOptions {
  int64_t start = 0;  // first length tried (rounded up to the grid; 0: one unit)
  int64_t max_seq_len = int64_t(1) << 24;  // never try a longer one (the result is then capped)
  // Bisection stops once the bracket is at most max(unit, resolution x the length that fits);
  // 0: bisect down to one unit (exact on the grid).
  double resolution = 1.0 / 16;
};

struct MaxContextTrial {
  int64_t seq_len = 0;
  size_t peak_bytes = 0;  // max over ranks
  bool fits = false;
  double seconds = 0;
};

struct MaxContextResult {
  BenchVariant variant = BenchVariant::Ring;
  int ranks = 1;
  int64_t unit = 0;  // the grid of lengths tried
  size_t limit_bytes = 0;
  int64_t max_seq_len = 0;   // 0: not even one unit fits
  size_t peak_bytes = 0;     // of max_seq_len's trial
  int64_t next_seq_len = 0;  // the shortest tried length that did not fit (0: none did)
  size_t next_peak_bytes = 0;
  bool capped = false;                  // stopped at options.max_seq_len while still fitting
  std::vector<MaxContextTrial> trials;  // in the order run
};

// Peak allocator bytes, max over ranks, of one training step of `cfg` (validated for `mesh`'s
// world) run with the allocator limit lifted; a fresh model (AdamW state allocated up front, as
// in every step after the first). Collective over the world.
size_t training_step_peak_bytes(const TrainConfig& cfg, Mesh& mesh);

// Searches for variant `v` of `base` on the world's ranks. `limit_bytes` > 0. `on_trial`, when
// set, is called on every rank after each trial (logging). Collective over MPI_COMM_WORLD.
MaxContextResult search_max_context(
    const TrainConfig& base, BenchVariant v, size_t limit_bytes, const MaxContextOptions& options,
    const std::function<void(const MaxContextTrial&)>& on_trial = {});

// {"impl", "ffn_blockwise", "ranks", "max_seq_len", "peak_bytes", ...} (the fields
// first, then the search's details).
nlohmann::ordered_json to_json(const MaxContextResult& r);

}  // namespace ringattn::apps
