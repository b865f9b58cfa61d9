// The CUDA backend's attention tiles against the CPU backend's (which test/test_attention_tiles.cpp
// checks against the float64 reference): the same blockwise sequence of calls on both backends
// (init, several KV blocks, finish, delta, backward per block) on random inputs, with grouped-query
// attention, causal masks by global positions, segment ids, rows that see no key, ring layouts,
// and a whole-shard (vanilla) tile. Without a GPU every test prints its skip line and returns.
//
// Tolerances: |cuda - cpu| <= 1e-4 * (1 + |cpu|) for o, lse, dq, dk, dv (float32 on both sides,
// different summation orders in the GEMMs and softmax sums; observed errors are expected ~1e-6).
// With bf16 tile GEMMs (AttentionTileProblem::bf16) both sides round the same operands: 4e-3 *
// (1 + |cpu|). -inf (rows that see no key) must match exactly. Tile statistics must be identical.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "core/allocator.h"
#include "core/backend.h"
#include "core/random.h"
#include "core/tensor.h"
#include "cuda_test_util.h"
#include "model/attention/layout.h"
#include "test/attention_sequence.h"
#include "test/close_vectors.h"
#include "test/reference_attention.h"
#ifdef RINGATTN_CUDA_SIM
#include "core/cuda_sim/sim_streams.h"
#endif

using namespace ringattn;
using ringattn::test::iota;
using ringattn::test::make_case;
using ringattn::test::Result;
using ringattn::test::run;
using ringattn::test::same_bits;
using Case = ringattn::test::Case;

namespace {

constexpr double kAttnTol = 1e-4;

// |cuda - cpu| <= tol * (1 + |cpu|), tol = kAttnTol, or kBf16Tol for bf16 tile GEMMs: there the
// scores differ by float32 ulps (other summation orders), which now and then moves a P or dS
// element across a bf16 rounding boundary, a 2^-8 relative change of that one term.
constexpr double kBf16Tol = 4e-3;
// The fused kernels against the CPU's bf16 tiles: they round P and dS to bf16 from other running
// statistics (their own 64-key tiles' maxima), so many more terms differ by a rounding than "now
// and then"; the simulated GPU (RINGATTN_CUDA=SIM, whose fused kernels run their body on the host)
// showed dq off by 1.06 x kBf16Tol in the zigzag case, and about 0.5-0.7 x kBf16Tol in most others.
// A wrong mask or rescaling is off by 0.1 and more.
constexpr double kFusedTol = 8e-3;
double g_tol = kAttnTol;
void check_close(const Tensor& got, const Tensor& want, const char* what) {
  test::check_close(got, want, g_tol, g_tol, what);
}

void check_stats(const AttentionTileStats& g, const AttentionTileStats& w, const char* what) {
  INFO(what);
  CHECK(g.tiles_computed == w.tiles_computed);
  CHECK(g.tiles_masked == w.tiles_masked);
  CHECK(g.tiles_skipped == w.tiles_skipped);
  CHECK(g.flops == Approx(w.flops));
}

// Both backends, then everything compared. Segment ids go to the GPU as host pointers, and (in
// a second run) as device pointers.
Result compare_backends(const Case& c) {
  g_tol = c.fused ? kFusedTol : c.bf16 ? kBf16Tol : kAttnTol;
  const Result want = run(cpu_backend(), c, false);
  Result got;
  for (bool seg_on_device : {false, true}) {
    if (seg_on_device && c.q_seg.empty()) continue;
    INFO("segment ids in " << (seg_on_device ? "device" : "host") << " memory");
    got = run(cuda_backend(0), c, seg_on_device);
    check_close(got.o, want.o, "o");
    check_close(got.lse, want.lse, "lse");
    check_close(got.dq, want.dq, "dq");
    REQUIRE(got.dk.size() == want.dk.size());
    for (size_t i = 0; i < got.dk.size(); ++i) {
      INFO("block " << i);
      check_close(got.dk[i], want.dk[i], "dk");
      check_close(got.dv[i], want.dv[i], "dv");
    }
    check_stats(got.fwd, want.fwd, "forward stats");
    check_stats(got.bwd, want.bwd, "backward stats");
  }
  return want;
}

}  // namespace

