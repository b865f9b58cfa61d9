// The fused bf16 attention kernels (core/cuda/fused_attention_body.h) on the device under test
// against the CPU backend's bf16 tiles (which test_attention_tiles.cpp checks against the float64
// reference), through the blockwise sequence of test/attention_sequence.h (init, KV blocks
// arriving in any order, finish, delta, backward per block). Without a GPU the device is the
// emulated one, which runs the kernels' own body on the CPU (core/cuda_sim/host_block.h); on a GPU,
// the kernels themselves. Grouped-query attention, causal masks by global positions (zigzag shards
// whose positions jump inside a tile), segment ids, rows that see no key, lengths that are not
// multiples of the kernels' 64-row tiles, head dims 16 to 128, operands given as bf16.
//
// Tolerance: |fused - cpu| <= 4e-3 * (1 + |cpu|) for o, lse, dq, dk, dv, as between the CUDA and
// CPU bf16 tiles (test_cuda_attention.cpp): both round the same operands to bf16 and sum products
// in float32 in different orders, which now and then moves a P or dS element across a bf16
// rounding boundary. -inf must match exactly; the tile statistics are the plan's on both. Each
// case also runs with the emulation's reverse order (each sync interval's phases last to first,
// threads descending), some also with its isolated order (every thread on the interval's
// starting memory, two writers of a byte an error), and head dims up to 64 also with the kernels
// built for 128; all must give the same bits: a missing sync changes them (on a GPU, which runs
// the launcher's kernels every time, the runs agree because the kernels are deterministic).
#include <setjmp.h>
#include <signal.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "comm/mpi_env.h"
#include "core/backend.h"
#include "core/cuda_sim/host_block.h"
#include "core/dtype.h"
#include "cuda_test_util.h"
#include "model/attention/layout.h"
#include "test/attention_sequence.h"
#include "test/emulated_device.h"
#include "test/reference_attention.h"

using namespace ringattn;
using ringattn::test::Case;
using ringattn::test::iota;
using ringattn::test::Result;

namespace {

constexpr double kTol = 4e-3;

// The device under test with the fused kernels: the emulated one runs their body in the order
// asked for.
// max_head_dim: the kernels' MaxD on the emulated device (0: the launcher's choice).
Result run_fused(const Case& c, sim::BlockOrder order, int max_head_dim = 0) {
  Case f = c;
  f.bf16 = true;
  f.fused = true;
  struct Reset {  // even when the run throws
    ~Reset() {
      sim::host_block_order() = sim::BlockOrder::Forward;
      sim::host_block_max_head_dim() = 0;
    }
  } reset;
  sim::host_block_order() = order;
  sim::host_block_max_head_dim() = max_head_dim;
  return test::run(*test::device_under_test().backend, f, false);
}

void check_stats(const AttentionTileStats& g, const AttentionTileStats& w) {
  CHECK(g.tiles_computed == w.tiles_computed);
  CHECK(g.tiles_skipped == w.tiles_skipped);
  CHECK(g.flops == Approx(w.flops));
}

// The fused kernels against the CPU's bf16 tiles, and again in the reverse order, bitwise; with
// `isolated`, also with every thread of a sync interval on the interval's starting memory
// (core/cuda_sim/host_block.h: slow, so for small cases).
void compare(Case c, bool isolated = false) {
  c.bf16 = true;
  const Result want = test::run(cpu_backend(), c, false);
  const Result got = run_fused(c, sim::BlockOrder::Forward);
  test::check_close(got.o, want.o, kTol, kTol, "o");
  test::check_close(got.lse, want.lse, kTol, kTol, "lse");
  test::check_close(got.dq, want.dq, kTol, kTol, "dq");
  REQUIRE(got.dk.size() == want.dk.size());
  for (size_t i = 0; i < got.dk.size(); ++i) {
    INFO("block " << i);
    test::check_close(got.dk[i], want.dk[i], kTol, kTol, "dk");
    test::check_close(got.dv[i], want.dv[i], kTol, kTol, "dv");
  }
  check_stats(got.fwd, want.fwd);
  check_stats(got.bwd, want.bwd);
  auto same = [&got](const Result& r) {
    CHECK(test::same_bits(r.o, got.o));
    CHECK(test::same_bits(r.lse, got.lse));
    CHECK(test::same_bits(r.dq, got.dq));
    for (size_t i = 0; i < got.dk.size(); ++i) {
      CHECK(test::same_bits(r.dk[i], got.dk[i]));
      CHECK(test::same_bits(r.dv[i], got.dv[i]));
    }
  };
  same(run_fused(c, sim::BlockOrder::Reverse));
  if (isolated) same(run_fused(c, sim::BlockOrder::Isolated));
  // Small heads run kernels compiled for head dims up to 64 (fused::with_max_head_dim); on the
  // emulated device those compiled for the largest must give the same bits (on a GPU, which
  // always runs the launcher's choice, this repeats the run: a determinism check).
  if (c.head_dim <= fused::kSmallHeadDim)
    same(run_fused(c, sim::BlockOrder::Forward, fused::kMaxHeadDim));
}

// Queries at the end of the keys (a KV cache), keys in three blocks arriving reversed (a ring).
Case make_case(int64_t sq, int64_t sk, int heads, int kv_heads, int head_dim, bool causal,
               uint64_t seed) {
  Case c = test::make_case(2, sq, sk, heads, kv_heads, head_dim, causal, 32, 48, seed);
  c.q_pos = iota(sq, sk > sq ? sk - sq : 0);
  const int64_t third = sk / 3;
  c.blocks = {iota(sk - 2 * third, 2 * third), iota(third, third), iota(third)};
  return c;
}

}  // namespace

