// The blockwise sequence of attention tile calls on one backend, for comparing backends: the
// same random problem (queries at given positions against keys fed as KV blocks in the order a
// ring delivers them) run as init, one forward call per block, finish, delta, one backward call
// per block. Used by test_cuda_attention.cpp (the GPU against the CPU) and
// test_fused_attention.cpp (the fused kernels, emulated or on the GPU, against the CPU's tiles).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/backend.h"
#include "core/random.h"
#include "core/tensor.h"
#include "test/close_vectors.h"

namespace ringattn::test {

// One attention problem: queries at q_pos against all keys, fed as KV blocks (lists of key
// indices, in the order they arrive, as the ring does).
struct Case {
  int64_t batch = 1, sq = 0, sk = 0;
  int heads = 1, kv_heads = 1, head_dim = 16;
  bool causal = false;
  int64_t q_chunk = 0, k_chunk = 0;
  std::vector<int64_t> q_pos, k_pos;  // [sq], [sk]
  std::vector<int32_t> q_seg, k_seg;  // [B, sq], [B, sk], or both empty
  std::vector<std::vector<int64_t>> blocks;
  Tensor q, k, v, dout;  // host, [B, S, H(kv), D]
  uint64_t seed = 0;
  bool bf16 = false;     // AttentionTileProblem::bf16: the tile GEMMs on bf16 operands
  bool kv_bf16 = false;  // (bf16) keys and values handed over as bfloat16, as the ring sends them
  bool q_bf16 = false;   // (bf16) queries handed over as bfloat16, as the model keeps them
  bool fused = false;    // (bf16) AttentionTileProblem::fused: the fused kernels
};

inline Case make_case(int64_t batch, int64_t sq, int64_t sk, int heads, int kv_heads, int head_dim,
                      bool causal, int64_t q_chunk, int64_t k_chunk, uint64_t seed) {
  Case c;
  c.batch = batch;
  c.sq = sq;
  c.sk = sk;
  c.heads = heads;
  c.kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.causal = causal;
  c.q_chunk = q_chunk;
  c.k_chunk = k_chunk;
  c.q_pos = iota(sq);
  c.k_pos = iota(sk);
  c.blocks = {iota(sk)};
  c.seed = seed;
  c.q = Tensor::empty({batch, sq, heads, head_dim}, DType::F32);
  c.k = Tensor::empty({batch, sk, kv_heads, head_dim}, DType::F32);
  c.v = Tensor::empty({batch, sk, kv_heads, head_dim}, DType::F32);
  c.dout = Tensor::empty({batch, sq, heads, head_dim}, DType::F32);
  fill_normal(c.q, seed);
  fill_normal(c.k, seed + 1);
  fill_normal(c.v, seed + 2);
  fill_normal(c.dout, seed + 3);
  return c;
}

struct Result {
  Tensor o, lse, dq;           // host
  std::vector<Tensor> dk, dv;  // host, one per block (its own rows)
  AttentionTileStats fwd, bwd;
};

// Runs the blockwise sequence on `be`, every tensor in its memory (for the CPU backend that is the
// host; copy_from_host / copy_to_host are plain copies there). Positions stay on the host (the
// documented case); segment ids are host memory, or device memory when seg_on_device.
// The "+=" outputs (dq, each block's dk and dv) start from the same random values on both
// backends; the forward state starts as garbage, which init must overwrite.
inline Result run(Backend& be, const Case& c, bool seg_on_device) {
  const Device dev = be.device();
  auto up = [&](const Tensor& host) {
    Tensor t = Tensor::empty(host.shape(), host.dtype(), dev, "test tensor");
    be.copy_from_host(t.raw(), host.raw(), host.nbytes());
    return t;
  };
  auto down = [&](const Tensor& t) {
    Tensor h = Tensor::empty(t.shape(), t.dtype());
    be.copy_to_host(h.raw(), t.raw(), t.nbytes());
    return h;
  };
  auto randn = [](const Shape& shape, uint64_t seed) {
    Tensor t = Tensor::empty(shape, DType::F32);
    fill_normal(t, seed);
    return t;
  };
  const int64_t B = c.batch, Sq = c.sq, H = c.heads, Hkv = c.kv_heads, D = c.head_dim;
  const bool seg = !c.q_seg.empty();

  struct Block {
    Tensor k, v, k16, v16, seg_dev, dk, dv;  // backend memory
    std::vector<int64_t> pos;
    std::vector<int32_t> seg;  // host copy
    int64_t n = 0;
  };
  std::vector<Block> blocks;
  for (size_t bi = 0; bi < c.blocks.size(); ++bi) {
    const std::vector<int64_t>& idx = c.blocks[bi];
    Block blk;
    blk.n = int64_t(idx.size());
    Tensor hk = Tensor::empty({B, blk.n, Hkv, D}, DType::F32);
    Tensor hv = Tensor::empty({B, blk.n, Hkv, D}, DType::F32);
    for (int64_t b = 0; b < B; ++b)
      for (size_t jj = 0; jj < idx.size(); ++jj) {
        const int64_t src = (b * c.sk + idx[jj]) * Hkv * D;
        const int64_t dst = (b * blk.n + int64_t(jj)) * Hkv * D;
        std::copy_n(c.k.data<float>() + src, Hkv * D, hk.data<float>() + dst);
        std::copy_n(c.v.data<float>() + src, Hkv * D, hv.data<float>() + dst);
        if (seg) blk.seg.push_back(c.k_seg[size_t(b * c.sk + idx[jj])]);
      }
    for (int64_t j : idx) blk.pos.push_back(c.k_pos[size_t(j)]);
    blk.k = up(hk);
    blk.v = up(hv);
    if (c.kv_bf16) {
      blk.k16 = Tensor::empty({B, blk.n, Hkv, D}, DType::BF16, dev, "test tensor");
      blk.v16 = Tensor::empty({B, blk.n, Hkv, D}, DType::BF16, dev, "test tensor");
      be.to_bf16(blk.k.data<float>(), blk.k16.data<uint16_t>(), blk.k.numel());
      be.to_bf16(blk.v.data<float>(), blk.v16.data<uint16_t>(), blk.v.numel());
    }
    if (seg && seg_on_device) {
      Tensor hs = Tensor::empty({B, blk.n}, DType::I32);
      std::copy(blk.seg.begin(), blk.seg.end(), hs.data<int32_t>());
      blk.seg_dev = up(hs);
    }
    blk.dk = up(randn({B, blk.n, Hkv, D}, c.seed + 100 + bi));
    blk.dv = up(randn({B, blk.n, Hkv, D}, c.seed + 200 + bi));
    blocks.push_back(std::move(blk));
  }
  Tensor q_seg_dev;
  if (seg && seg_on_device) {
    Tensor hs = Tensor::empty({B, Sq}, DType::I32);
    std::copy(c.q_seg.begin(), c.q_seg.end(), hs.data<int32_t>());
    q_seg_dev = up(hs);
  }
  const Tensor q = up(c.q), dout = up(c.dout);
  Tensor q16;
  if (c.q_bf16) {
    q16 = Tensor::empty(c.q.shape(), DType::BF16, dev, "test tensor");
    be.to_bf16(q.data<float>(), q16.data<uint16_t>(), q.numel());
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
    p.q_chunk = c.q_chunk;
    p.k_chunk = c.k_chunk;
    p.q_pos = c.q_pos.data();
    p.k_pos = blk.pos.data();
    if (seg) {
      p.q_seg = seg_on_device ? q_seg_dev.data<int32_t>() : c.q_seg.data();
      p.k_seg = seg_on_device ? blk.seg_dev.data<int32_t>() : blk.seg.data();
    }
    p.q = c.q_bf16 ? nullptr : q.data<float>();
    p.q_bf16 = c.q_bf16 ? q16.data<uint16_t>() : nullptr;
    p.k = c.kv_bf16 ? nullptr : blk.k.data<float>();
    p.v = c.kv_bf16 ? nullptr : blk.v.data<float>();
    p.k_bf16 = c.kv_bf16 ? blk.k16.data<uint16_t>() : nullptr;
    p.v_bf16 = c.kv_bf16 ? blk.v16.data<uint16_t>() : nullptr;
    p.bf16 = c.bf16;
    p.fused = c.fused;
    return p;
  };

  Result r;
  Tensor acc = up(randn({B, Sq, H, D}, 7));
  Tensor m = up(randn({B, H, Sq}, 8)), l = up(randn({B, H, Sq}, 9));
  const AttentionForwardState st{acc.data<float>(), m.data<float>(), l.data<float>()};
  be.attention_forward_init(st, B, Sq, int(H), int(D));
  for (const Block& blk : blocks) be.attention_forward_block(problem(blk), st, &r.fwd);
  Tensor o = Tensor::empty({B, Sq, H, D}, DType::F32, dev);
  Tensor lse = Tensor::empty({B, H, Sq}, DType::F32, dev);
  be.attention_forward_finish(st, o.data<float>(), lse.data<float>(), B, Sq, int(H), int(D));

  Tensor delta = Tensor::empty({B, H, Sq}, DType::F32, dev);
  be.attention_backward_delta(dout.data<float>(), o.data<float>(), delta.data<float>(), B, Sq,
                              int(H), int(D));
  Tensor dq = up(randn({B, Sq, H, D}, c.seed + 50));
  for (Block& blk : blocks) {
    const AttentionBackwardArgs a{dout.data<float>(), lse.data<float>(),    delta.data<float>(),
                                  dq.data<float>(),   blk.dk.data<float>(), blk.dv.data<float>()};
    be.attention_backward_block(problem(blk), a, &r.bwd);
  }
  r.o = down(o);
  r.lse = down(lse);
  r.dq = down(dq);
  for (Block& blk : blocks) {
    r.dk.push_back(down(blk.dk));
    r.dv.push_back(down(blk.dv));
  }
  return r;
}

// Equal bit for bit (host tensors of the same shape and dtype).
inline bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

}  // namespace ringattn::test
