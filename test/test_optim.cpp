// The optimizer side of the trainer: AdamW against a float64 reference, the learning-rate
// schedule at chosen steps, global gradient-norm clipping over shards, and FSDP flat-parameter
// sharding (gather, reduce-scatter, dp all-reduce, a sharded AdamW step equal to an unsharded
// one bit for bit). Runs under mpirun with 1, 2 and 4 ranks; every multi-rank check holds at
// every world size.
#include <mpi.h>
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <thread>
#include <vector>

#include "comm/mesh.h"
#include "comm/mpi_env.h"
#include "core/allocator.h"
#include "core/error.h"
#include "model/fsdp/flat_shard.h"
#include "model/fsdp/fsdp_group.h"
#include "model/optim/adamw.h"
#include "model/optim/clip.h"
#include "model/optim/schedule.h"

using namespace ringattn;

namespace {

int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

uint64_t mix(uint64_t x) {
  // SplitMix64's finaliser: a cheap, well-spread hash of (seed, index).
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A value in [-1, 1) with 10 fractional bits: sums of a few of them (times small integers) are
// exact in float32, so reduce-scatter results can be compared with ==, whatever order MPI adds.
float dyadic(uint64_t seed, int64_t i) {
  const int64_t k = int64_t(mix(seed * 1000003ull + uint64_t(i)) % 2048) - 1024;
  return float(k) / 1024.0f;
}

// A value with a full float32 mantissa, for the AdamW reference (rounding matters there).
float smooth(uint64_t seed, int64_t i) {
  const double u = double(mix(seed * 7919ull + uint64_t(i)) >> 11) * 0x1.0p-53;  // [0, 1)
  return float((u - 0.5) * 2.0);
}

// Float64 AdamW on float64 state, literally the formulas of model/optim/adamw.h.
struct RefAdamW {
  std::vector<double> p, m, v;
  // m of |g|: the size of the terms that m is a (possibly cancelling) sum of, which is what
  // m's float32 rounding error scales with.
  std::vector<double> m_abs;
  void step(const AdamWConfig& c, const std::vector<float>& g, int64_t t, double lr,
            const std::vector<bool>& no_decay) {
    for (size_t i = 0; i < p.size(); ++i) {
      const double wd = no_decay[i] ? 0.0 : c.weight_decay;
      m[i] = c.beta1 * m[i] + (1 - c.beta1) * g[i];
      m_abs[i] = c.beta1 * m_abs[i] + (1 - c.beta1) * std::abs(g[i]);
      v[i] = c.beta2 * v[i] + (1 - c.beta2) * double(g[i]) * g[i];
      const double mh = m[i] / (1 - std::pow(c.beta1, double(t)));
      const double vh = v[i] / (1 - std::pow(c.beta2, double(t)));
      p[i] = p[i] * (1 - lr * wd) - lr * mh / (std::sqrt(vh) + c.eps);
    }
  }
};

std::vector<bool> mask_of(int64_t n, const std::vector<IndexRange>& ranges) {
  std::vector<bool> mask(size_t(n), false);
  for (const IndexRange& r : ranges)
    for (int64_t i = r.begin; i < std::min(r.end, n); ++i) mask[size_t(i)] = true;
  return mask;
}

// The same 8 bytes on every rank of `c`: gathers them and compares with rank 0's.
bool same_on_every_rank(Communicator& c, double x) {
  std::vector<double> all(size_t(c.size()));
  c.all_gather(&x, all.data(), sizeof(double), DType::U8);
  for (double y : all)
    if (std::memcmp(&y, &all[0], sizeof(double)) != 0) return false;
  return true;
}

size_t live_bytes() {
  return allocator_for(Device::CPU).live_bytes();
}

// Both modes where this MPI can run them: Sync always, Async when MPI_THREAD_MULTIPLE is granted.
std::vector<FsdpGroup::Mode> modes() {
  std::vector<FsdpGroup::Mode> m{FsdpGroup::Mode::Sync};
  if (MpiEnv::thread_multiple()) m.push_back(FsdpGroup::Mode::Async);
  return m;
}

const char* mode_name(FsdpGroup::Mode m) {
  return m == FsdpGroup::Mode::Sync ? "sync" : m == FsdpGroup::Mode::Async ? "async" : "auto";
}

// Sizes around every group size 1, 2, 4: divisible, not divisible, smaller than the group, empty.
constexpr int64_t kSizes[] = {0, 1, 3, 7, 8, 13, 64, 1001};

}  // namespace

// --- AdamW ---------------------------------------------------------------------------------------

TEST_CASE("AdamW matches a float64 reference over several steps", "[optim]") {
  const int64_t n = 517;
  AdamWConfig cfg;
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.95;
  cfg.eps = 1e-8;
  cfg.weight_decay = 0.1;

  std::vector<IndexRange> no_decay;
  SECTION("weight decay everywhere") {}
  SECTION("no-decay ranges (unsorted, overlapping, past the end)") {
    no_decay = {{400, 450}, {0, 10}, {5, 20}, {100, 101}, {500, 9000}};
  }
  SECTION("no weight decay at all") {
    cfg.weight_decay = 0.0;
  }
  const std::vector<bool> mask = mask_of(n, no_decay);

  std::vector<float> p(n), m(n, 0.0f), v(n, 0.0f), g(n);
  RefAdamW ref;
  for (int64_t i = 0; i < n; ++i) p[size_t(i)] = smooth(1, i);
  ref.p.assign(p.begin(), p.end());
  ref.m.assign(n, 0.0);
  ref.v.assign(n, 0.0);
  ref.m_abs.assign(n, 0.0);

  const double lrs[] = {1e-3, 2e-3, 3e-3, 2.5e-3, 1e-3, 5e-4, 1e-4};
  for (int64_t t = 1; t <= 7; ++t) {
    // Gradients of different scales, some exactly zero, so that v spans many magnitudes.
    for (int64_t i = 0; i < n; ++i)
      g[size_t(i)] = i % 37 == 0 ? 0.0f : smooth(100 + uint64_t(t), i) * float(1 + i % 5) * 0.01f;
    adamw_step(cfg, p.data(), g.data(), m.data(), v.data(), n, t, lrs[t - 1], no_decay);
    ref.step(cfg, g, t, lrs[t - 1], mask);
  }
  double worst_p = 0, worst_m = 0, worst_v = 0;
  for (size_t i = 0; i < size_t(n); ++i) {
    // The float32 state is rounded once per step: a few ulps of the values' scale (and the
    // updates move p by at most ~sum(lr) = 0.0106).
    worst_p = std::max(worst_p, std::abs(p[i] - ref.p[i]) / (std::abs(ref.p[i]) + 0.01));
    worst_m = std::max(worst_m, std::abs(m[i] - ref.m[i]) / (ref.m_abs[i] + 1e-30));
    worst_v = std::max(worst_v, std::abs(v[i] - ref.v[i]) / (std::abs(ref.v[i]) + 1e-20));
  }
  INFO("worst relative errors: p " << worst_p << ", m " << worst_m << ", v " << worst_v);
  CHECK(worst_p < 1e-6);
  CHECK(worst_m < 1e-6);
  CHECK(worst_v < 1e-6);
}

TEST_CASE("AdamW: decay is decoupled and masked ranges get none", "[optim]") {
  // Zero gradients: the Adam term is exactly 0, so only the decay moves the weights, by exactly
  // float32(p * (1 - lr * wd)), and not at all inside the no-decay ranges.
  const int64_t n = 64;
  AdamWConfig cfg;
  cfg.weight_decay = 0.5;
  std::vector<float> p(n), g(n, 0.0f), m(n, 0.0f), v(n, 0.0f);
  for (int64_t i = 0; i < n; ++i) p[size_t(i)] = smooth(3, i);
  const std::vector<float> p0 = p;
  const std::vector<IndexRange> no_decay{{10, 20}, {60, 64}};
  const double lr = 0.01;
  adamw_step(cfg, p.data(), g.data(), m.data(), v.data(), n, 1, lr, no_decay);
  const std::vector<bool> mask = mask_of(n, no_decay);
  size_t bad = 0;
  for (size_t i = 0; i < size_t(n); ++i) {
    const float expected = mask[i] ? p0[i] : float(double(p0[i]) * (1 - lr * cfg.weight_decay));
    bad += p[i] != expected;
  }
  CHECK(bad == 0);
  for (size_t i = 0; i < size_t(n); ++i) REQUIRE((m[i] == 0 && v[i] == 0));

  // The first step's bias correction makes the update lr * g / (|g| + eps): a step of ~lr
  // against the gradient's sign, whatever its scale.
  std::fill(p.begin(), p.end(), 0.0f);
  for (int64_t i = 0; i < n; ++i) g[size_t(i)] = (i % 2 ? 1e-3f : -7.0f);
  cfg.weight_decay = 0;
  adamw_step(cfg, p.data(), g.data(), m.data(), v.data(), n, 1, lr);
  CHECK(p[0] == Approx(lr).epsilon(1e-6));
  CHECK(p[1] == Approx(-lr).epsilon(1e-4));  // eps = 1e-8 against |g| = 1e-3
}

TEST_CASE("AdamW: tensor form, state allocation and input checks", "[optim]") {
  const int64_t n = 33;
  AdamWConfig cfg;
  const size_t before = live_bytes();
  {
    AdamWState st = AdamWState::zeros(n);
    CHECK(st.numel() == n);
    CHECK(live_bytes() == before + 2 * size_t(n) * sizeof(float));  // m and v are accounted
    Tensor p = Tensor::zeros({n}, DType::F32), g = Tensor::zeros({n}, DType::F32);
    for (int64_t i = 0; i < n; ++i) g.data<float>()[i] = smooth(4, i);
    std::vector<float> p2(n, 0.0f), m2(n, 0.0f), v2(n, 0.0f);
    adamw_step(cfg, p, g, st, 1, 1e-3);
    adamw_step(cfg, p2.data(), g.data<float>(), m2.data(), v2.data(), n, 1, 1e-3);
    CHECK(std::memcmp(p.data<float>(), p2.data(), size_t(n) * sizeof(float)) == 0);
    CHECK(std::memcmp(st.m.data<float>(), m2.data(), size_t(n) * sizeof(float)) == 0);

    Tensor short_g = Tensor::zeros({n - 1}, DType::F32);
    CHECK_THROWS_AS(adamw_step(cfg, p, short_g, st, 2, 1e-3), Error);
    CHECK_THROWS_WITH(adamw_step(cfg, p, g, st, 0, 1e-3), Catch::Contains("from 1"));
  }
  CHECK(live_bytes() == before);
  float x = 0, gx = 0, mx = 0, vx = 0;
  AdamWConfig bad = cfg;
  bad.beta1 = 1.0;
  CHECK_THROWS_WITH(adamw_step(bad, &x, &gx, &mx, &vx, 1, 1, 1e-3), Catch::Contains("beta1"));
  bad = cfg;
  bad.eps = 0;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("eps"));
  bad = cfg;
  bad.weight_decay = -1;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("weight_decay"));
  CHECK_THROWS_AS(adamw_step(cfg, &x, &gx, &mx, &vx, 1, 1, -1.0), Error);
}

