// The backend's attention tiles (core/attention_tile.h) against the float64 reference
// (test/reference_attention.h), on the CPU backend. Sizes are small: every rank of the 1, 2 and 4
// rank ctest runs executes all of this independently.
//
// Tolerances (|got - want| <= atol + rtol * |want|), inputs ~N(0, 1), scale 1/sqrt(D):
//   o, lse        2e-5 / 2e-5   (float32 GEMMs over <= 128 keys, exp to ~2e-7)
//   dq, dk, dv    5e-5 / 5e-5   (sums of up to 128 products of O(1) terms, twice over)
//   split blocks vs one call: the same tolerances (the merge order changes the rounding)
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "core/allocator.h"
#include "core/backend.h"
#include "core/cpu/attention_kernels.h"
#include "core/dtype.h"
#include "model/attention/layout.h"
#include "test/close_vectors.h"
#include "test/reference_attention.h"

using namespace ringattn;
using ringattn::test::check_close;
using ringattn::test::iota;
using ringattn::test::packed_segments;
using ringattn::test::randn;
using ringattn::test::reference_attention;
using ringattn::test::RefProblem;
using ringattn::test::RefResult;

namespace {

constexpr double kOutTol = 2e-5;
constexpr double kGradTol = 5e-5;

struct Inputs {
  RefProblem p;
  std::vector<float> q, k, v, dout;
};

Inputs make_inputs(int64_t batch, int64_t sq, int64_t sk, int heads, int kv_heads, int head_dim,
                   bool causal, uint32_t seed) {
  Inputs in;
  in.p.batch = batch;
  in.p.sq = sq;
  in.p.sk = sk;
  in.p.heads = heads;
  in.p.kv_heads = kv_heads;
  in.p.head_dim = head_dim;
  in.p.scale = 1.0 / std::sqrt(double(head_dim));
  in.p.causal = causal;
  in.p.q_pos = iota(sq);
  in.p.k_pos = iota(sk);
  in.q = randn(size_t(batch * sq * heads * head_dim), seed);
  in.k = randn(size_t(batch * sk * kv_heads * head_dim), seed + 1);
  in.v = randn(size_t(batch * sk * kv_heads * head_dim), seed + 2);
  in.dout = randn(in.q.size(), seed + 3);
  return in;
}

struct Result {
  std::vector<float> o, lse, dq, dk, dv;
  AttentionTileStats fwd, bwd;
};

// Runs the tiles the way blockwise/ring do: one forward_block (and one backward_block) per KV
// block, each block a list of indices into the full key set, carrying its positions and segment
// ids. No blocks given: one block holding every key in order. `kv_as_bf16` (with bf16): each
// block's keys and values are handed over as bfloat16 (k_bf16, v_bf16), as the ring sends them.
Result run_tiles(const Inputs& in, int64_t q_chunk, int64_t k_chunk,
                 std::vector<std::vector<int64_t>> blocks = {}, bool backward = true,
                 bool bf16 = false, bool kv_as_bf16 = false) {
  Backend& be = cpu_backend();
  const RefProblem& rp = in.p;
  const int64_t B = rp.batch, Sq = rp.sq, Sk = rp.sk, H = rp.heads, Hkv = rp.kv_heads,
                D = rp.head_dim;
  if (blocks.empty()) blocks.push_back(iota(Sk));
  const bool seg = !rp.q_seg.empty();

  struct Block {
    std::vector<float> k, v;
    std::vector<uint16_t> k16, v16;
    std::vector<int64_t> pos;
    std::vector<int32_t> seg;
    int64_t n = 0;
  };
  std::vector<Block> kv;
  for (const auto& idx : blocks) {
    Block blk;
    blk.n = int64_t(idx.size());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j : idx) {
        const size_t off = size_t(((b * Sk + j) * Hkv) * D);
        blk.k.insert(blk.k.end(), in.k.begin() + off, in.k.begin() + off + Hkv * D);
        blk.v.insert(blk.v.end(), in.v.begin() + off, in.v.begin() + off + Hkv * D);
        if (seg) blk.seg.push_back(rp.k_seg[size_t(b * Sk + j)]);
      }
    for (int64_t j : idx) blk.pos.push_back(rp.k_pos[size_t(j)]);
    for (float x : blk.k) blk.k16.push_back(f32_to_bf16(x));
    for (float x : blk.v) blk.v16.push_back(f32_to_bf16(x));
    kv.push_back(std::move(blk));
  }
  auto problem = [&](const Block& blk) {
    AttentionTileProblem p;
    p.batch = B;
    p.sq = Sq;
    p.sk = blk.n;
    p.heads = int(H);
    p.kv_heads = int(Hkv);
    p.head_dim = int(D);
    p.scale = float(rp.scale);
    p.causal = rp.causal;
    p.q_chunk = q_chunk;
    p.k_chunk = k_chunk;
    p.q_pos = rp.q_pos.data();
    p.k_pos = blk.pos.data();
    p.q_seg = seg ? rp.q_seg.data() : nullptr;
    p.k_seg = seg ? blk.seg.data() : nullptr;
    p.q = in.q.data();
    p.k = kv_as_bf16 ? nullptr : blk.k.data();
    p.v = kv_as_bf16 ? nullptr : blk.v.data();
    p.k_bf16 = kv_as_bf16 ? blk.k16.data() : nullptr;
    p.v_bf16 = kv_as_bf16 ? blk.v16.data() : nullptr;
    p.bf16 = bf16;
    return p;
  };