TEST_CASE("CUDA attention: blockwise forward and backward match the CPU (GQA, causal, chunks)",
          "[cuda]") {
  if (test::skip_without_gpu()) return;
  struct Shape {
    int heads, kv_heads, head_dim;
    int64_t sq, sk, q_chunk, k_chunk;
  };
  const Shape s =
      GENERATE(Shape{4, 2, 16, 80, 80, 32, 16},   // GQA, chunks do not divide
               Shape{4, 1, 64, 64, 96, 16, 32},   // all heads on one kv head
               Shape{3, 3, 32, 50, 70, 0, 0},     // whole-shard tiles (vanilla)
               Shape{2, 1, 128, 40, 900, 7, 300}  // rows of 300 keys: more than a block's threads
      );
  const bool causal = GENERATE(false, true);
  INFO("H " << s.heads << " Hkv " << s.kv_heads << " D " << s.head_dim << " sq " << s.sq << " sk "
            << s.sk << " chunks " << s.q_chunk << "x" << s.k_chunk << " causal " << causal);
  Case c = make_case(2, s.sq, s.sk, s.heads, s.kv_heads, s.head_dim, causal, s.q_chunk, s.k_chunk,
                     1000 + uint64_t(s.sq + s.sk));
  // Queries at the end of the key range (a KV cache), keys in three blocks arriving in reverse.
  c.q_pos = iota(s.sq, s.sk - s.sq > 0 ? s.sk - s.sq : 0);
  const int64_t third = s.sk / 3;
  c.blocks = {iota(s.sk - 2 * third, 2 * third), iota(third, third), iota(third)};
  compare_backends(c);
}

TEST_CASE("CUDA attention: bf16 tile GEMMs match the CPU's bf16 tiles", "[cuda]") {
  if (test::skip_without_gpu()) return;
  const bool causal = GENERATE(false, true);
  INFO("causal " << causal);
  // GQA with chunks that do not divide, and whole-shard tiles; keys in blocks arriving reversed.
  for (int64_t qc : {int64_t(32), int64_t(0)}) {
    INFO("q_chunk " << qc);
    Case c = make_case(2, 80, 96, 4, 2, 64, causal, qc, qc ? 16 : 0, 4242 + uint64_t(qc));
    c.bf16 = true;
    c.q_pos = iota(80, 16);
    c.blocks = {iota(48, 48), iota(48)};
    const Result cpu = compare_backends(c);
    // Keys and values handed over as bf16 (the ring's bf16 blocks) give the same bits as float32
    // ones rounded by the call, on the GPU as on the CPU.
    {
      const Result gpu = run(cuda_backend(0), c, false);
      c.kv_bf16 = true;
      const Result gpu16 = run(cuda_backend(0), c, false);
      const Result cpu16 = run(cpu_backend(), c, false);
      c.kv_bf16 = false;
      CHECK(same_bits(gpu16.o, gpu.o));
      CHECK(same_bits(gpu16.dq, gpu.dq));
      CHECK(same_bits(cpu16.o, cpu.o));
      CHECK(same_bits(cpu16.dq, cpu.dq));
      for (size_t i = 0; i < gpu.dk.size(); ++i) {
        CHECK(same_bits(gpu16.dk[i], gpu.dk[i]));
        CHECK(same_bits(gpu16.dv[i], gpu.dv[i]));
      }
    }
    // The bf16 mode is on: the CPU's own float32 result differs well beyond the tolerance.
    c.bf16 = false;
    const Result f32 = run(cpu_backend(), c, false);
    double moved = 0;
    for (int64_t i = 0; i < f32.o.numel(); ++i)
      moved = std::max(moved, double(std::abs(f32.o.data<float>()[i] - cpu.o.data<float>()[i])));
    CHECK(moved > 1e-3);
  }
  // cuBLAS reads bf16 head slices 16-byte aligned: head_dim must be a multiple of 8.
  Case odd = make_case(1, 8, 8, 2, 2, 4, false, 0, 0, 7);
  odd.bf16 = true;
  CHECK_THROWS_WITH(run(cuda_backend(0), odd, false), Catch::Contains("multiple of 8, got 4"));
}