TEST_CASE("Index ranges: normalize and localize to a shard", "[optim]") {
  CHECK(normalize_ranges({{5, 9}, {0, 2}, {2, 3}, {7, 12}, {20, 20}}) ==
        std::vector<IndexRange>{{0, 3}, {5, 12}});
  CHECK_THROWS_AS(normalize_ranges({{3, 2}}), Error);
  CHECK_THROWS_AS(normalize_ranges({{-1, 2}}), Error);
  const std::vector<IndexRange> full{{0, 4}, {10, 30}, {45, 50}};
  CHECK(localize_ranges(full, 0, 16) == std::vector<IndexRange>{{0, 4}, {10, 16}});
  CHECK(localize_ranges(full, 16, 16) == std::vector<IndexRange>{{0, 14}});
  CHECK(localize_ranges(full, 32, 16) == std::vector<IndexRange>{{13, 16}});
  CHECK(localize_ranges(full, 48, 16) == std::vector<IndexRange>{{0, 2}});
  CHECK(localize_ranges(full, 64, 16).empty());
}

// --- learning-rate schedule
// ------------------------------------------------------------------------

TEST_CASE("LR schedule: linear warm-up then cosine to min_lr (steps from 1)", "[optim]") {
  LrSchedule s;
  s.lr = 1e-3;
  s.min_lr = 1e-4;
  s.warmup_steps = 10;
  s.total_steps = 110;
  s.validate();
  CHECK(s.lr_at(0) == 0.0);                             // before the first update
  CHECK(s.lr_at(1) == Approx(1e-4).epsilon(1e-15));     // warm-up start: lr / W
  CHECK(s.lr_at(5) == Approx(5e-4).epsilon(1e-15));     // warm-up middle
  CHECK(s.lr_at(10) == 1e-3);                           // warm-up end: exactly lr
  CHECK(s.lr_at(60) == Approx(5.5e-4).epsilon(1e-15));  // cosine middle: (lr + min_lr) / 2
  // A quarter of the way: min + (lr - min) * (1 + cos(pi / 4)) / 2.
  CHECK(s.lr_at(35) == Approx(1e-4 + 9e-4 * 0.5 * (1 + std::sqrt(0.5))).epsilon(1e-14));
  CHECK(s.lr_at(110) == 1e-4);  // end: exactly min_lr
  CHECK(s.lr_at(111) == 1e-4);
  CHECK(s.lr_at(100000) == 1e-4);
  for (int64_t t = 1; t < 10; ++t) CHECK(s.lr_at(t) < s.lr_at(t + 1));
  for (int64_t t = 10; t < 110; ++t) CHECK(s.lr_at(t) > s.lr_at(t + 1));
  CHECK(s.lr_at(11) < 1e-3);
  CHECK(s.lr_at(11) > 0.999e-3);

  LrSchedule no_warmup = s;
  no_warmup.warmup_steps = 0;
  no_warmup.total_steps = 4;
  CHECK(no_warmup.lr_at(1) == Approx(1e-4 + 9e-4 * 0.5 * (1 + std::cos(std::numbers::pi / 4))));
  CHECK(no_warmup.lr_at(2) == Approx(5.5e-4));
  CHECK(no_warmup.lr_at(4) == 1e-4);

  LrSchedule warmup_only = s;
  warmup_only.warmup_steps = warmup_only.total_steps = 4;
  warmup_only.validate();
  CHECK(warmup_only.lr_at(2) == Approx(5e-4));
  CHECK(warmup_only.lr_at(4) == 1e-3);
  CHECK(warmup_only.lr_at(5) == 1e-4);

  LrSchedule bad = s;
  bad.min_lr = 2e-3;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("min_lr"));
  bad = s;
  bad.warmup_steps = -1;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("warmup_steps"));
  // A warm-up longer than the run (a short run of a preset) is valid and stays in warm-up.
  LrSchedule long_warmup = s;
  long_warmup.warmup_steps = long_warmup.total_steps * 2;
  long_warmup.validate();
  CHECK(long_warmup.lr_at(long_warmup.total_steps) == Approx(0.5 * long_warmup.lr));
  bad = s;
  bad.total_steps = 0;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("total_steps"));
  bad = s;
  bad.lr = -1e-3;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("lr must be"));
  bad.lr = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("lr must be"));
  // lr = 0 (optim.lr's range is >= 0): a schedule that stays at 0.
  LrSchedule zero = s;
  zero.lr = zero.min_lr = 0;
  CHECK_NOTHROW(zero.validate());
  for (int64_t t = 0; t <= zero.total_steps + 1; ++t) CHECK(zero.lr_at(t) == 0.0);
}

