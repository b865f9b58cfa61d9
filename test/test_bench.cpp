// The training benchmarks' machinery (tag [bench_train]): the profiling backend
// (core/profiling_backend.h) and the max-context search (apps/bench_max_context_search.h),
// in-process on a tiny model. Timing figures are only checked for consistency (nonzero, within the
// wall time), never for speed: performance is measured by `ringattn bench`, not by tests.
#include <catch2/catch.hpp>

#include <mpi.h>

#include <chrono>
#include <vector>

#include "apps/bench_max_context_search.h"
#include "apps/bench_variants.h"
#include "comm/mesh.h"
#include "core/allocator.h"
#include "core/profiling_backend.h"
#include "model/trainer.h"

using namespace ringattn;
using namespace ringattn::apps;

namespace {

int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

TrainConfig tiny_bench_config() {
  TrainConfig c;
  c.run_dir = "unused";
  c.seed = 3;
  c.model.vocab_size = 32;
  c.model.hidden_size = 32;
  c.model.intermediate_size = 128;
  c.model.num_layers = 2;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 2;
  c.model.ffn_chunk = 32;
  c.model.loss_chunk = 32;
  c.attention.q_chunk = 16;
  c.attention.k_chunk = 16;
  c.train.seq_len = 128;
  c.train.batch_size = 1;
  c.train.steps = 10;
  c.train.warmup_steps = 2;
  c.optim.lr = 1e-2;
  c.optim.min_lr = 1e-3;
  c.data.retrieval.key_digits = 2;
  c.data.retrieval.value_digits = 2;
  c.data.retrieval.num_records = 4;  // any length from a few dozen tokens up
  c.checkpoint.every = 0;
  c.eval.every = 0;
  return c;
}

TrainerOptions quiet(Backend* be) {
  TrainerOptions o;
  o.log_steps = false;
  o.write_metrics = false;
  o.backend = be;
  return o;
}

}  // namespace

TEST_CASE("profiling backend: same results as the wrapped backend, time by category",
          "[bench_train]") {
  const int world = world_size();
  const TrainConfig c = variant_config(tiny_bench_config(), BenchVariant::Ring, world, 256);
  Mesh mesh(validate(c, world));
  std::vector<double> plain_loss, prof_loss;
  std::vector<float> plain_params, prof_params;
  {
    Trainer t(c, mesh, quiet(nullptr));
    for (int i = 0; i < 2; ++i) plain_loss.push_back(t.train_step().loss);
    for (ModelUnit& u : t.model().units())
      for (float x : u.shard->param_span()) plain_params.push_back(x);
  }
  ProfilingBackend prof(cpu_backend());
  double wall = 0;
  {
    Trainer t(c, mesh, quiet(&prof));
    for (int i = 0; i < 2; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      prof_loss.push_back(t.train_step().loss);
      wall += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    for (ModelUnit& u : t.model().units())
      for (float x : u.shard->param_span()) prof_params.push_back(x);
  }
  // Bit for bit: the decorator forwards every call unchanged.
  CHECK(prof_loss == plain_loss);
  CHECK(prof_params == plain_params);

  const OpProfile p = prof.profile();
  CHECK(p.at(OpCategory::Gemm) > 0);
  CHECK(p.at(OpCategory::Attention) > 0);
  CHECK(p.at(OpCategory::Elementwise) > 0);
  CHECK(p.calls[int(OpCategory::Gemm)] > 0);
  CHECK(p.gemm_flops > 0);
  // Categories never overlap on a synchronous backend, so together they fit in the wall time.
  CHECK(p.total_seconds() <= wall);
  CHECK(prof.is_exact());
  prof.reset();
  CHECK(prof.profile().total_seconds() == 0);
}

TEST_CASE("max-context search: the result fits, the next length does not, ring goes further",
          "[bench_train]") {
  const int world = world_size();
  const TrainConfig base = tiny_bench_config();
  // The limit is calibrated on this machine's own accounting: what blockwise + FFN needs at
  // 512 tokens, so the answer is at least 512 and the search has something to bisect. With
  // several ranks the peak moves by a few KiB from run to run (when the FSDP helper thread's
  // prefetch buffer is allocated relative to the layer's frees), so the limit carries 2% of
  // slack and the re-measurements below allow the same.
  size_t limit = 0;
  constexpr double kJitter = 0.02;
  {
    const TrainConfig c = variant_config(base, BenchVariant::BlockwiseFfn, world, 512);
    Mesh mesh(validate(c, world));
    limit = size_t(double(training_step_peak_bytes(c, mesh)) * (1 + kJitter));
  }
  MaxContextOptions opt;
  opt.resolution = 0;  // exact on the grid
  const MaxContextResult bw = search_max_context(base, BenchVariant::BlockwiseFfn, limit, opt);
  REQUIRE(bw.max_seq_len >= 512);
  CHECK(bw.peak_bytes <= limit);
  CHECK(!bw.capped);
  // The next step up on the grid was tried and does not fit.
  CHECK(bw.next_seq_len == bw.max_seq_len + bw.unit);
  CHECK(bw.next_peak_bytes > limit);
  // The limit in force outside the search is untouched (trials lift it and restore it).
  CHECK(allocator_for(Device::CPU).limit() == 0);

  // Independent re-measurement of both ends.
  {
    const TrainConfig c = variant_config(base, BenchVariant::BlockwiseFfn, world, bw.max_seq_len);
    Mesh mesh(validate(c, world));
    CHECK(double(training_step_peak_bytes(c, mesh)) <= double(limit) * (1 + kJitter));
    const TrainConfig n = variant_config(base, BenchVariant::BlockwiseFfn, world, bw.next_seq_len);
    CHECK(double(training_step_peak_bytes(n, mesh)) > double(limit) * (1 - kJitter));
  }

  if (world > 1) {
    opt.resolution = 0.25;  // coarser: only the order matters here
    const MaxContextResult ring = search_max_context(base, BenchVariant::Ring, limit, opt);
    CHECK(ring.peak_bytes <= limit);
    CHECK(ring.max_seq_len > bw.max_seq_len);
  }

  // A limit below the model's persistent state: nothing is run, nothing fits.
  const MaxContextResult none = search_max_context(base, BenchVariant::BlockwiseFfn, 1024, opt);
  CHECK(none.max_seq_len == 0);
  CHECK(none.trials.empty());
}