TEST_CASE("Fused attention kernels: match the CPU's bf16 tiles", "[attention]") {
  struct Shape {
    int heads, kv_heads, head_dim;
    int64_t sq, sk;
    bool isolated;  // also in BlockOrder::Isolated, causal only (a second each, 5 under ASan)
  };
  const Shape s = GENERATE(Shape{4, 2, 32, 80, 150, true},   // GQA; neither length a multiple of 64
                           Shape{2, 1, 64, 64, 64, false},   // exactly one tile each way
                           Shape{3, 3, 16, 130, 70, true},   // three query tiles, 16-wide heads
                           Shape{2, 2, 128, 40, 100, true},  // the largest head the kernels take
                           Shape{2, 1, 80, 70, 90, false},   // a head width that is no power of two
                           Shape{2, 2, 48, 65, 64, false}    // another (one query row past a tile)
  );
  const bool causal = GENERATE(false, true);
  INFO("H " << s.heads << " Hkv " << s.kv_heads << " D " << s.head_dim << " sq " << s.sq << " sk "
            << s.sk << " causal " << causal);
  compare(make_case(s.sq, s.sk, s.heads, s.kv_heads, s.head_dim, causal,
                    uint64_t(500 + s.sq + s.sk + s.head_dim)),
          s.isolated && causal && MpiEnv::world_rank() == 0);  // (every rank would repeat it)
}

TEST_CASE("Fused attention kernels: segment ids, empty rows, zigzag shards, bf16 operands",
          "[attention]") {
  SECTION("segment ids (packed documents)") {
    Case c = make_case(96, 96, 2, 1, 32, true, 11);
    c.q_seg = test::packed_segments(c.batch, c.sq, 3);
    c.k_seg = c.q_seg;
    compare(c);
  }
  SECTION("queries before every key: rows that see nothing (lse -inf, o 0, no gradient)") {
    Case c = make_case(70, 90, 2, 2, 16, true, 12);
    c.q_pos = iota(c.sq);      // 0..69
    c.k_pos = iota(c.sk, 50);  // 50..139: queries 0..49 see no key at all
    compare(c);
  }
  SECTION("a query tile's last position equals a key tile's first: one visible pair decides") {
    Case c = make_case(64, 128, 2, 1, 16, true, 15);
    c.q_pos = iota(64, 1);  // 1..64: query 64 sees key 64, the first of the second key tile
    c.blocks = {iota(128)};
    compare(c);
  }
  SECTION("zigzag shards whose positions jump inside a 64-row tile") {
    // 400 tokens over 2 ranks: chunks of 100; rank 0 holds 0..99 and 300..399, a jump at row 100
    // (inside the second tile); rank 1 holds 100..299. Rank 0's queries against its own keys
    // and against rank 1's.
    Case c = make_case(200, 200, 2, 1, 32, true, 13);
    c.q_pos = layout_positions(RingLayout::Zigzag, 400, 2, 0);
    c.blocks = {iota(200)};
    for (int kr : {0, 1}) {
      INFO("keys of rank " << kr);
      c.k_pos = layout_positions(RingLayout::Zigzag, 400, 2, kr);
      compare(c);
    }
  }
  SECTION("q, k and v handed over as bf16 (the model's q, the ring's blocks)") {
    Case c = make_case(80, 150, 4, 2, 32, true, 14);
    c.q_bf16 = true;
    c.kv_bf16 = true;
    compare(c);
  }
}