// --- gradient clipping
// -----------------------------------------------------------------------------

namespace {

// Two "layers" of gradients, sharded over `c` by ShardLayout (uneven sizes, so some shards carry
// padding and some ranks hold nothing of the small layer). Every rank knows the full values, so
// it can compute the float64 norm of the concatenation itself.
struct ShardedGrads {
  std::vector<std::vector<float>> full, local;
  std::vector<std::span<float>> spans;

  ShardedGrads(Communicator& c, std::vector<int64_t> sizes, uint64_t seed) {
    for (size_t l = 0; l < sizes.size(); ++l) {
      std::vector<float> f(size_t(sizes[l]));
      for (int64_t i = 0; i < sizes[l]; ++i) f[size_t(i)] = smooth(seed + l, i) * float(l + 1);
      const ShardLayout lay = ShardLayout::make(sizes[l], c.size(), c.rank());
      local.emplace_back(f.begin() + lay.shard_begin(),
                         f.begin() + lay.shard_begin() + lay.shard_valid());
      full.push_back(std::move(f));
    }
    for (auto& v : local) spans.emplace_back(v.data(), v.size());
  }
  double full_norm() const {
    double s = 0;
    for (const auto& f : full)
      for (float x : f) s += double(x) * x;
    return std::sqrt(s);
  }
};

}  // namespace

