#include "apps/bench_max_context_search.h"

#include <algorithm>
#include <chrono>
#include <memory>

#include "apps/bench_common.h"
#include "comm/mpi_env.h"
#include "core/allocator.h"
#include "core/error.h"
#include "model/data/make_source.h"
#include "model/layers/params.h"
#include "model/trainer.h"

namespace ringattn::apps {

namespace {

int64_t round_up(int64_t x, int64_t unit) {
  return (x + unit - 1) / unit * unit;
}
int64_t round_down(int64_t x, int64_t unit) {
  return x / unit * unit;
}

// The shortest length on the grid that the data source can fill (the retrieval task needs room
// for its records and questions); 0 when none up to `cap`. Local and deterministic: every rank
// finds the same.
int64_t shortest_valid(const TrainConfig& cfg, int64_t unit, int64_t cap) {
  const std::unique_ptr<BatchSource> source = make_batch_source(cfg);
  for (int64_t s = unit; s <= cap; s += unit) {
    try {
      source->check_seq_len(s);
      return s;
    } catch (const Error&) {
    }
  }
  return 0;
}

}  // namespace

size_t training_step_peak_bytes(const TrainConfig& cfg, Mesh& mesh) {
  // The memory of the device the model computes on (the config's `device`).
  Allocator& alloc = backend_for(cfg).allocator();
  LimitLifted lifted(alloc);
  TrainerOptions opt;
  opt.log_steps = false;
  opt.write_metrics = false;
  Trainer trainer(cfg, mesh, opt);
  // AdamW's moments are allocated lazily at the first optimizer step, after the activations are
  // gone; every later step carries them through forward and backward. Allocating them now makes
  // this one step's peak the steady state's.
  for (ModelUnit& u : trainer.model().units()) u.shard->optimizer_state();
  trainer.train_step();  // resets the peak when it starts
  int64_t peak = int64_t(alloc.peak_bytes());
  mesh.world().all_reduce(&peak, 1, DType::I64, ReduceOp::Max);
  return size_t(peak);
}

MaxContextResult search_max_context(const TrainConfig& base, BenchVariant v, size_t limit_bytes,
                                    const MaxContextOptions& options,
                                    const std::function<void(const MaxContextTrial&)>& on_trial) {
  RA_CHECK(limit_bytes > 0,
           "bench max-context needs memory_limit_gb > 0 (the memory per rank "
           "each implementation must fit in)");
  const int world = MpiEnv::world_size();
  MaxContextResult r;
  r.variant = v;
  r.ranks = world;
  r.unit = variant_seq_unit(base, v, world);
  r.limit_bytes = limit_bytes;

  // The persistent state alone: parameter, gradient and two AdamW shards of float32 over the
  // fsdp x sp group, which is the whole world for every variant.
  const double shards =
      16.0 * double(ModelDims::from_config(base.model).parameter_count()) / double(world);
  if (shards > double(limit_bytes)) return r;

  // One mesh for the whole search: its shape depends on the variant, not on the length.
  const TrainConfig first = variant_config(base, v, world, r.unit);
  Mesh mesh(validate(first, world), MPI_COMM_WORLD, base.comm.transport);

  auto trial = [&](int64_t seq_len) {
    const TrainConfig cfg = variant_config(base, v, world, seq_len);
    validate(cfg, world);  // the grid guarantees it; a failure here is a bug, on every rank alike
    const auto t0 = std::chrono::steady_clock::now();
    MaxContextTrial t;
    t.seq_len = seq_len;
    t.peak_bytes = training_step_peak_bytes(cfg, mesh);
    t.fits = t.peak_bytes <= limit_bytes;  // the same all-reduced number on every rank
    t.seconds = max_over_ranks(seconds_since(t0));
    r.trials.push_back(t);
    if (t.fits && seq_len > r.max_seq_len) {
      r.max_seq_len = seq_len;
      r.peak_bytes = t.peak_bytes;
    }
    if (!t.fits && (r.next_seq_len == 0 || seq_len < r.next_seq_len)) {
      r.next_seq_len = seq_len;
      r.next_peak_bytes = t.peak_bytes;
    }
    if (on_trial) on_trial(t);
    return t.fits;
  };

  const int64_t cap = round_down(options.max_seq_len, r.unit);
  const int64_t shortest = shortest_valid(base, r.unit, cap);
  if (shortest == 0) return r;
  int64_t s = std::min(cap, round_up(std::max(options.start, shortest), r.unit));
  // Going down from a start that does not fit (halving), then up by doubling.
  bool fits = trial(s);
  while (!fits && s > shortest) {
    s = std::max(shortest, round_down(s / 2, r.unit));
    fits = trial(s);
  }
  if (!fits) return r;  // not even the shortest length
  while (r.next_seq_len == 0) {
    if (s >= cap) {
      r.capped = true;
      return r;
    }
    s = std::min(cap, s * 2);
    trial(s);
  }
  // Bisection between the longest fitting length and the shortest failing one, on the grid.
  for (;;) {
    const int64_t lo = r.max_seq_len, hi = r.next_seq_len;
    const int64_t tol =
        std::max(r.unit, round_down(int64_t(options.resolution * double(lo)), r.unit));
    if (hi - lo <= tol) break;
    trial(lo + std::max(r.unit, round_down((hi - lo) / 2, r.unit)));
  }
  return r;
}

nlohmann::ordered_json to_json(const MaxContextResult& r) {
  nlohmann::ordered_json j;
  j["impl"] = std::string(variant_name(r.variant));
  j["ffn_blockwise"] = variant_ffn_blockwise(r.variant);
  j["ranks"] = r.ranks;
  j["max_seq_len"] = r.max_seq_len;
  j["peak_bytes"] = r.peak_bytes;
  j["limit_bytes"] = r.limit_bytes;
  j["attention_impl"] = std::string(impl_name(variant_impl(r.variant)));
  j["seq_unit"] = r.unit;
  j["next_seq_len"] = r.next_seq_len;
  j["next_peak_bytes"] = r.next_peak_bytes;
  j["capped"] = r.capped;
  nlohmann::ordered_json trials = nlohmann::ordered_json::array();
  for (const MaxContextTrial& t : r.trials)
    trials.push_back({{"seq_len", t.seq_len},
                      {"peak_bytes", t.peak_bytes},
                      {"fits", t.fits},
                      {"seconds", t.seconds}});
  j["trials"] = trials;
  return j;
}

}  // namespace ringattn::apps
