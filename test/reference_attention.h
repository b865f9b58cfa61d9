// Float64 reference attention for the tests: the formulas of ../shared/design/ring-attention.md
// (sections 2 and 3) written out directly, one query row at a time, over the whole key set.
//
// Layouts as in core/attention_tile.h: q, o, dq, dout [B, Sq, H, D]; k, v, dk, dv [B, Sk, Hkv, D];
// lse [B, H, Sq]. Query head h reads kv head h / (H / Hkv). Key j is visible to query i when
// (not causal or k_pos[j] <= q_pos[i]) and (no segment ids or q_seg[b, i] == k_seg[b, j]).
// A query that sees no key gets o = 0, lse = -inf and zero gradients.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace ringattn::test {

// Segment ids of packed documents for attention inputs: random document lengths (1 to len/3)
// per batch row, ids ascending from 0.
inline std::vector<int32_t> packed_segments(int64_t batch, int64_t len, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int64_t> doc_len(1, std::max<int64_t>(1, len / 3));
  std::vector<int32_t> seg;
  for (int64_t b = 0; b < batch; ++b) {
    int32_t id = 0;
    for (int64_t i = 0; i < len;) {
      const int64_t n = std::min(len - i, doc_len(gen));
      for (int64_t e = 0; e < n; ++e, ++i) seg.push_back(id);
      ++id;
    }
  }
  return seg;
}

struct RefProblem {
  int64_t batch = 1, sq = 0, sk = 0;
  int heads = 1, kv_heads = 1, head_dim = 0;
  double scale = 1.0;
  bool causal = false;
  std::vector<int64_t> q_pos, k_pos;  // [Sq], [Sk]
  std::vector<int32_t> q_seg, k_seg;  // [B, Sq], [B, Sk], or both empty
};

struct RefResult {
  std::vector<double> o, lse;      // forward
  std::vector<double> dq, dk, dv;  // backward (empty when no dout was given)
};

inline bool ref_visible(const RefProblem& p, int64_t b, int64_t i, int64_t j) {
  if (p.causal && p.k_pos[size_t(j)] > p.q_pos[size_t(i)]) return false;
  if (!p.q_seg.empty() && p.q_seg[size_t(b * p.sq + i)] != p.k_seg[size_t(b * p.sk + j)])
    return false;
  return true;
}

// Forward, and the backward as well when dout is not empty.
inline RefResult reference_attention(const RefProblem& p, const std::vector<float>& q,
                                     const std::vector<float>& k, const std::vector<float>& v,
                                     const std::vector<float>& dout = {}) {
  const int64_t B = p.batch, Sq = p.sq, Sk = p.sk, H = p.heads, Hkv = p.kv_heads, D = p.head_dim,
                G = H / Hkv;
  auto qi = [&](int64_t b, int64_t i, int64_t h, int64_t d) {
    return size_t(((b * Sq + i) * H + h) * D + d);
  };
  auto ki = [&](int64_t b, int64_t j, int64_t h, int64_t d) {
    return size_t(((b * Sk + j) * Hkv + h) * D + d);
  };
  const bool backward = !dout.empty();
  RefResult r;
  r.o.assign(size_t(B * Sq * H * D), 0.0);
  r.lse.assign(size_t(B * H * Sq), -std::numeric_limits<double>::infinity());
  if (backward) {
    r.dq.assign(r.o.size(), 0.0);
    r.dk.assign(size_t(B * Sk * Hkv * D), 0.0);
    r.dv.assign(r.dk.size(), 0.0);
  }
  std::vector<double> s(static_cast<size_t>(Sk)), prob(static_cast<size_t>(Sk));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t hk = h / G;
      for (int64_t i = 0; i < Sq; ++i) {
        bool any = false;
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < Sk; ++j) {
          if (!ref_visible(p, b, i, j)) continue;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d)
            dot += double(q[qi(b, i, h, d)]) * double(k[ki(b, j, hk, d)]);
          s[size_t(j)] = p.scale * dot;
          m = std::max(m, s[size_t(j)]);
          any = true;
        }
        if (!any) continue;  // o = 0, lse = -inf, no gradient
        double l = 0;
        for (int64_t j = 0; j < Sk; ++j)
          if (ref_visible(p, b, i, j)) l += std::exp(s[size_t(j)] - m);
        const double lse = m + std::log(l);
        r.lse[size_t((b * H + h) * Sq + i)] = lse;
        for (int64_t j = 0; j < Sk; ++j) {
          prob[size_t(j)] = ref_visible(p, b, i, j) ? std::exp(s[size_t(j)] - lse) : 0.0;
          for (int64_t d = 0; d < D; ++d)
            r.o[qi(b, i, h, d)] += prob[size_t(j)] * double(v[ki(b, j, hk, d)]);
        }
        if (!backward) continue;
        double delta = 0;
        for (int64_t d = 0; d < D; ++d) delta += double(dout[qi(b, i, h, d)]) * r.o[qi(b, i, h, d)];
        for (int64_t j = 0; j < Sk; ++j) {
          if (prob[size_t(j)] == 0.0) continue;
          double dp = 0;
          for (int64_t d = 0; d < D; ++d) {
            dp += double(dout[qi(b, i, h, d)]) * double(v[ki(b, j, hk, d)]);
            r.dv[ki(b, j, hk, d)] += prob[size_t(j)] * double(dout[qi(b, i, h, d)]);
          }
          const double ds = prob[size_t(j)] * (dp - delta);
          for (int64_t d = 0; d < D; ++d) {
            r.dq[qi(b, i, h, d)] += p.scale * ds * double(k[ki(b, j, hk, d)]);
            r.dk[ki(b, j, hk, d)] += p.scale * ds * double(q[qi(b, i, h, d)]);
          }
        }
      }
    }
  return r;
}

}  // namespace ringattn::test