TEST_CASE("Gradient clipping: the global norm over the fsdp x sp shards", "[optim]") {
  Mesh mesh(MeshShape{1, -1, 1, 1});
  Communicator& group = mesh.fsdp_sp();
  REQUIRE(group.size() == world_size());
  ShardedGrads g(group, {1001, 3}, 11);
  const double expected = g.full_norm();

  SECTION("scaled when above max_norm") {
    const double max_norm = expected / 4;
    const GradNormResult r = clip_grad_norm(g.spans, max_norm, &group);
    CHECK(r.finite);
    CHECK(r.norm == Approx(expected).epsilon(1e-12));
    CHECK(same_on_every_rank(group, r.norm));
    CHECK(r.clipped());
    CHECK(r.scale == Approx(max_norm / (expected + 1e-6)).epsilon(1e-12));
    // The local values are scaled, and the new global norm is max_norm (up to float32 rounding
    // of the scaled values and the 1e-6).
    size_t bad = 0;
    for (size_t l = 0; l < g.local.size(); ++l) {
      const ShardLayout lay =
          ShardLayout::make(int64_t(g.full[l].size()), group.size(), group.rank());
      for (size_t i = 0; i < g.local[l].size(); ++i)
        bad += g.local[l][i] != float(double(g.full[l][size_t(lay.shard_begin()) + i]) * r.scale);
    }
    CHECK(bad == 0);
    const double after = clip_grad_norm(g.spans, 0, &group).norm;
    CHECK(after == Approx(max_norm).epsilon(1e-6));
  }
  SECTION("untouched when below max_norm") {
    const auto before = g.local;
    const GradNormResult r = clip_grad_norm(g.spans, expected * 2, &group);
    CHECK(r.norm == Approx(expected).epsilon(1e-12));
    CHECK(r.scale == 1.0);
    CHECK_FALSE(r.clipped());
    CHECK(g.local == before);
  }
  SECTION("max_norm <= 0 disables clipping but still reports the norm") {
    const auto before = g.local;
    for (double off : {0.0, -1.0}) {
      const GradNormResult r = clip_grad_norm(g.spans, off, &group);
      CHECK(r.finite);
      CHECK(r.norm == Approx(expected).epsilon(1e-12));
      CHECK(r.scale == 1.0);
    }
    CHECK(g.local == before);
  }
  SECTION("a non-finite gradient on one rank is reported on every rank") {
    for (float bad : {std::numeric_limits<float>::infinity(), std::nanf("")}) {
      ShardedGrads h(group, {1001, 3}, 12);
      // Only the last rank holds the bad value (it holds part of the big layer at every size).
      if (group.rank() == group.size() - 1) h.local[0].back() = bad;
      const auto before = h.local;
      const GradNormResult r = clip_grad_norm(h.spans, 1.0, &group);
      CHECK_FALSE(r.finite);
      CHECK_FALSE(std::isfinite(r.norm));
      CHECK(r.scale == 1.0);
      // Untouched (compared bitwise: NaN != NaN).
      for (size_t l = 0; l < h.local.size(); ++l)
        CHECK((h.local[l].empty() ||
               std::memcmp(h.local[l].data(), before[l].data(), h.local[l].size() * 4) == 0));
    }
  }
  SECTION("no group: this rank's buffers alone") {
    const GradNormResult r = clip_grad_norm(g.spans, 0, nullptr);
    CHECK(r.norm == Approx(std::sqrt(local_sq_norm(g.spans))).epsilon(1e-15));
  }
}