namespace {

sigjmp_buf g_fault_jump;
volatile unsigned char g_sink = 0;
void jump_back(int) {
  siglongjmp(g_fault_jump, 1);
}

// Whether reading *p faults (SIGSEGV caught for the read only, Catch's handler put back).
bool read_faults(const volatile unsigned char* p) {
  struct sigaction mine = {}, old = {};
  mine.sa_handler = jump_back;
  sigemptyset(&mine.sa_mask);
  sigaction(SIGSEGV, &mine, &old);
  volatile bool faulted = true;  // (a local changed between sigsetjmp and siglongjmp)
  if (sigsetjmp(g_fault_jump, 1) == 0) {
    const unsigned char x = *p;
    g_sink = x;
    faulted = false;
  }
  sigaction(SIGSEGV, &old, nullptr);
  return faulted;
}

}  // namespace

TEST_CASE("Fused attention body (emulated): the emulation enforces the Block contract",
          "[attention]") {
  // Mapped as a whole page; a kernel would get 4000 bytes.
  sim::HostBlock blk(4000, sim::BlockOrder::Forward);
  auto* smem = static_cast<unsigned char*>(blk.smem());
  // Between phases shared memory is out of reach (the race the contract forbids); inside the
  // phases run by sync() it is there.
  CHECK(read_faults(smem));
  unsigned char seen = 0;
  blk.each_thread([&](int t) {
    if (t == 0) smem[0] = 7;
  });
  blk.each_thread([&](int t) {
    if (t == 5) seen = smem[1];
  });
  blk.sync();
  CHECK(seen == 0xff);  // never written: the 0xff fill
  CHECK(read_faults(smem));
  // Isolated: every thread sees the interval's starting memory; two writers of a byte are an error.
  {
    sim::HostBlock iso(256, sim::BlockOrder::Isolated);
    auto* m = static_cast<unsigned char*>(iso.smem());
    unsigned char read_by_1 = 0;
    iso.each_thread([&](int t) {
      if (t == 0) m[0] = 1;
      if (t == 1) read_by_1 = m[0];  // another thread's write of the same interval: not seen
      if (t == 2) m[1] = 2;
    });
    iso.sync();
    CHECK(read_by_1 == 0xff);
    iso.each_thread([&](int t) { read_by_1 = t == 1 ? m[0] : read_by_1; });  // the next interval
    iso.sync();
    CHECK(read_by_1 == 1);
    iso.each_thread([&](int t) {
      if (t == 3 || t == 4) m[2] = 7;  // the same value, still two writers
    });
    CHECK_THROWS_WITH(iso.sync(), Catch::Contains("write the same shared-memory byte"));
  }
  // A phase queued after the last sync is an error of the body, reported by run_grid.
  CHECK_THROWS_WITH(
      sim::run_grid(1, 1, 64, sim::BlockOrder::Forward,
                    [](sim::HostBlock& b, int64_t, int64_t) { b.each_thread([](int) {}); }),
      Catch::Contains("after its last sync"));
  // wmma's rules: 256-bit aligned operands, leading dimensions of 16 bytes; bf16 fragments from
  // the block's shared memory only (the GPU loads them with ldmatrix), inside its phases.
  auto* tile = reinterpret_cast<uint16_t*>(smem);
  alignas(64) uint16_t global_tile[64 * 24] = {};
  sim::HostBlock::A a;
  sim::HostBlock::BCol b;
  std::vector<std::string> errors;
  auto attempt = [&errors](auto&& f) {
    try {
      f();
      errors.push_back("");
    } catch (const std::logic_error& e) {
      errors.push_back(e.what());
    }
  };
  blk.each_warp([&](int w) {
    if (w != 0) return;
    attempt([&] { sim::HostBlock::load(a, tile, 24); });
    attempt([&] { sim::HostBlock::load(b, tile + 64 * 24, 24); });
    attempt([&] { sim::HostBlock::load(a, tile + 8, 24); });
    attempt([&] { sim::HostBlock::load(a, tile, 20); });
    attempt([&] { sim::HostBlock::load(a, global_tile, 24); });
    // the fragment's last row would end past the page, or inside it past the block's 4000 bytes
    attempt([&] { sim::HostBlock::load(b, tile + 2048 - 16 * 24 + 16, 24); });
    attempt([&] { sim::HostBlock::load(b, tile + 2040 - 15 * 24 - 16, 24); });
  });
  blk.sync();
  REQUIRE(errors.size() == 7);
  CHECK(errors[0].empty());
  CHECK(errors[1].empty());
  CHECK_THAT(errors[2], Catch::Contains("alignment"));
  CHECK_THAT(errors[3], Catch::Contains("alignment"));
  CHECK_THAT(errors[4], Catch::Contains("outside shared memory"));
  CHECK_THAT(errors[5], Catch::Contains("outside shared memory"));
  CHECK_THAT(errors[6], Catch::Contains("outside shared memory"));
  CHECK_THROWS_WITH(sim::HostBlock::load(a, tile, 24), Catch::Contains("outside shared memory"));
  alignas(64) float acc_tile[16 * 20] = {};
  sim::HostBlock::Acc c;
  sim::HostBlock::fill(c, 0.0f);
  CHECK_NOTHROW(sim::HostBlock::store(acc_tile, c, 20));
  CHECK_THROWS_WITH(sim::HostBlock::store(acc_tile, c, 18), Catch::Contains("alignment"));
  // The operands' 16-byte moves (vector loads and stores on the GPU).
  alignas(16) unsigned char bytes[48] = {};
  CHECK_NOTHROW(fused::copy16(bytes, bytes + 16));
  CHECK_THROWS_WITH(fused::copy16(bytes + 2, bytes + 16), Catch::Contains("alignment"));
  CHECK_THROWS_WITH(fused::copy16(bytes, bytes + 8), Catch::Contains("alignment"));
  float four[4];
  CHECK_THROWS_WITH(fused::load4(reinterpret_cast<const float*>(bytes + 4), four),
                    Catch::Contains("alignment"));
}