  Result r;
  std::vector<float> acc(in.q.size()), m(size_t(B * H * Sq)), l(m.size());
  AttentionForwardState st{acc.data(), m.data(), l.data()};
  be.attention_forward_init(st, B, Sq, int(H), int(D));
  for (const Block& blk : kv) be.attention_forward_block(problem(blk), st, &r.fwd);
  r.o.resize(in.q.size());
  r.lse.resize(m.size());
  be.attention_forward_finish(st, r.o.data(), r.lse.data(), B, Sq, int(H), int(D));
  if (!backward) return r;

  std::vector<float> delta(m.size());
  be.attention_backward_delta(in.dout.data(), r.o.data(), delta.data(), B, Sq, int(H), int(D));
  r.dq.assign(in.q.size(), 0.0f);
  r.dk.assign(in.k.size(), 0.0f);
  r.dv.assign(in.v.size(), 0.0f);
  for (size_t bi = 0; bi < kv.size(); ++bi) {
    const Block& blk = kv[bi];
    std::vector<float> dk(blk.k.size(), 0.0f), dv(blk.v.size(), 0.0f);
    AttentionBackwardArgs a{in.dout.data(), r.lse.data(), delta.data(),
                            r.dq.data(),    dk.data(),    dv.data()};
    be.attention_backward_block(problem(blk), a, &r.bwd);
    for (int64_t b = 0; b < B; ++b)
      for (size_t jj = 0; jj < blocks[bi].size(); ++jj)
        for (int64_t e = 0; e < Hkv * D; ++e) {
          const size_t src = size_t((b * blk.n + int64_t(jj)) * Hkv * D + e);
          const size_t dst = size_t((b * Sk + blocks[bi][jj]) * Hkv * D + e);
          r.dk[dst] += dk[src];
          r.dv[dst] += dv[src];
        }
  }
  return r;
}

bool all_finite(const std::vector<float>& x) {
  return std::all_of(x.begin(), x.end(), [](float e) { return std::isfinite(e); });
}

void check_against_reference(const Inputs& in, const Result& r, bool backward = true) {
  const RefResult ref =
      reference_attention(in.p, in.q, in.k, in.v, backward ? in.dout : std::vector<float>{});
  check_close(r.o, ref.o, kOutTol, "o");
  check_close(r.lse, ref.lse, kOutTol, "lse");
  if (!backward) return;
  check_close(r.dq, ref.dq, kGradTol, "dq");
  check_close(r.dk, ref.dk, kGradTol, "dk");
  check_close(r.dv, ref.dv, kGradTol, "dv");
}

// Sets the CPU thread count for one scope (tests run with OPENBLAS_NUM_THREADS=1).
struct ThreadsFor {
  int saved = cpu_threads();
  explicit ThreadsFor(int n) { set_cpu_threads(n); }
  ~ThreadsFor() { set_cpu_threads(saved); }
};

}  // namespace

