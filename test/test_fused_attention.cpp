// The fused bf16 attention kernels' body (core/cuda/fused_attention_body.h), run on the CPU by
// test/emulated_block.h, against the CPU backend's bf16 tiles (which test_attention_tiles.cpp
// checks against the float64 reference): the blockwise sequence of calls (init, KV blocks arriving
// in any order, finish, delta, backward per block) with grouped-query attention, causal masks by
// global positions (zigzag shards too), segment ids, rows that see no key, lengths that are not
// multiples of the kernel's 64-row tiles, and operands given as bf16.
//
// Tolerance: |fused - cpu| <= 4e-3 * (1 + |cpu|) for o, lse, dq, dk, dv, as between the CUDA and
// CPU bf16 tiles (test_cuda_attention.cpp): both round the same operands to bf16 and sum products
// in float32 in different orders, which now and then moves a P or dS element across a bf16
// rounding boundary. -inf must match exactly. Each case also runs with the emulation's reverse
// order (each sync interval's phases last to first, threads descending) and must give the same
// bits: a missing sync changes them.
#include <setjmp.h>
#include <signal.h>
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "core/backend.h"
#include "core/dtype.h"
#include "model/attention/layout.h"
#include "test/close_vectors.h"
#include "test/emulated_block.h"
#include "test/reference_attention.h"

using namespace ringattn;
using ringattn::test::iota;
using ringattn::test::randn;

namespace {

constexpr double kTol = 4e-3;

struct Case {
  int64_t batch = 2, sq = 0, sk = 0;
  int heads = 4, kv_heads = 2, head_dim = 32;
  bool causal = true;
  std::vector<int64_t> q_pos, k_pos;
  std::vector<int32_t> q_seg, k_seg;         // [B, sq], [B, sk] or both empty
  std::vector<std::vector<int64_t>> blocks;  // key indices per KV block, in arrival order
  bool bf16_operands = false;                // q, k, v handed over as bf16
  uint32_t seed = 1;
};

struct Result {
  std::vector<float> o, lse, dq;
  std::vector<std::vector<float>> dk, dv;  // per block
};

// One KV block's keys, values, positions and segment ids, gathered from the case's.
struct Block {
  int64_t n = 0;
  std::vector<float> k, v, dk, dv;
  std::vector<uint16_t> k16, v16;
  std::vector<int64_t> pos;
  std::vector<int32_t> seg;
};

std::vector<uint16_t> to_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = f32_to_bf16(x[i]);
  return y;
}

// The sequence on the CPU backend: its own tiles (fused = false) or the fused body (true).
Result run(const Case& c, bool fused, bool reverse) {
  Backend& be = cpu_backend();
  const int64_t B = c.batch, Sq = c.sq, H = c.heads, Hkv = c.kv_heads, D = c.head_dim;
  const std::vector<float> kall = randn(size_t(B * c.sk * Hkv * D), c.seed + 1);
  const std::vector<float> vall = randn(size_t(B * c.sk * Hkv * D), c.seed + 2);
  const std::vector<float> q = randn(size_t(B * Sq * H * D), c.seed);
  const std::vector<float> dout = randn(size_t(B * Sq * H * D), c.seed + 3);
  const std::vector<uint16_t> q16 = to_bf16(q);
  const bool seg = !c.q_seg.empty();

  std::vector<Block> blocks;
  for (size_t bi = 0; bi < c.blocks.size(); ++bi) {
    const std::vector<int64_t>& idx = c.blocks[bi];
    Block blk;
    blk.n = int64_t(idx.size());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j : idx) {
        const size_t src = size_t((b * c.sk + j) * Hkv * D);
        blk.k.insert(blk.k.end(), kall.begin() + long(src), kall.begin() + long(src + Hkv * D));
        blk.v.insert(blk.v.end(), vall.begin() + long(src), vall.begin() + long(src + Hkv * D));
        if (seg) blk.seg.push_back(c.k_seg[size_t(b * c.sk + j)]);
      }
    for (int64_t j : idx) blk.pos.push_back(c.k_pos[size_t(j)]);
    blk.k16 = to_bf16(blk.k);
    blk.v16 = to_bf16(blk.v);
    blk.dk = randn(blk.k.size(), c.seed + 100 + uint32_t(bi));  // "+=" outputs start non-zero
    blk.dv = randn(blk.v.size(), c.seed + 200 + uint32_t(bi));
    blocks.push_back(std::move(blk));
  }

  auto problem = [&](const Block& blk) {
    AttentionTileProblem p;
    p.batch = B;
    p.sq = Sq;
    p.sk = blk.n;
    p.heads = int(H);
    p.kv_heads = int(Hkv);
    p.head_dim = int(D);
    p.scale = 1.0f / std::sqrt(float(D));
    p.causal = c.causal;
    p.q_chunk = 32;
    p.k_chunk = 48;
    p.q_pos = c.q_pos.data();
    p.k_pos = blk.pos.data();
    p.q_seg = seg ? c.q_seg.data() : nullptr;
    p.k_seg = seg ? blk.seg.data() : nullptr;
    p.bf16 = true;
    if (c.bf16_operands) {
      p.q_bf16 = q16.data();
      p.k_bf16 = blk.k16.data();
      p.v_bf16 = blk.v16.data();
    } else {
      p.q = q.data();
      p.k = blk.k.data();
      p.v = blk.v.data();
    }
    return p;
  };
  Result r;
  std::vector<float> acc = randn(size_t(B * Sq * H * D), 7);  // garbage init must overwrite
  std::vector<float> m = randn(size_t(B * H * Sq), 8), l = randn(size_t(B * H * Sq), 9);
  const AttentionForwardState st{acc.data(), m.data(), l.data()};
  be.attention_forward_init(st, B, Sq, int(H), int(D));
  for (const Block& blk : blocks) {
    const AttentionTileProblem p = problem(blk);
    if (fused)
      test::run_fused_forward(fused::forward_args(p, st), reverse);
    else
      be.attention_forward_block(p, st, nullptr);
  }
  r.o.resize(acc.size());
  r.lse.resize(m.size());
  be.attention_forward_finish(st, r.o.data(), r.lse.data(), B, Sq, int(H), int(D));
  std::vector<float> delta(m.size());
  be.attention_backward_delta(dout.data(), r.o.data(), delta.data(), B, Sq, int(H), int(D));
  r.dq = randn(q.size(), c.seed + 50);
  for (Block& blk : blocks) {
    const AttentionTileProblem p = problem(blk);
    const AttentionBackwardArgs ba{dout.data(), r.lse.data(),  delta.data(),
                                   r.dq.data(), blk.dk.data(), blk.dv.data()};
    if (fused)
      test::run_fused_backward(fused::backward_args(p, ba), reverse);
    else
      be.attention_backward_block(p, ba, nullptr);
    r.dk.push_back(blk.dk);
    r.dv.push_back(blk.dv);
  }
  return r;
}