// The fused kernels (core/cuda/fused_attention_body.h, whose logic test_fused_attention.cpp checks
// on the CPU) on the GPU's tensor cores: the same tolerance as the bf16 tiles, the statistics of
// the plan. Lengths that are not multiples of their 64-row tiles, GQA, keys in blocks arriving
// reversed, segment ids, a zigzag shard, head dims 16 to 128, bf16 operands in place.
TEST_CASE("CUDA attention: the fused kernels match the CPU's bf16 tiles", "[cuda]") {
  if (test::skip_without_gpu()) return;
  const bool causal = GENERATE(false, true);
  INFO("causal " << causal);
  for (int d : {16, 64, 128}) {
    INFO("head_dim " << d);
    Case c = make_case(2, 150, 200, 4, 2, d, causal, 32, 48, 5151 + uint64_t(d));
    c.bf16 = true;
    c.fused = true;
    c.q_pos = iota(150, 50);
    c.blocks = {iota(100, 100), iota(70, 30), iota(30)};
    compare_backends(c);
    c.kv_bf16 = true;  // the ring's bf16 blocks
    compare_backends(c);
  }
  {
    Case c = make_case(2, 128, 128, 2, 1, 32, true, 16, 16, 99);
    c.bf16 = true;
    c.fused = true;
    c.q_seg = test::packed_segments(2, 128, 5);
    c.k_seg = c.q_seg;
    compare_backends(c);
  }
  {
    // Zigzag shards of 400 tokens over 2 ranks: rank 0's positions jump inside its second 64-row
    // tile (0..99, then 300..399); against its own keys and rank 1's (100..299).
    Case c = make_case(2, 200, 200, 2, 1, 32, true, 16, 16, 98);
    c.bf16 = true;
    c.fused = true;
    c.q_pos = layout_positions(RingLayout::Zigzag, 400, 2, 0);
    for (int kr : {0, 1}) {
      INFO("keys of rank " << kr);
      c.k_pos = layout_positions(RingLayout::Zigzag, 400, 2, kr);
      compare_backends(c);
    }
  }
  // Fragments of 16: other head dims are refused with a message, as is float32.
  Case odd = make_case(1, 8, 8, 2, 2, 24, false, 0, 0, 7);
  odd.bf16 = true;
  odd.fused = true;
  CHECK_THROWS_WITH(run(cuda_backend(0), odd, false), Catch::Contains("multiple of 16"));
  Case f32 = make_case(1, 8, 8, 2, 2, 16, false, 0, 0, 7);
  f32.fused = true;
  CHECK_THROWS_WITH(run(cuda_backend(0), f32, false), Catch::Contains("bf16 kernels"));
}

TEST_CASE("CUDA attention: rows and blocks that see no key give o = 0, lse = -inf", "[cuda]") {
  if (test::skip_without_gpu()) return;
  // Keys at positions 10..41 in two blocks, plus a block entirely in the future: queries 0..9 see
  // no key at all (lse = -inf, o = 0, dq unchanged), the first block's tiles mix fully masked and
  // visible rows, and the future block is skipped whole (dk, dv unchanged).
  Case c = make_case(2, 32, 48, 4, 2, 16, true, 16, 8, 2000);
  c.k_pos = iota(48, 10);
  c.k_pos.resize(32);
  for (int64_t j = 0; j < 16; ++j) c.k_pos.push_back(1000 + j);
  c.blocks = {iota(16), iota(16, 32), iota(16, 16)};
  const Result want = compare_backends(c);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < 4; ++h)
      for (int64_t i = 0; i < 10; ++i)
        CHECK(std::isinf(want.lse.data<float>()[(b * 4 + h) * 32 + i]));
  CHECK(want.fwd.tiles_skipped > 0);
}

TEST_CASE("CUDA attention: segment ids (packed documents) match the CPU", "[cuda]") {
  if (test::skip_without_gpu()) return;
  const bool causal = GENERATE(false, true);
  const int parts = GENERATE(1, 3);
  INFO("causal " << causal << ", " << parts << " blocks");
  Case c = make_case(2, 96, 96, 4, 2, 16, causal, 32, 16, 3000);
  c.q_seg = test::packed_segments(2, 96, 17);
  c.k_seg = c.q_seg;
  // A query segment id that no key has: those rows see nothing.
  c.q_seg[5] = c.q_seg[40] = 999;
  c.blocks.clear();
  for (int i = parts - 1; i >= 0; --i) c.blocks.push_back(iota(96 / parts, i * (96 / parts)));
  const Result want = compare_backends(c);
  CHECK(want.fwd.tiles_skipped > 0);  // tiles between different documents
}