TEST_CASE("attention tiles: fast exp and row kernels", "[attention]") {
  using cpu::fast_exp;
  double worst = 0;
  for (float x = -85.0f; x <= 80.0f; x += 0.01234f)
    worst = std::max(worst, std::abs(double(fast_exp(x)) / std::exp(double(x)) - 1.0));
  CHECK(worst < 5e-7);
  CHECK(fast_exp(0.0f) == 1.0f);
  CHECK(fast_exp(kMaskedScore) == 0.0f);
  CHECK(fast_exp(kMaskedScore - 5.0f) == 0.0f);
  CHECK(fast_exp(-87.0f) == 0.0f);
  CHECK(std::isnan(fast_exp(std::numeric_limits<float>::quiet_NaN())));

  const cpu::RowKernels& fast = cpu::row_kernels();
  const cpu::RowKernels& slow = cpu::portable_row_kernels();
  INFO("row kernels: " << fast.isa);
  for (int64_t n : {0, 1, 7, 8, 15, 16, 17, 31, 33, 100}) {
    std::vector<float> x = randn(size_t(n), uint32_t(7 + n));
    for (int64_t j = 0; j < n; j += 5) x[size_t(j)] = kMaskedScore;  // masked scores give 0
    for (float& e : x) e *= e == kMaskedScore ? 1.0f : 20.0f;        // spread into the flush range
    CHECK(fast.row_max(x.data(), n) == slow.row_max(x.data(), n));
    const float bias = n ? slow.row_max(x.data(), n) : 0.0f;
    std::vector<float> a = x, b = x;
    const float sa = fast.exp_sum(a.data(), n, bias), sb = slow.exp_sum(b.data(), n, bias);
    CHECK(sa == Approx(sb).epsilon(1e-6).margin(1e-30));
    for (int64_t j = 0; j < n; ++j) {
      CHECK(a[size_t(j)] == Approx(b[size_t(j)]).epsilon(1e-6).margin(0));
      if (j % 5 == 0 && bias > kMaskedScore) CHECK(a[size_t(j)] == 0.0f);
    }
    std::vector<float> g = randn(size_t(n), uint32_t(99 + n)), h = g;
    fast.softmax_grad(g.data(), a.data(), n, 0.25f);
    slow.softmax_grad(h.data(), a.data(), n, 0.25f);
    CHECK(g == h);
  }
  CHECK(std::isinf(fast.row_max(nullptr, 0)));
}

TEST_CASE("attention tiles: forward and backward match the f64 reference", "[attention]") {
  const bool causal = GENERATE(false, true);
  struct Shape {
    int64_t sq, sk, q_chunk, k_chunk;
  };
  const Shape s = GENERATE(Shape{64, 64, 16, 16},    // chunks divide the lengths
                           Shape{100, 100, 32, 24},  // they do not
                           Shape{100, 100, 0, 0},    // one whole tile (vanilla)
                           Shape{40, 72, 16, 32},    // more keys than queries
                           Shape{72, 40, 7, 128});   // a key chunk beyond the block
  INFO("causal " << causal << " sq " << s.sq << " sk " << s.sk << " q_chunk " << s.q_chunk
                 << " k_chunk " << s.k_chunk);
  Inputs in = make_inputs(2, s.sq, s.sk, 2, 2, 16, causal, 11);
  if (causal && s.sk > s.sq)  // queries at the end of the key range, as in a KV cache
    in.p.q_pos = iota(s.sq, s.sk - s.sq);
  check_against_reference(in, run_tiles(in, s.q_chunk, s.k_chunk));
}

// The worst |got - want| / (1 + |want|) over the elements.
double worst_scaled(const std::vector<float>& got, const std::vector<double>& want) {
  double w = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::isfinite(want[i]))
      w = std::max(w, std::abs(double(got[i]) - want[i]) / (1 + std::abs(want[i])));
  return w;
}
double worst_scaled(const std::vector<float>& got, const std::vector<float>& want) {
  return worst_scaled(got, std::vector<double>(want.begin(), want.end()));
}