TEST_CASE("Fused attention body (emulated): operands load the same at any alignment",
          "[attention]") {
  // Forward and backward on operands 16-byte aligned (moved 16 bytes at a time) and the same
  // values one element off (moved value by value): the same bits.
  const int64_t B = 1, S = 80;
  const int H = 2, D = GENERATE(16, 32);
  const size_t n = size_t(B * S * H * D);
  const std::vector<float> q = test::randn(n, 1), k = test::randn(n, 2), v = test::randn(n, 3),
                           dout = test::randn(n, 4);
  const std::vector<int64_t> pos = iota(S);
  auto run = [&](bool offset, bool bf16) {
    // Operands at element 0 (aligned) or 1 of their buffers.
    const size_t at = offset ? 1 : 0;
    std::vector<float> qf(n + 8), kf(n + 8), vf(n + 8), df(n + 8);
    REQUIRE(reinterpret_cast<uintptr_t>(qf.data()) % 16 == 0);  // offset 0: the vector path
    std::copy(dout.begin(), dout.end(), df.begin() + long(at));
    std::copy(q.begin(), q.end(), qf.begin() + long(at));
    std::copy(k.begin(), k.end(), kf.begin() + long(at));
    std::copy(v.begin(), v.end(), vf.begin() + long(at));
    std::vector<uint16_t> q16(n + 8), k16(n + 8), v16(n + 8);
    for (size_t i = 0; i < n + 8; ++i) {
      q16[i] = f32_to_bf16(qf[i]);
      k16[i] = f32_to_bf16(kf[i]);
      v16[i] = f32_to_bf16(vf[i]);
    }
    fused::Args a;
    a.p.batch = B;
    a.p.sq = a.p.sk = S;
    a.p.heads = a.p.kv_heads = H;
    a.p.head_dim = D;
    a.p.scale = 0.2f;
    a.p.causal = true;
    a.p.q_pos = a.p.k_pos = pos.data();
    if (bf16) {
      a.p.q_bf16 = q16.data() + at;
      a.p.k_bf16 = k16.data() + at;
      a.p.v_bf16 = v16.data() + at;
    } else {
      a.p.q = qf.data() + at;
      a.p.k = kf.data() + at;
      a.p.v = vf.data() + at;
    }
    std::vector<float> acc(n, 0.0f), m(size_t(B * H * S), kMaskedScore), l(size_t(B * H * S), 0);
    fused::Args f = a;
    f.st.acc = acc.data();
    f.st.m = m.data();
    f.st.l = l.data();
    sim::run_fused_forward(f);
    std::vector<float> lse(m.size()), delta(m.size(), 0.5f), dq(n, 0), dk(n, 0), dv(n, 0);
    for (size_t i = 0; i < m.size(); ++i) lse[i] = m[i] + std::log(l[i]);
    fused::Args g = a;
    g.bw.dout = df.data() + at;
    g.bw.lse = lse.data();
    g.bw.delta = delta.data();
    g.bw.dq = dq.data();
    g.bw.dk = dk.data();
    g.bw.dv = dv.data();
    sim::run_fused_backward(g);
    std::vector<float> all = acc;
    for (const std::vector<float>* x : {&dq, &dk, &dv}) all.insert(all.end(), x->begin(), x->end());
    return all;
  };
  for (bool bf16 : {false, true}) {
    INFO((bf16 ? "bf16" : "float32") << " operands");
    const std::vector<float> aligned = run(false, bf16), off = run(true, bf16);
    CHECK(std::memcmp(aligned.data(), off.data(), aligned.size() * sizeof(float)) == 0);
    // Not vacuous: the gradients are there.
    CHECK(std::any_of(aligned.begin() + long(n), aligned.end(), [](float x) { return x != 0; }));
  }
}