TEST_CASE("Gradient clipping is not double counted over dp replicas", "[optim]") {
  // dp = 2 where the world allows it: both replicas hold the same shards, and the norm is
  // summed over fsdp x sp only, so it equals the norm of one copy of the gradients.
  const int w = world_size();
  Mesh mesh(MeshShape{w % 2 == 0 ? 2 : 1, -1, 1, 1});
  Communicator& group = mesh.fsdp_sp();
  ShardedGrads g(group, {517, 64}, 21);
  const GradNormResult r = clip_grad_norm(g.spans, 0, &group);
  CHECK(r.norm == Approx(g.full_norm()).epsilon(1e-12));
  CHECK(same_on_every_rank(mesh.world(), r.norm));
}

// --- FSDP
// ------------------------------------------------------------------------------------------

TEST_CASE("FSDP shard layout pads to a multiple of the group size", "[optim]") {
  for (int gsize : {1, 2, 3, 4, 7}) {
    for (int64_t n : kSizes) {
      int64_t total_valid = 0;
      for (int r = 0; r < gsize; ++r) {
        const ShardLayout l = ShardLayout::make(n, gsize, r);
        CHECK(l.padded_numel % gsize == 0);
        CHECK(l.padded_numel >= n);
        CHECK(l.padded_numel - n < gsize);
        CHECK(l.shard_numel * gsize == l.padded_numel);
        CHECK(l.shard_begin() == r * l.shard_numel);
        total_valid += l.shard_valid();
      }
      CHECK(total_valid == n);
    }
  }
  CHECK_THROWS_AS(ShardLayout::make(5, 0, 0), Error);
  CHECK_THROWS_AS(ShardLayout::make(5, 2, 2), Error);
  CHECK_THROWS_AS(ShardLayout::make(-1, 2, 0), Error);
}

TEST_CASE("FSDP group mode: async where MPI_THREAD_MULTIPLE is granted", "[optim]") {
  Mesh mesh(MeshShape{1, -1, 1, 1});
  FsdpGroup group(mesh.fsdp_sp());
  CHECK(group.async() == (MpiEnv::thread_multiple() && world_size() > 1));
  if (!MpiEnv::thread_multiple()) WARN("MPI did not grant MPI_THREAD_MULTIPLE: sync mode only");
  // Jobs run in order and report their errors through their futures.
  std::vector<int> order;
  auto a = group.submit([&] { order.push_back(1); });
  auto b = group.submit([&] { throw std::runtime_error("job failed"); });
  auto c = group.submit([&] { order.push_back(3); });
  group.synchronize();
  a.get();
  CHECK_THROWS_WITH(b.get(), "job failed");
  c.get();
  CHECK(order == std::vector<int>{1, 3});
}

TEST_CASE("FSDP prefetch returns at once in async mode and blocks in sync mode", "[optim]") {
  // The last rank arrives 300 ms late. An async prefetch on the other ranks must not wait for
  // it (the gather waits on the helper thread); a sync one must.
  Mesh mesh(MeshShape{1, -1, 1, 1});
  if (mesh.fsdp_sp().size() == 1) return;  // nobody to wait for
  for (FsdpGroup::Mode mode : modes()) {
    INFO("mode " << mode_name(mode));
    FsdpGroup group(mesh.fsdp_sp(), mode);
    FlatShard layer(group, 4096, "layer");
    const bool late = group.rank() == group.size() - 1;
    group.comm().barrier();  // nothing is queued, so the group's communicator is free to use
    if (late) std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const auto t0 = std::chrono::steady_clock::now();
    layer.prefetch_full();
    const double issue =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    layer.gather_full();
    if (!late) {
      if (mode == FsdpGroup::Mode::Async)
        CHECK(issue < 0.1);
      else
        CHECK(issue >= 0.2);
    }
    layer.release_full();
  }
}