TEST_CASE("attention tiles: bf16 tile GEMMs, at bf16 precision of the float64 result",
          "[attention]") {
  const bool causal = GENERATE(false, true);
  INFO("causal " << causal);
  Inputs in = make_inputs(2, 100, 100, 4, 2, 32, causal, 21);
  const Result r = run_tiles(in, 32, 24, {}, true, true);
  const Result f32 = run_tiles(in, 32, 24);
  const RefResult ref = reference_attention(in.p, in.q, in.k, in.v, in.dout);
  // The float64 result of the bf16-rounded inputs: what is left between it and the tiles is the
  // rounding of P and dS (and float32 sums).
  auto rounded = [](std::vector<float> x) {
    for (float& e : x) e = bf16_to_f32(f32_to_bf16(e));
    return x;
  };
  const RefResult rref =
      reference_attention(in.p, rounded(in.q), rounded(in.k), rounded(in.v), rounded(in.dout));
  const std::pair<const char*, std::pair<const std::vector<float>*, const std::vector<double>*>>
      outs[] = {{"o", {&r.o, &ref.o}},
                {"dq", {&r.dq, &ref.dq}},
                {"dk", {&r.dk, &ref.dk}},
                {"dv", {&r.dv, &ref.dv}}};
  // Scaled errors |x - ref| / (1 + |ref|) seen (2 x 100 tokens, H 4, Hkv 2, D 32): against the
  // exact result up to 1.2e-2; against the rounded inputs' result up to 1e-2; float32 tiles
  // differ from bf16 ones by 3e-3 to 5e-3; three blocks against one up to 2.6e-3.
  for (const auto& [name, pr] : outs) {
    INFO(name);
    CHECK(worst_scaled(*pr.first, *pr.second) <= 4e-2);
  }
  CHECK(worst_scaled(r.o, rref.o) <= 3e-2);
  CHECK(worst_scaled(r.dq, rref.dq) <= 3e-2);
  CHECK(worst_scaled(r.dk, rref.dk) <= 3e-2);
  CHECK(worst_scaled(r.dv, rref.dv) <= 3e-2);
  CHECK(worst_scaled(f32.o, std::vector<double>(r.o.begin(), r.o.end())) > 1e-3);  // mode is on
  // The statistics use the rounded q, k but the unrounded P: lse is the rounded inputs' lse to
  // float32 accuracy (summing the rounded P instead would be off by about 1e-3).
  CHECK(worst_scaled(r.lse, rref.lse) <= 1e-5);
  CHECK(worst_scaled(f32.lse, rref.lse) > 1e-4);  // which float32 q, k do not give
  // Three KV blocks arriving in reverse (ring order): the running max differs, so P's rounding
  // differs; the result agrees to bf16 precision.
  const Result blocks = run_tiles(in, 32, 24, {iota(40, 60), iota(30, 30), iota(30)}, true, true);
  CHECK(worst_scaled(blocks.o, r.o) <= 1e-2);
  CHECK(worst_scaled(blocks.dq, r.dq) <= 1e-2);
  CHECK(worst_scaled(blocks.dk, r.dk) <= 1e-2);
  CHECK(worst_scaled(blocks.dv, r.dv) <= 1e-2);
  // Keys and values handed over as bf16 (what the ring sends under bf16) give the very same
  // results: the tiles round float32 ones to exactly these values.
  const Result kv16 =
      run_tiles(in, 32, 24, {iota(40, 60), iota(30, 30), iota(30)}, true, true, true);
  CHECK(kv16.o == blocks.o);
  CHECK(kv16.lse == blocks.lse);
  CHECK(kv16.dq == blocks.dq);
  CHECK(kv16.dk == blocks.dk);
  CHECK(kv16.dv == blocks.dv);
}

TEST_CASE("attention tiles: bf16 keys and values need a bf16 problem, both of them",
          "[attention]") {
  Inputs in = make_inputs(1, 8, 8, 2, 2, 8, true, 5);
  std::vector<uint16_t> k16(in.k.size()), v16(in.v.size());
  AttentionTileProblem p;
  p.batch = 1;
  p.sq = p.sk = 8;
  p.heads = p.kv_heads = 2;
  p.head_dim = 8;
  p.q = in.q.data();
  p.k_bf16 = k16.data();
  p.v_bf16 = v16.data();
  std::vector<float> acc(in.q.size()), m(16), l(16);
  const AttentionForwardState st{acc.data(), m.data(), l.data()};
  Backend& be = cpu_backend();
  be.attention_forward_init(st, 1, 8, 2, 8);
  CHECK_THROWS_WITH(be.attention_forward_block(p, st), Catch::Contains("need a bf16 problem"));
  p.bf16 = true;
  p.v_bf16 = nullptr;
  p.v = in.v.data();
  CHECK_THROWS_WITH(be.attention_forward_block(p, st), Catch::Contains("come together"));
}

TEST_CASE("attention tiles: grouped-query attention", "[attention]") {
  const int kv_heads = GENERATE(2, 1);
  const bool causal = GENERATE(false, true);
  INFO("H 4, Hkv " << kv_heads << ", causal " << causal);
  Inputs in = make_inputs(2, 80, 80, 4, kv_heads, 16, causal, 23);
  check_against_reference(in, run_tiles(in, 32, 16));
}

TEST_CASE("attention tiles: segment ids (packed documents)", "[attention]") {
  const bool causal = GENERATE(false, true);
  INFO("causal " << causal);
  Inputs in = make_inputs(2, 96, 96, 2, 1, 16, causal, 31);
  in.p.q_seg = packed_segments(2, 96, 5);
  in.p.k_seg = in.p.q_seg;
  const Result r = run_tiles(in, 32, 16);
  check_against_reference(in, r);
  CHECK(r.fwd.tiles_skipped > 0);  // tiles between different documents
}