TEST_CASE("CUDA attention: ring layouts (local queries against every rank's block)", "[cuda]") {
  if (test::skip_without_gpu()) return;
  const RingLayout layout =
      GENERATE(RingLayout::Contiguous, RingLayout::Zigzag, RingLayout::Striped);
  const int ranks = 4, rank = 1;
  const int64_t S = 128;
  INFO(layout_name(layout) << ", rank " << rank << " of " << ranks);
  // Queries of one rank (a zigzag shard has a jump in its positions), keys in ring order.
  Case c = make_case(1, S / ranks, S, 4, 2, 32, true, 8, 8, 4000);
  c.q_pos = layout_positions(layout, S, ranks, rank);
  c.blocks.clear();
  for (int t = 0; t < ranks; ++t)
    c.blocks.push_back(layout_positions(layout, S, ranks, (rank - t + ranks) % ranks));
  compare_backends(c);
}

TEST_CASE("CUDA attention: many small chunks match the CPU (wavefronts of uneven chunk pairs)",
          "[cuda]") {
  if (test::skip_without_gpu()) return;
  // 23 x 13 chunk pairs of 5 x 9 queries and keys, the last of each shorter: wavefronts mix
  // shapes; two kv groups of 3 query heads (the backward's launches per head of a group).
  const bool causal = GENERATE(false, true);
  INFO("causal " << causal);
  Case c = make_case(2, 113, 113, 6, 2, 16, causal, 5, 9, 7000);
  c.blocks = {iota(113)};
  compare_backends(c);
  c.bf16 = true;
  compare_backends(c);
}

#ifdef RINGATTN_CUDA_SIM
TEST_CASE("CUDA attention: the tile path's launches grow with the chunk count, not its square",
          "[cuda]") {
  // A call of nq x nk chunk pairs runs nq + nk - 1 wavefronts of launches (plan_launches in
  // core/cuda/cuda_attention.cu), not nq * nk: halving the chunks doubles the launches (and a
  // bit: the wavefronts' shape runs), where one run per pair would quadruple them.
  auto launches = [](int64_t chunk) {
    Case c = make_case(1, 128, 128, 2, 1, 16, false, chunk, chunk, 7100);
    (void)run(cuda_backend(0), c, false);  // the first call's one-time work out of the count
    const size_t before = sim::work_queued_so_far();
    (void)run(cuda_backend(0), c, false);
    return double(sim::work_queued_so_far() - before);
  };
  const double coarse = launches(16), fine = launches(8);  // 8 x 8 and 16 x 16 chunk pairs
  INFO("queued work: " << coarse << " with chunks of 16, " << fine << " with chunks of 8");
  CHECK(fine < 2.5 * coarse);
  CHECK(fine > 1.5 * coarse);
}
#endif

TEST_CASE("CUDA attention: score workspace comes from the CUDA allocator", "[cuda]") {
  if (test::skip_without_gpu()) return;
  Case c = make_case(1, 256, 256, 1, 1, 16, false, 0, 0, 5000);
  (void)cuda_backend(0);  // installs the CUDA allocator
  Allocator& alloc = allocator_for(Device::CUDA);
  alloc.reset_peak();
  const size_t live = alloc.live_bytes();
  run(cuda_backend(0), c, false);
  const size_t peak = alloc.peak_bytes() - live;
  INFO("peak " << peak << " B above " << live << " B live");
  // Whole-shard tile: the 256 x 256 scores (x 2 in the backward: P and dS), plus the inputs.
  CHECK(peak >= 2 * 256 * 256 * sizeof(float));
  CHECK(alloc.live_bytes() == live);  // every workspace went back
}

TEST_CASE("CUDA attention: bad problems are errors with the CPU backend's messages", "[cuda]") {
  if (test::skip_without_gpu()) return;
  // Three query heads cannot share two kv heads.
  const Case gqa = make_case(1, 8, 8, 3, 2, 16, false, 0, 0, 6000);
  CHECK_THROWS_WITH(run(cpu_backend(), gqa, false), Catch::Contains("cannot share"));
  CHECK_THROWS_WITH(run(cuda_backend(0), gqa, false), Catch::Contains("cannot share"));
  // A causal mask needs ascending positions.
  Case unsorted = make_case(1, 8, 8, 2, 1, 16, true, 4, 4, 6001);
  std::swap(unsorted.k_pos[2], unsorted.k_pos[5]);
  CHECK_THROWS_WITH(run(cpu_backend(), unsorted, false), Catch::Contains("ascending"));
  CHECK_THROWS_WITH(run(cuda_backend(0), unsorted, false), Catch::Contains("ascending"));
}