TEST_CASE("FSDP gather_full reproduces the full buffer on every rank", "[optim]") {
  Mesh mesh(MeshShape{1, -1, 1, 1});
  for (FsdpGroup::Mode mode : modes()) {
    INFO("mode " << mode_name(mode));
    FsdpGroup group(mesh.fsdp_sp(), mode);
    for (int64_t n : kSizes) {
      INFO("N = " << n << ", G = " << group.size());
      std::vector<float> full(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) full[size_t(i)] = smooth(31, i);
      FlatShard layer(group, n, "layer");
      const ShardLayout& l = layer.layout();
      layer.load_full(full.data(), n);
      // The shard is this rank's slice, and its padding is zero.
      const float* p = layer.params().data<float>();
      REQUIRE(layer.params().numel() == l.shard_numel);
      for (int64_t i = 0; i < l.shard_numel; ++i)
        CHECK(p[i] == (i < l.shard_valid() ? full[size_t(l.shard_begin() + i)] : 0.0f));
      CHECK(layer.param_span().size() == size_t(l.shard_valid()));

      const size_t before = live_bytes();
      CHECK_FALSE(layer.has_full());
      Tensor f = layer.gather_full();
      CHECK(layer.has_full());
      REQUIRE(f.numel() == n);
      if (group.size() == 1) {
        // A group of one gathers nothing: the master shard is the full buffer, read in place.
        CHECK(live_bytes() == before);
        CHECK(f.data<float>() == layer.params().data<float>());
      } else {
        CHECK(live_bytes() == before + size_t(l.padded_numel) * sizeof(float));
      }
      CHECK((n == 0 || std::memcmp(f.data<float>(), full.data(), size_t(n) * 4) == 0));
      f = Tensor();
      layer.release_full();
      CHECK_FALSE(layer.has_full());
      CHECK(live_bytes() == before);  // the full buffer is gone from the accounting
      // A second gather (backward with checkpointing) gives the same values.
      f = layer.gather_full();
      CHECK((n == 0 || std::memcmp(f.data<float>(), full.data(), size_t(n) * 4) == 0));
    }
  }
}

TEST_CASE("FSDP prefetch: the next layer's all-gather runs ahead of use", "[optim]") {
  Mesh mesh(MeshShape{1, -1, 1, 1});
  for (FsdpGroup::Mode mode : modes()) {
    INFO("mode " << mode_name(mode));
    FsdpGroup group(mesh.fsdp_sp(), mode);
    const int64_t sizes[] = {1001, 7, 64, 300, 13};
    std::vector<std::unique_ptr<FlatShard>> layers;
    std::vector<std::vector<float>> fulls;
    for (size_t k = 0; k < std::size(sizes); ++k) {
      std::vector<float> f(size_t(sizes[k]));
      for (int64_t i = 0; i < sizes[k]; ++i) f[size_t(i)] = dyadic(40 + k, i);
      layers.push_back(std::make_unique<FlatShard>(group, sizes[k], fmt::format("layer {}", k)));
      layers.back()->load_full(f.data(), sizes[k]);
      fulls.push_back(std::move(f));
    }
    const size_t before = live_bytes();
    // Forward: prefetch layer k+1 while "computing" layer k; then a backward pass in reverse
    // with the gradient reduce-scatter of layer k queued behind the prefetch of layer k-1.
    layers[0]->prefetch_full();
    for (size_t k = 0; k < layers.size(); ++k) {
      if (k + 1 < layers.size()) layers[k + 1]->prefetch_full();
      const Tensor f = layers[k]->gather_full();
      CHECK(std::memcmp(f.data<float>(), fulls[k].data(), fulls[k].size() * 4) == 0);
      layers[k]->release_full();
    }
    CHECK(live_bytes() == before);
    layers.back()->prefetch_full();
    for (size_t k = layers.size(); k-- > 0;) {
      if (k > 0) layers[k - 1]->prefetch_full();
      const Tensor f = layers[k]->gather_full();
      CHECK(std::memcmp(f.data<float>(), fulls[k].data(), fulls[k].size() * 4) == 0);
      Tensor g = layers[k]->full_grad();
      for (int64_t i = 0; i < g.numel(); ++i) g.data<float>()[i] = f.data<float>()[i];
      g = Tensor();
      layers[k]->start_reduce_scatter_grads();
      layers[k]->release_full();
    }
    for (size_t k = 0; k < layers.size(); ++k) {
      layers[k]->wait_grads();
      // Every rank contributed the parameters as gradients: the shard holds G x its params.
      const std::span<float> gs = layers[k]->grad_span(), ps = layers[k]->param_span();
      size_t bad = 0;
      for (size_t i = 0; i < gs.size(); ++i) bad += gs[i] != float(group.size()) * ps[i];
      CHECK(bad == 0);
    }
    group.synchronize();
    CHECK(live_bytes() == before);
  }
}