TEST_CASE("attention tiles: fully masked rows give o = 0, lse = -inf, zero gradients",
          "[attention]") {
  auto check_masked_rows = [](const Inputs& in, const Result& r, const std::vector<int64_t>& rows) {
    const RefProblem& p = in.p;
    CHECK(all_finite(r.o));
    CHECK(all_finite(r.dq));
    CHECK(all_finite(r.dk));
    CHECK(all_finite(r.dv));
    for (int64_t b = 0; b < p.batch; ++b)
      for (int64_t i : rows)
        for (int64_t h = 0; h < p.heads; ++h) {
          CHECK(r.lse[size_t((b * p.heads + h) * p.sq + i)] ==
                -std::numeric_limits<float>::infinity());
          for (int64_t d = 0; d < p.head_dim; ++d) {
            const size_t e = size_t(((b * p.sq + i) * p.heads + h) * p.head_dim + d);
            CHECK(r.o[e] == 0.0f);
            CHECK(r.dq[e] == 0.0f);
          }
        }
  };

  SECTION("a segment id no key has") {
    Inputs in = make_inputs(1, 48, 48, 2, 2, 16, false, 41);
    in.p.q_seg.assign(48, 0);
    in.p.k_seg.assign(48, 0);
    std::vector<int64_t> rows;
    for (int64_t i = 5; i < 48; i += 9) in.p.q_seg[size_t(i)] = 7, rows.push_back(i);
    const Result r = run_tiles(in, 16, 16);
    check_against_reference(in, r);
    check_masked_rows(in, r, rows);
  }
  SECTION("causal, every key in the future") {
    Inputs in = make_inputs(1, 32, 32, 2, 1, 16, true, 43);
    in.p.k_pos = iota(32, 100);
    const Result r = run_tiles(in, 16, 16);
    check_masked_rows(in, r, iota(32));
    CHECK(r.fwd.tiles_computed == 0);
    CHECK(std::all_of(r.dk.begin(), r.dk.end(), [](float e) { return e == 0.0f; }));
    CHECK(std::all_of(r.dv.begin(), r.dv.end(), [](float e) { return e == 0.0f; }));
  }
  SECTION("causal, the first queries see nothing inside a masked tile, later blocks fill in") {
    // Keys at positions 10..41 in two blocks: queries 0..9 see no key at all; the first block's
    // tiles hold rows that are fully masked while other rows of the same tile are not.
    Inputs in = make_inputs(2, 32, 32, 2, 2, 16, true, 47);
    in.p.k_pos = iota(32, 10);
    const Result r = run_tiles(in, 16, 8, {iota(16), iota(16, 16)});
    check_against_reference(in, r);
    check_masked_rows(in, r, iota(10));
  }
}

TEST_CASE("attention tiles: several KV blocks equal one call over all keys", "[attention]") {
  const bool causal = GENERATE(false, true);
  const int parts = GENERATE(2, 3, 4);
  INFO("causal " << causal << ", " << parts << " blocks");
  Inputs in = make_inputs(2, 96, 96, 4, 2, 16, causal, 53);
  in.p.q_seg = packed_segments(2, 96, 9);
  in.p.k_seg = in.p.q_seg;
  std::vector<std::vector<int64_t>> blocks;
  for (int i = 0; i < parts; ++i) blocks.push_back(iota(96 / parts, i * (96 / parts)));
  std::reverse(blocks.begin(), blocks.end());  // the merge order must not matter
  const Result one = run_tiles(in, 32, 16);
  const Result split = run_tiles(in, 32, 16, blocks);
  check_close(split.o, one.o, kOutTol, "o split vs one call");
  check_close(split.lse, one.lse, kOutTol, "lse split vs one call");
  check_close(split.dq, one.dq, kGradTol, "dq split vs one call");
  check_close(split.dk, one.dk, kGradTol, "dk split vs one call");
  check_close(split.dv, one.dv, kGradTol, "dv split vs one call");
  check_against_reference(in, split);
}

TEST_CASE("attention tiles: ring layouts (local queries against every rank's block)",
          "[attention]") {
  const RingLayout layout =
      GENERATE(RingLayout::Contiguous, RingLayout::Zigzag, RingLayout::Striped);
  const int ranks = GENERATE(2, 4);
  const int64_t S = 128;
  for (int rank = 0; rank < ranks; ++rank) {
    INFO(layout_name(layout) << ", " << ranks << " ranks, rank " << rank);
    Inputs full = make_inputs(1, S, S, 2, 1, 16, true, 61);
    // Rank `rank` holds queries at its positions; the keys arrive in ring order.
    Inputs in = full;
    in.p.q_pos = layout_positions(layout, S, ranks, rank);
    in.p.sq = int64_t(in.p.q_pos.size());
    in.q.clear();
    in.dout.clear();
    const int64_t HD = 2 * 16;
    for (int64_t i : in.p.q_pos) {
      in.q.insert(in.q.end(), full.q.begin() + i * HD, full.q.begin() + (i + 1) * HD);
      in.dout.insert(in.dout.end(), full.dout.begin() + i * HD, full.dout.begin() + (i + 1) * HD);
    }
    std::vector<std::vector<int64_t>> blocks;
    for (int t = 0; t < ranks; ++t)
      blocks.push_back(layout_positions(layout, S, ranks, (rank - t + ranks) % ranks));
    const Result r = run_tiles(in, 16, 16, blocks);
    check_against_reference(in, r);
  }
}