void check_close(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
  test::check_close(got, want, kTol, what);
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Fused against the CPU's bf16 tiles, and the fused run again in reverse thread order.
void compare(const Case& c) {
  const Result want = run(c, false, false);
  const Result got = run(c, true, false);
  check_close(got.o, want.o, "o");
  check_close(got.lse, want.lse, "lse");
  check_close(got.dq, want.dq, "dq");
  REQUIRE(got.dk.size() == want.dk.size());
  for (size_t i = 0; i < got.dk.size(); ++i) {
    INFO("block " << i);
    check_close(got.dk[i], want.dk[i], "dk");
    check_close(got.dv[i], want.dv[i], "dv");
  }
  const Result rev = run(c, true, true);
  CHECK(same_bits(rev.o, got.o));
  CHECK(same_bits(rev.lse, got.lse));
  CHECK(same_bits(rev.dq, got.dq));
  for (size_t i = 0; i < got.dk.size(); ++i) {
    CHECK(same_bits(rev.dk[i], got.dk[i]));
    CHECK(same_bits(rev.dv[i], got.dv[i]));
  }
}

Case make_case(int64_t sq, int64_t sk, int heads, int kv_heads, int head_dim, bool causal,
               uint32_t seed) {
  Case c;
  c.sq = sq;
  c.sk = sk;
  c.heads = heads;
  c.kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.causal = causal;
  c.seed = seed;
  c.q_pos = iota(sq, sk > sq ? sk - sq : 0);  // queries at the end of the keys (a KV cache)
  c.k_pos = iota(sk);
  const int64_t third = sk / 3;  // three blocks arriving in reverse, as a ring delivers them
  c.blocks = {iota(sk - 2 * third, 2 * third), iota(third, third), iota(third)};
  return c;
}

}  // namespace

TEST_CASE("Fused attention body (emulated): matches the CPU's bf16 tiles", "[attention]") {
  struct Shape {
    int heads, kv_heads, head_dim;
    int64_t sq, sk;
  };
  const Shape s = GENERATE(Shape{4, 2, 32, 80, 150},  // GQA; neither length a multiple of 64
                           Shape{2, 1, 64, 64, 64},   // exactly one tile each way
                           Shape{3, 3, 16, 130, 70},  // three query tiles, 16-wide heads
                           Shape{2, 2, 128, 40, 100}  // the largest head the kernels take
  );
  const bool causal = GENERATE(false, true);
  INFO("H " << s.heads << " Hkv " << s.kv_heads << " D " << s.head_dim << " sq " << s.sq << " sk "
            << s.sk << " causal " << causal);
  compare(make_case(s.sq, s.sk, s.heads, s.kv_heads, s.head_dim, causal,
                    uint32_t(500 + s.sq + s.sk + s.head_dim)));
}

TEST_CASE("Fused attention body (emulated): segment ids, empty rows, zigzag shards, bf16 operands",
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
    c.bf16_operands = true;
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
  test::HostBlock blk(4096, false);
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
  // A phase queued after the last sync is an error of the body, reported by run_grid.
  CHECK_THROWS_WITH(
      test::run_grid(1, 1, 64, false,
                     [](test::HostBlock& b, int64_t, int64_t) { b.each_thread([](int) {}); }),
      Catch::Contains("after its last sync"));
  // wmma's rules: 256-bit aligned operands, leading dimensions of 16 bytes.
  alignas(64) uint16_t tile[64 * 24] = {};
  test::HostBlock::A a;
  CHECK_NOTHROW(test::HostBlock::load(a, tile, 24));
  CHECK_THROWS_WITH(test::HostBlock::load(a, tile + 8, 24), Catch::Contains("alignment"));
  CHECK_THROWS_WITH(test::HostBlock::load(a, tile, 20), Catch::Contains("alignment"));
  alignas(64) float acc_tile[16 * 20] = {};
  test::HostBlock::Acc c;
  CHECK_NOTHROW(test::HostBlock::store(acc_tile, c, 20));
  CHECK_THROWS_WITH(test::HostBlock::store(acc_tile, c, 18), Catch::Contains("alignment"));
}