TEST_CASE("FSDP reduce_scatter sums rank-dependent gradients into each shard", "[optim]") {
  Mesh mesh(MeshShape{1, -1, 1, 1});
  for (FsdpGroup::Mode mode : modes()) {
    INFO("mode " << mode_name(mode));
    FsdpGroup group(mesh.fsdp_sp(), mode);
    const int G = group.size(), me = group.rank();
    for (int64_t n : kSizes) {
      INFO("N = " << n << ", G = " << G);
      FlatShard layer(group, n, "layer");
      const ShardLayout& l = layer.layout();
      // Rank r's full gradient: dyadic(r, i) * (r + 1). The sum over ranks is exact in float32.
      auto contribution = [](int r, int64_t i) {
        return dyadic(50 + uint64_t(r), i) * float(r + 1);
      };
      std::vector<double> sum(size_t(n), 0.0);
      for (int r = 0; r < G; ++r)
        for (int64_t i = 0; i < n; ++i) sum[size_t(i)] += contribution(r, i);

      auto check_shard = [&](double factor) {
        const float* g = layer.grads().data<float>();
        size_t bad = 0;
        for (int64_t i = 0; i < l.shard_numel; ++i) {
          const double e = i < l.shard_valid() ? sum[size_t(l.shard_begin() + i)] * factor : 0.0;
          bad += g[i] != float(e);
        }
        CHECK(bad == 0);
      };

      const size_t before = live_bytes();
      // The owned buffer: full_grad(), consumed and freed by the reduce-scatter.
      {
        Tensor fg = layer.full_grad();
        REQUIRE(fg.numel() == n);
        for (int64_t i = 0; i < n; ++i) fg.data<float>()[i] = contribution(me, i);
      }
      layer.reduce_scatter_grads();
      CHECK(live_bytes() == before);
      check_shard(1.0);

      // The caller's [N] buffer, accumulated with scale 0.5: grads = sum + 0.5 * sum.
      Tensor mine = Tensor::empty({n}, DType::F32);
      for (int64_t i = 0; i < n; ++i) mine.data<float>()[i] = contribution(me, i);
      layer.start_reduce_scatter_grads(mine, 0.5f);
      layer.wait_grads();
      check_shard(1.5);

      // A mean over the group (scale 1 / G, exact for G = 1, 2, 4) after zero_grads().
      layer.zero_grads();
      layer.reduce_scatter_grads(mine, 1.0f / float(G));
      check_shard(1.0 / G);

      // Wrong sizes are refused before any communication (on every rank alike).
      Tensor wrong = Tensor::zeros({n + l.padded_numel + 1}, DType::F32);
      CHECK_THROWS_AS(layer.reduce_scatter_grads(wrong), Error);
    }
  }
}

TEST_CASE("FSDP dp all-reduce averages gradient shards over the replicas", "[optim]") {
  const int w = world_size();
  Mesh mesh(MeshShape{w % 2 == 0 ? 2 : 1, -1, 1, 1});
  FsdpGroup group(mesh.fsdp_sp());
  Communicator& dp = mesh.axis(Axis::DP);
  const int64_t n = 1001;
  FlatShard layer(group, n, "layer");
  const ShardLayout& l = layer.layout();
  // Replica d's reduced gradient is (d + 1) * base: the mean over D replicas is base * (D + 1) / 2.
  float* g = layer.grads().data<float>();
  const int d = mesh.coord(Axis::DP), D = mesh.size(Axis::DP);
  for (int64_t i = 0; i < l.shard_valid(); ++i)
    g[i] = dyadic(60, l.shard_begin() + i) * float(d + 1);
  layer.all_reduce_grads(dp);
  size_t bad = 0;
  for (int64_t i = 0; i < l.shard_numel; ++i) {
    const float base = i < l.shard_valid() ? dyadic(60, l.shard_begin() + i) : 0.0f;
    bad += g[i] != base * float(D + 1) / 2.0f;
  }
  CHECK(bad == 0);
  layer.all_reduce_grads(dp, /*mean=*/false);  // replicas now agree, so a sum is D x
  bad = 0;
  for (int64_t i = 0; i < l.shard_valid(); ++i)
    bad += g[i] != dyadic(60, l.shard_begin() + i) * float(D + 1) / 2.0f * float(D);
  CHECK(bad == 0);
  CHECK_THROWS_AS(layer.all_reduce_grads(group.comm()), Error);
}