TEST_CASE("attention tiles: causal tiles are skipped, computed or masked as expected",
          "[attention]") {
  SECTION("one block, contiguous: 4 x 4 tiles per head") {
    Inputs in = make_inputs(2, 128, 128, 2, 2, 16, true, 71);
    const Result r = run_tiles(in, 32, 32);
    const int64_t heads = 2 * 2;
    CHECK(r.fwd.tiles_computed == 10 * heads);
    CHECK(r.fwd.tiles_masked == 4 * heads);
    CHECK(r.fwd.tiles_skipped == 6 * heads);
    CHECK(r.fwd.flops == Approx(4.0 * 32 * 32 * 16 * 10 * heads));
    CHECK(r.bwd.tiles_computed == 10 * heads);
    CHECK(r.bwd.tiles_masked == 4 * heads);
    CHECK(r.bwd.tiles_skipped == 6 * heads);
    CHECK(r.bwd.flops == Approx(2.5 * r.fwd.flops));
  }
  SECTION("contiguous shards: a past block is unmasked, a future block is skipped") {
    Inputs in = make_inputs(1, 64, 192, 1, 1, 16, true, 73);
    in.p.q_pos = iota(64, 64);  // rank 1 of 3
    const Result past = run_tiles(in, 32, 32, {iota(64)}, false);
    CHECK(past.fwd.tiles_computed == 4);
    CHECK(past.fwd.tiles_masked == 0);
    CHECK(past.fwd.tiles_skipped == 0);
    const Result future = run_tiles(in, 32, 32, {iota(64, 128)}, false);
    CHECK(future.fwd.tiles_computed == 0);
    CHECK(future.fwd.tiles_skipped == 4);
    const Result diag = run_tiles(in, 32, 32, {iota(64, 64)}, false);
    CHECK(diag.fwd.tiles_computed == 3);
    CHECK(diag.fwd.tiles_masked == 2);
    CHECK(diag.fwd.tiles_skipped == 1);
  }
  SECTION("zigzag: every off-diagonal block costs half, even with chunks longer than a run") {
    const int64_t chunk = GENERATE(32, 64, 0);
    const int ranks = 4;
    const int64_t S = 256, c = S / (2 * ranks);
    Inputs in = make_inputs(1, S, S, 1, 1, 16, true, 79);
    in.p.sq = S / ranks;
    in.q.resize(size_t(in.p.sq * 16));
    for (int rank = 0; rank < ranks; ++rank)
      for (int src = 0; src < ranks; ++src) {
        if (src == rank) continue;
        INFO("chunk " << chunk << ", rank " << rank << " against the block of rank " << src);
        in.p.q_pos = layout_positions(RingLayout::Zigzag, S, ranks, rank);
        const Result r = run_tiles(in, chunk, chunk,
                                   {layout_positions(RingLayout::Zigzag, S, ranks, src)}, false);
        // Both halves of the query shard see exactly one half of the block, unmasked; the tiles
        // never straddle the jump inside a shard (chunks of 64 or the whole shard would).
        CHECK(r.fwd.tiles_masked == 0);
        CHECK(r.fwd.tiles_skipped > 0);
        CHECK(r.fwd.flops == Approx(4.0 * (2 * c) * (2 * c) * 16 / 2));
      }
  }
  SECTION("a key block that starts at its zigzag jump is cut at the jump") {
    // Rank 0 of 4 at S = 256 holds positions 0..31 and 224..255. A ring piece of a block may
    // start on the last token of its first half: keys 31, 224..255. Cut at the jump, the key
    // chunks are {31} and 224..255: (0..31, {31}) masked, (224..255, {31}) full, (0..31,
    // 224..255) skipped, the diagonal masked. Taking the first gap as the step made every later
    // gap a break and the block one run: chunk 31..254 straddled the jump, masked twice.
    const int64_t S = 256;
    Inputs in = make_inputs(1, S, S, 1, 1, 16, true, 89);
    in.p.sq = S / 4;
    in.q.resize(size_t(in.p.sq * 16));
    in.p.q_pos = layout_positions(RingLayout::Zigzag, S, 4, 0);
    std::vector<int64_t> keys{31};
    for (int64_t p = 224; p < S; ++p) keys.push_back(p);
    const Result r = run_tiles(in, 32, 32, {keys}, false);
    CHECK(r.fwd.tiles_computed == 3);
    CHECK(r.fwd.tiles_masked == 2);
    CHECK(r.fwd.tiles_skipped == 1);
    // The shortest such piece, three keys (31, 224, 225): the same four tiles.
    const Result three = run_tiles(in, 32, 32, {{31, 224, 225}}, false);
    CHECK(three.fwd.tiles_computed == 3);
    CHECK(three.fwd.tiles_masked == 2);
    CHECK(three.fwd.tiles_skipped == 1);
  }
  SECTION("striped: the triangle in local index space") {
    Inputs in = make_inputs(1, 64, 128, 1, 1, 16, true, 83);
    in.p.q_pos = layout_positions(RingLayout::Striped, 128, 2, 0);
    const Result r =
        run_tiles(in, 16, 16, {layout_positions(RingLayout::Striped, 128, 2, 1)}, false);
    CHECK(r.fwd.tiles_computed == 10);
    CHECK(r.fwd.tiles_masked == 4);
    CHECK(r.fwd.tiles_skipped == 6);
  }
}