// The blocks per multiprocessor that docs/benchmarks.md and the kernels' __launch_bounds__
// (core/cuda/fused_attention.cu) count on, from the shared memory each kernel asks for, on an
// H100/H200: 228 KiB per SM, 1 KiB reserved per block. (Registers are held to the same counts
// by __launch_bounds__; the cuda_kernel_code ctest fails if that makes ptxas spill.)
TEST_CASE(
    "Fused attention kernels: shared memory lets 3 blocks share an SM up to head dim 64, 2 "
    "above",
    "[attention]") {
  constexpr size_t kSmPerSm = 228 * 1024, kReserved = 1024, kMaxPerBlock = 227 * 1024;
  auto fit = [&](size_t bytes) {
    REQUIRE(bytes <= kMaxPerBlock);
    return int(kSmPerSm / (bytes + kReserved));
  };
  for (int d = 16; d <= fused::kMaxHeadDim; d += 16) {
    INFO("head_dim " << d);
    const int want = fused::blocks_per_sm_target(d <= fused::kSmallHeadDim ? fused::kSmallHeadDim
                                                                           : fused::kMaxHeadDim);
    CHECK(fit(fused::ForwardSmem(nullptr, d).bytes) >= want);
    CHECK(fit(fused::BackwardSmem(nullptr, d).bytes) >= want);
    CHECK(fit(fused::DqSmem(nullptr, d).bytes) >= want);
  }
}