TEST_CASE("FSDP: a sharded AdamW step equals an unsharded one bit for bit", "[optim]") {
  Mesh mesh(MeshShape{1, -1, 1, 1});
  for (FsdpGroup::Mode mode : modes()) {
    INFO("mode " << mode_name(mode));
    FsdpGroup group(mesh.fsdp_sp(), mode);
    const int G = group.size(), me = group.rank();
    for (int64_t n : {int64_t(1003), int64_t(64), int64_t(5)}) {
      INFO("N = " << n << ", G = " << G);
      AdamWConfig cfg;
      cfg.weight_decay = 0.1;
      // Norm-weight-like ranges at the start, middle and end of the layer.
      const std::vector<IndexRange> no_decay{{0, 2}, {n / 2, n / 2 + 3}, {n - 2, n}};
      LrSchedule sched;
      sched.lr = 1e-2;
      sched.min_lr = 1e-3;
      sched.warmup_steps = 2;
      sched.total_steps = 5;

      std::vector<float> init(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) init[size_t(i)] = smooth(70, i);
      FlatShard layer(group, n, "layer");
      layer.load_full(init.data(), n);
      layer.set_no_decay(no_decay);
      // The unsharded reference, as one rank alone would run it.
      std::vector<float> p = init, m(size_t(n), 0.0f), v(size_t(n), 0.0f),
                         g(static_cast<size_t>(n));

      for (int64_t t = 1; t <= 5; ++t) {
        // Each rank's gradient contribution is dyadic, so the reduced sum is exact and equals
        // the unsharded run's gradient.
        Tensor fg = layer.full_grad();
        for (int64_t i = 0; i < n; ++i) {
          fg.data<float>()[i] = dyadic(80 + uint64_t(t) * 10 + uint64_t(me), i);
          double s = 0;
          for (int r = 0; r < G; ++r) s += dyadic(80 + uint64_t(t) * 10 + uint64_t(r), i);
          g[size_t(i)] = float(s);
        }
        fg = Tensor();
        layer.start_reduce_scatter_grads();
        layer.adamw_step(cfg, t, sched.lr_at(t));  // waits for the reduce-scatter
        layer.zero_grads();
        adamw_step(cfg, p.data(), g.data(), m.data(), v.data(), n, t, sched.lr_at(t), no_decay);
      }
      const Tensor full = layer.gather_full();
      CHECK(std::memcmp(full.data<float>(), p.data(), size_t(n) * 4) == 0);
      // The optimizer state is the shard of the unsharded state, and only the shard's size.
      const ShardLayout& l = layer.layout();
      const AdamWState& st = layer.optimizer_state();
      REQUIRE(st.numel() == l.shard_numel);
      const size_t valid = size_t(l.shard_valid());
      CHECK((valid == 0 ||
             std::memcmp(st.m.data<float>(), m.data() + l.shard_begin(), valid * 4) == 0));
      CHECK((valid == 0 ||
             std::memcmp(st.v.data<float>(), v.data() + l.shard_begin(), valid * 4) == 0));
      // Padding stays zero through the updates.
      for (int64_t i = l.shard_valid(); i < l.shard_numel; ++i)
        CHECK(layer.params().data<float>()[i] == 0.0f);
      layer.release_full();
    }
  }
}

TEST_CASE("FSDP clip_grad_norm over layers: the norm of the full reduced gradients", "[optim]") {
  Mesh mesh(MeshShape{1, -1, 1, 1});
  FsdpGroup group(mesh.fsdp_sp());
  const int G = group.size(), me = group.rank();
  const int64_t sizes[] = {1001, 13};
  std::vector<std::unique_ptr<FlatShard>> layers;
  std::vector<FlatShard*> ptrs;
  double sq = 0;
  std::vector<std::vector<float>> sums;
  for (size_t k = 0; k < std::size(sizes); ++k) {
    layers.push_back(std::make_unique<FlatShard>(group, sizes[k], fmt::format("layer {}", k)));
    ptrs.push_back(layers.back().get());
    std::vector<float> sum(static_cast<size_t>(sizes[k]));
    Tensor fg = layers.back()->full_grad();
    for (int64_t i = 0; i < sizes[k]; ++i) {
      fg.data<float>()[i] = dyadic(90 + k * 8 + uint64_t(me), i);
      double s = 0;
      for (int r = 0; r < G; ++r) s += dyadic(90 + k * 8 + uint64_t(r), i);
      sum[size_t(i)] = float(s);
      sq += s * s;
    }
    fg = Tensor();
    layers.back()->start_reduce_scatter_grads();  // clip waits for it
    sums.push_back(std::move(sum));
  }
  const double expected = std::sqrt(sq);
  const GradNormResult r = clip_grad_norm(ptrs, expected / 2);
  CHECK(r.finite);
  CHECK(r.norm == Approx(expected).epsilon(1e-12));
  CHECK(r.clipped());
  size_t bad = 0;
  for (size_t k = 0; k < layers.size(); ++k) {
    const ShardLayout& l = layers[k]->layout();
    const std::span<float> g = layers[k]->grad_span();
    for (size_t i = 0; i < g.size(); ++i)
      bad += g[i] != float(double(sums[k][size_t(l.shard_begin()) + i]) * r.scale);
  }
  CHECK(bad == 0);
}