TEST_CASE("attention tiles: workspace comes from the allocator and follows the tile size",
          "[attention]") {
  Allocator& alloc = allocator_for(Device::CPU);
  Inputs in = make_inputs(1, 256, 256, 1, 1, 16, true, 89);
  auto workspace_peak = [&](int64_t chunk) {
    alloc.reset_peak();
    const size_t live = alloc.live_bytes();
    run_tiles(in, chunk, chunk);
    return alloc.peak_bytes() - live;
  };
  const size_t whole = workspace_peak(0);
  const size_t tiled = workspace_peak(32);
  INFO("whole-tile workspace " << whole << " B, 32 x 32 tiles " << tiled << " B");
  CHECK(whole >= 256 * 256 * sizeof(float));
  CHECK(tiled > 0);
  CHECK(tiled < 256 * 256 * sizeof(float) / 4);
}

TEST_CASE("attention tiles: several threads give the single-thread result", "[attention]") {
  struct Case {
    int heads, kv_heads;
  };
  // kv_heads = 1 leaves too few (batch, kv head) items for the threads: the backward then splits
  // key chunks and adds dq's parts in key-chunk order (next test).
  const Case c = GENERATE(Case{4, 4}, Case{4, 1}, Case{3, 3});
  const int threads = GENERATE(2, 3);
  INFO("H " << c.heads << " Hkv " << c.kv_heads << ", " << threads << " threads");
  Inputs in = make_inputs(1, 100, 100, c.heads, c.kv_heads, 16, true, 97);
  const Result one = run_tiles(in, 16, 24);
  Result many;
  {
    ThreadsFor guard(threads);
    many = run_tiles(in, 16, 24);
  }
  CHECK(many.o == one.o);  // forward items are independent of the thread count
  CHECK(many.lse == one.lse);
  check_close(many.dq, one.dq, kGradTol, "dq");
  check_close(many.dk, one.dk, kGradTol, "dk");
  check_close(many.dv, one.dv, kGradTol, "dv");
  CHECK(many.fwd.tiles_computed == one.fwd.tiles_computed);
  CHECK(many.bwd.tiles_skipped == one.bwd.tiles_skipped);
}

TEST_CASE("attention tiles: the key-chunk-parallel backward gives the same bits on every run",
          "[attention]") {
  // One (batch, kv head) item: with 2 or more threads the backward splits the key chunks, and
  // the dq parts of 13 key chunks meet in the same rows. They are added in key-chunk order
  // whichever thread finishes first (added as threads finished, the sums differed between runs).
  // Causal, so some tiles are skipped and the order passes over them.
  const Inputs in = make_inputs(1, 100, 100, 4, 1, 16, true, 98);
  Result first;
  {
    ThreadsFor guard(2);
    first = run_tiles(in, 16, 8);
  }
  for (int threads : {2, 3, 5})
    for (int run = 0; run < 4; ++run) {
      INFO(threads << " threads, run " << run);
      ThreadsFor guard(threads);
      const Result r = run_tiles(in, 16, 8);
      CHECK(r.dq == first.dq);
      CHECK(r.dk == first.dk);
      CHECK(r.dv == first.dv);
    }
}

// Not part of the suite: `ringattn_tests "[.bench]"` with OPENBLAS_NUM_THREADS set to the cores.
// Environment: RINGATTN_BENCH_S (8192), RINGATTN_BENCH_CHUNKS ("128x128,256x256,512x512").
TEST_CASE("attention tiles: benchmark against sgemm", "[.bench]") {
  using clock = std::chrono::steady_clock;
  auto env = [](const char* name, const char* fallback) {
    const char* v = std::getenv(name);
    return std::string(v && *v ? v : fallback);
  };
  const int64_t S = std::stoll(env("RINGATTN_BENCH_S", "8192"));
  const int H = 8, D = 64;
  Backend& be = cpu_backend();
  std::printf("backend %s, row kernels %s\n", be.name().c_str(), cpu::row_kernels().isa);

  auto sgemm_gflops = [&] {
    const int n = 2048;
    std::vector<float> a = randn(size_t(n) * n, 1), b = randn(size_t(n) * n, 2), c(size_t(n) * n);
    be.gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
      const auto t0 = clock::now();
      be.gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
      const double s = std::chrono::duration<double>(clock::now() - t0).count();
      best = std::max(best, 2.0 * n * n * n / s * 1e-9);
    }
    return best;
  };

  const size_t n = size_t(S) * H * D;
  std::vector<float> q = randn(n, 3), k = randn(n, 4), v = randn(n, 5), dout = randn(n, 6);
  std::vector<int64_t> pos = iota(S);
  std::vector<float> acc(n), m(size_t(S) * H), l(m.size()), o(n), lse(m.size()), delta(m.size());
  std::vector<float> dq(n), dk(n), dv(n);
  const double fwd_flops = 4.0 * H * double(S) * double(S) * D / 2;  // causal: half
  std::string chunks = env("RINGATTN_BENCH_CHUNKS", "128x128,256x256,512x512");
  for (size_t at = 0; at < chunks.size();) {
    const size_t end = std::min(chunks.find(',', at), chunks.size());
    const std::string spec = chunks.substr(at, end - at);
    at = end + 1;
    const int64_t qc = std::stoll(spec), kc = std::stoll(spec.substr(spec.find('x') + 1));
    AttentionTileProblem p;
    p.sq = p.sk = S;
    p.heads = p.kv_heads = H;
    p.head_dim = D;
    p.scale = 1.0f / std::sqrt(float(D));
    p.causal = true;
    p.q_chunk = qc;
    p.k_chunk = kc;
    p.q_pos = p.k_pos = pos.data();
    p.q = q.data();
    p.k = k.data();
    p.v = v.data();
    AttentionForwardState st{acc.data(), m.data(), l.data()};
    const double gemm_before = sgemm_gflops();
    auto t0 = clock::now();
    be.attention_forward_init(st, 1, S, H, D);
    be.attention_forward_block(p, st);
    be.attention_forward_finish(st, o.data(), lse.data(), 1, S, H, D);
    auto t1 = clock::now();
    be.attention_backward_delta(dout.data(), o.data(), delta.data(), 1, S, H, D);
    std::fill(dq.begin(), dq.end(), 0.0f);
    std::fill(dk.begin(), dk.end(), 0.0f);
    std::fill(dv.begin(), dv.end(), 0.0f);
    AttentionBackwardArgs a{dout.data(), lse.data(), delta.data(), dq.data(), dk.data(), dv.data()};
    be.attention_backward_block(p, a);
    auto t2 = clock::now();
    const double gemm_after = sgemm_gflops();
    const double tf = std::chrono::duration<double>(t1 - t0).count();
    const double tb = std::chrono::duration<double>(t2 - t1).count();
    const double sg = 0.5 * (gemm_before + gemm_after);
    std::printf(
        "S=%lld H=%d D=%d causal chunks %lldx%lld threads %d: fwd %.3f s %.1f GFLOP/s, bwd %.3f s "
        "%.1f GFLOP/s, fwd+bwd %.3f s %.1f GFLOP/s | sgemm 2048^3 %.1f GFLOP/s (%.1f before, %.1f "
        "after) -> fwd+bwd at %.0f%% of sgemm\n",
        (long long)S, H, D, (long long)qc, (long long)kc, cpu_threads(), tf, fwd_flops / tf * 1e-9,
        tb, 2.5 * fwd_flops / tb * 1e-9, tf + tb, 3.5 * fwd_flops / (tf + tb) * 1e-9, sg,
        gemm_before, gemm_after, 100.0 * 3.5 * fwd_flops / (tf + tb) * 1e-9 / sg);
    std::fflush(stdout);
  }
}
