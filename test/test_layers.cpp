// The transformer's layers (model/layers/) and the backend ops under them (core/cpu/cpu_layers).
//
// Every op is compared with a float64 reference written here, forward and backward. Every layer's
// gradient is checked against central finite differences of a float64 reference forward of the
// same layer (step 1e-5 in float64, so the differences are exact to ~1e-9 and the check measures
// only the float32 analytic gradient): loss = sum(output * r) for random r, error = max |analytic -
// fd| over sampled coordinates divided by the largest |fd| of that tensor, required <= kGradTol.
// Each rank runs these on its own (no communication); sizes are small so the group takes seconds.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "comm/mesh.h"
#include "core/backend.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/random.h"
#include "model/attention/attention.h"
#include "model/attention/layout.h"
#include "model/attention/sequence_shard.h"
#include "model/layers/layers.h"
#include "model/layers/params.h"

using namespace ringattn;

namespace {

using Vec = std::vector<double>;
using VecF = std::vector<float>;

// Gradient check tolerance (relative to the tensor's largest gradient entry): float32 analytic
// gradients of these small layers are good to ~1e-6 of that scale; 1e-4 leaves room for
// summation-order noise and still catches any wrong term (those are O(1) off).
constexpr double kGradTol = 1e-4;
// Forward outputs against the float64 reference: max |got - want| / (1 + |want|).
constexpr double kFwdTol = 1e-5;

VecF randn(size_t n, uint64_t seed, float stddev = 1.0f, float mean = 0.0f) {
  Tensor t = Tensor::empty({int64_t(n)}, DType::F32);
  fill_normal(t, seed, mean, stddev);
  return VecF(t.data<float>(), t.data<float>() + n);
}

Vec to_d(const VecF& v) {
  return Vec(v.begin(), v.end());
}

Tensor tensor_of(const VecF& v, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::F32);
  REQUIRE(size_t(t.numel()) == v.size());
  std::memcpy(t.data<float>(), v.data(), v.size() * sizeof(float));
  return t;
}

VecF vec_of(const Tensor& t) {
  return VecF(t.data<float>(), t.data<float>() + t.numel());
}

// max |got - want| / (1 + |want|).
double max_err(const float* got, const Vec& want) {
  double m = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::abs(double(got[i]) - want[i]) / (1.0 + std::abs(want[i]));
    m = std::isnan(e) ? INFINITY : std::max(m, e);
  }
  return m;
}

// max |a - b| / (1e-3 + max |b|): for comparing two float32 computations of the same thing.
double max_rel_diff(const VecF& a, const VecF& b) {
  REQUIRE(a.size() == b.size());
  double m = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, std::abs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return m / (1e-3 + scale);
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central differences of `loss` over coordinates [begin, begin + count) of v (all of them, or
// `samples` spread over the range), against analytic[0..count). Returns the relative error above.
double fd_error(Vec& v, size_t begin, size_t count, const float* analytic,
                const std::function<double()>& loss, size_t samples = 48) {
  const double h = 1e-5;
  double worst = 0, scale = 0;
  const size_t step = count <= samples ? 1 : count / samples;
  for (size_t i = 0; i < count; i += step) {
    const size_t j = begin + (count <= samples ? i : (i + i / step * 7) % count);
    const double saved = v[j];
    v[j] = saved + h;
    const double up = loss();
    v[j] = saved - h;
    const double down = loss();
    v[j] = saved;
    const double fd = (up - down) / (2 * h);
    worst = std::max(worst, std::abs(fd - double(analytic[j - begin])));
    scale = std::max(scale, std::abs(fd));
  }
  return worst / std::max(scale, 1e-12);
}

// ---- float64 references
// --------------------------------------------------------------------------

Vec ref_rmsnorm(const double* x, const double* w, int64_t rows, int64_t dim, double eps) {
  Vec y(static_cast<size_t>(rows * dim));
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t d = 0; d < dim; ++d) ss += x[r * dim + d] * x[r * dim + d];
    const double inv = 1.0 / std::sqrt(ss / double(dim) + eps);
    for (int64_t d = 0; d < dim; ++d) y[size_t(r * dim + d)] = x[r * dim + d] * inv * w[d];
  }
  return y;
}

// y[n, out] = x[n, in] W^T, W [out, in].
Vec ref_linear(const double* x, int64_t n, int64_t in, const double* w, int64_t out) {
  Vec y(size_t(n * out), 0.0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t i = 0; i < in; ++i) s += x[r * in + i] * w[o * in + i];
      y[size_t(r * out + o)] = s;
    }
  return y;
}

// HF rotate-half on [B, S, H, D]; sign -1 turns backwards.
Vec ref_rope(const Vec& x, int64_t B, int64_t S, int64_t H, int64_t D,
             const std::vector<int64_t>& pos, double theta, double sign = 1.0) {
  Vec y = x;
  const int64_t half = D / 2;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const double a = sign * double(pos[size_t(s)]) * std::pow(theta, -2.0 * i / double(D));
          const size_t o = size_t(((b * S + s) * H + h) * D);
          const double x1 = x[o + size_t(i)], x2 = x[o + size_t(i + half)];
          y[o + size_t(i)] = x1 * std::cos(a) - x2 * std::sin(a);
          y[o + size_t(i + half)] = x2 * std::cos(a) + x1 * std::sin(a);
        }
  return y;
}

double silu(double g) {
  return g / (1.0 + std::exp(-g));
}

// Causal (by global position) attention with GQA and optional segment ids [B, S].
Vec ref_attention(const Vec& q, const Vec& k, const Vec& v, int64_t B, int64_t S, int64_t H,
                  int64_t Hkv, int64_t D, const std::vector<int64_t>& pos,
                  const std::vector<int32_t>& seg) {
  Vec o(q.size(), 0.0);
  const int64_t G = H / Hkv;
  const double scale = 1.0 / std::sqrt(double(D));
  Vec p(static_cast<size_t>(S));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < S; ++i) {
        double m = -INFINITY;
        for (int64_t j = 0; j < S; ++j) {
          const bool vis = pos[size_t(j)] <= pos[size_t(i)] &&
                           (seg.empty() || seg[size_t(b * S + i)] == seg[size_t(b * S + j)]);
          double s = -INFINITY;
          if (vis) {
            s = 0;
            for (int64_t d = 0; d < D; ++d)
              s += q[size_t(((b * S + i) * H + h) * D + d)] *
                   k[size_t(((b * S + j) * Hkv + h / G) * D + d)];
            s *= scale;
          }
          p[size_t(j)] = s;
          m = std::max(m, s);
        }
        double l = 0;
        for (int64_t j = 0; j < S; ++j) l += p[size_t(j)] = std::exp(p[size_t(j)] - m);
        for (int64_t j = 0; j < S; ++j)
          for (int64_t d = 0; d < D; ++d)
            o[size_t(((b * S + i) * H + h) * D + d)] +=
                p[size_t(j)] / l * v[size_t(((b * S + j) * Hkv + h / G) * D + d)];
      }
  return o;
}

Vec ref_ffn(const double* x, int64_t n, int64_t hid, int64_t I, const double* wg, const double* wu,
            const double* wd) {
  Vec g = ref_linear(x, n, hid, wg, I);
  const Vec u = ref_linear(x, n, hid, wu, I);
  for (size_t i = 0; i < g.size(); ++i) g[i] = silu(g[i]) * u[i];
  return ref_linear(g.data(), n, I, wd, hid);
}

struct Shard {
  int64_t B = 0, S = 0;
  std::vector<int64_t> pos;
  std::vector<int32_t> seg;  // [B, S] or empty
  ShardTokens tokens() const {
    ShardTokens t;
    t.batch = B;
    t.seq = S;
    t.positions = pos;
    if (!seg.empty()) {
      t.segment_ids = Tensor::empty({B, S}, DType::I32);
      std::memcpy(t.segment_ids.data<int32_t>(), seg.data(), seg.size() * sizeof(int32_t));
    }
    return t;
  }
};

Vec ref_attention_block(const double* x, const double* p, const DecoderOffsets& off,
                        const ModelDims& d, const Shard& sh) {
  const int64_t n = sh.B * sh.S, hid = d.hidden, H = d.heads, Hkv = d.kv_heads, D = d.head_dim;
  const Vec xn = ref_rmsnorm(x, p + off.input_norm, n, hid, d.norm_eps);
  Vec q = ref_linear(xn.data(), n, hid, p + off.q, H * D);
  Vec k = ref_linear(xn.data(), n, hid, p + off.k, Hkv * D);
  const Vec v = ref_linear(xn.data(), n, hid, p + off.v, Hkv * D);
  q = ref_rope(q, sh.B, sh.S, H, D, sh.pos, d.rope_theta);
  k = ref_rope(k, sh.B, sh.S, Hkv, D, sh.pos, d.rope_theta);
  const Vec o = ref_attention(q, k, v, sh.B, sh.S, H, Hkv, D, sh.pos, sh.seg);
  Vec out = ref_linear(o.data(), n, H * D, p + off.o, hid);
  for (size_t i = 0; i < out.size(); ++i) out[i] += x[i];
  return out;
}

Vec ref_decoder(const double* x, const double* p, const DecoderOffsets& off, const ModelDims& d,
                const Shard& sh) {
  const int64_t n = sh.B * sh.S;
  Vec h1 = ref_attention_block(x, p, off, d, sh);
  const Vec xn = ref_rmsnorm(h1.data(), p + off.post_norm, n, d.hidden, d.norm_eps);
  const Vec f =
      ref_ffn(xn.data(), n, d.hidden, d.intermediate, p + off.gate, p + off.up, p + off.down);
  for (size_t i = 0; i < h1.size(); ++i) h1[i] += f[i];
  return h1;
}

double ref_ce_row(const double* logits, int64_t vocab, int32_t t, double* lse_out = nullptr) {
  double m = -INFINITY;
  for (int64_t j = 0; j < vocab; ++j) m = std::max(m, logits[j]);
  double s = 0;
  for (int64_t j = 0; j < vocab; ++j) s += std::exp(logits[j] - m);
  const double lse = m + std::log(s);
  if (lse_out) *lse_out = lse;
  return lse - logits[t];
}

double ref_head_loss(const double* x, const double* norm, const double* w,
                     const std::vector<int32_t>& targets, const VecF& weights, int64_t n,
                     int64_t hid, int64_t vocab, double eps) {
  const Vec xn = ref_rmsnorm(x, norm, n, hid, eps);
  const Vec logits = ref_linear(xn.data(), n, hid, w, vocab);
  double loss = 0;
  for (int64_t r = 0; r < n; ++r) {
    if (targets[size_t(r)] < 0) continue;
    loss += (weights.empty() ? 1.0 : double(weights[size_t(r)])) *
            ref_ce_row(logits.data() + r * vocab, vocab, targets[size_t(r)]);
  }
  return loss;
}

// ---- shared set-up ------------------------------------------------------------------------------

ModelDims small_dims() {
  ModelDims d;
  d.vocab = 11;
  d.hidden = 16;
  d.intermediate = 24;
  d.layers = 1;
  d.heads = 4;
  d.kv_heads = 2;
  d.head_dim = 4;
  d.rope_theta = 500.0f;  // small theta: angles vary a lot between the few positions used
  d.norm_eps = 1e-5f;
  return d;
}

// Random weights of O(1) effect (the 0.02 of training would make every layer nearly linear);
// RMSNorm weights around 1.
VecF random_params(const ParamLayout& layout, uint64_t seed) {
  VecF p = randn(size_t(layout.numel()), seed, 0.3f);
  for (const ParamEntry& e : layout.entries())
    if (e.name.find("norm") != std::string::npos) {
      const VecF w = randn(size_t(e.numel()), seed + 99, 0.1f, 1.0f);
      std::copy(w.begin(), w.end(), p.begin() + e.offset);
    }
  return p;
}

AttentionOptions blockwise_options() {
  AttentionOptions o;
  o.impl = AttentionImpl::Blockwise;
  o.causal = true;
  o.q_chunk = 4;  // tiles smaller than the shard, so the tile loop and its masks are exercised
  o.k_chunk = 4;
  return o;
}

// Two sequences of 6 tokens at global positions 5..10 (a shard that does not start at 0), with two
// packed documents cut at different places.
Shard small_shard(bool segments) {
  Shard s;
  s.B = 2;
  s.S = 6;
  for (int64_t i = 0; i < s.S; ++i) s.pos.push_back(5 + i);
  if (segments) s.seg = {0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1};
  return s;
}

}  // namespace

// ---- ops ----------------------------------------------------------------------------------------

TEST_CASE("embedding op: lookup and scatter-add against float64", "[layers]") {
  Backend& be = cpu_backend();
  const int64_t vocab = 9, dim = 40, n = 7;
  const VecF table = randn(size_t(vocab * dim), 1);
  const std::vector<int32_t> tokens{3, 0, 8, 3, 5, 3, 0};  // repeats: the scatter must add them
  VecF out(static_cast<size_t>(n * dim));
  be.embedding_forward(tokens.data(), n, table.data(), vocab, dim, out.data());
  for (int64_t i = 0; i < n; ++i)
    REQUIRE(std::memcmp(out.data() + i * dim, table.data() + tokens[size_t(i)] * dim,
                        size_t(dim) * sizeof(float)) == 0);

  const VecF dout = randn(size_t(n * dim), 2);
  VecF dtable = randn(size_t(vocab * dim), 3);  // accumulates into what is there
  Vec want = to_d(dtable);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < dim; ++d)
      want[size_t(tokens[size_t(i)] * dim + d)] += double(dout[size_t(i * dim + d)]);
  be.embedding_backward(tokens.data(), n, dout.data(), vocab, dim, dtable.data());
  CHECK(max_err(dtable.data(), want) < 1e-6);

  // A bf16 table: each looked-up row is the widened bf16 row, bit for bit.
  std::vector<uint16_t> table_bf16(table.size());
  for (size_t i = 0; i < table.size(); ++i) table_bf16[i] = f32_to_bf16(table[i]);
  VecF out16 = randn(out.size(), 4);  // overwritten
  be.embedding_forward_bf16(tokens.data(), n, table_bf16.data(), vocab, dim, out16.data());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < dim; ++d) {
      const float want16 = bf16_to_f32(table_bf16[size_t(tokens[size_t(i)] * dim + d)]);
      REQUIRE(std::memcmp(&out16[size_t(i * dim + d)], &want16, sizeof(float)) == 0);
    }

  const std::vector<int32_t> bad{1, 9};
  CHECK_THROWS_WITH(be.embedding_forward(bad.data(), 2, table.data(), vocab, dim, out.data()),
                    Catch::Contains("row 1") && Catch::Contains("outside the vocabulary"));
  CHECK_THROWS_AS(
      be.embedding_forward_bf16(bad.data(), 2, table_bf16.data(), vocab, dim, out.data()), Error);
  CHECK_THROWS_AS(be.embedding_backward(bad.data(), 2, dout.data(), vocab, dim, dtable.data()),
                  Error);
}

TEST_CASE("rmsnorm op: forward, inverse rms and backward against float64", "[layers]") {
  Backend& be = cpu_backend();
  const int64_t rows = 9, dim = 24;
  const double eps = 1e-5;
  const VecF x = randn(size_t(rows * dim), 10, 2.0f);
  const VecF w = randn(size_t(dim), 11, 0.2f, 1.0f);
  VecF y(x.size()), inv(static_cast<size_t>(rows));
  be.rmsnorm_forward(x.data(), w.data(), rows, dim, float(eps), y.data(), inv.data());
  const Vec xd = to_d(x), wd = to_d(w);
  CHECK(max_err(y.data(), ref_rmsnorm(xd.data(), wd.data(), rows, dim, eps)) < kFwdTol);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t d = 0; d < dim; ++d) ss += xd[size_t(r * dim + d)] * xd[size_t(r * dim + d)];
    CHECK(std::abs(inv[size_t(r)] - 1.0 / std::sqrt(ss / dim + eps)) < 1e-6);
  }

  // Backward against the closed form in float64, accumulating into existing dx and dw.
  const VecF dy = randn(x.size(), 12);
  VecF dx = randn(x.size(), 13), dw = randn(size_t(dim), 14);
  Vec want_dx = to_d(dx), want_dw = to_d(dw);
  for (int64_t r = 0; r < rows; ++r) {
    const double* xr = xd.data() + r * dim;
    double ss = 0, gx = 0;
    for (int64_t d = 0; d < dim; ++d) {
      ss += xr[d] * xr[d];
      gx += double(dy[size_t(r * dim + d)]) * wd[size_t(d)] * xr[d];
    }
    const double iv = 1.0 / std::sqrt(ss / dim + eps);
    for (int64_t d = 0; d < dim; ++d) {
      const double g = double(dy[size_t(r * dim + d)]) * wd[size_t(d)];
      want_dx[size_t(r * dim + d)] += iv * g - xr[d] * iv * iv * iv * gx / dim;
      want_dw[size_t(d)] += double(dy[size_t(r * dim + d)]) * xr[d] * iv;
    }
  }
  be.rmsnorm_backward(x.data(), w.data(), inv.data(), dy.data(), rows, dim, dx.data(), dw.data());
  CHECK(max_err(dx.data(), want_dx) < kFwdTol);
  CHECK(max_err(dw.data(), want_dw) < kFwdTol);
}

TEST_CASE("rope op: forward and backward against float64 at large global positions", "[layers]") {
  Backend& be = cpu_backend();
  const int64_t B = 2, S = 5, H = 3, D = 8;
  const float theta = 10000.0f;
  const std::vector<int64_t> pos{1000, 1001, 1002, 40000, 40003};
  const VecF x = randn(size_t(B * S * H * D), 20);
  VecF y = x;
  be.rope_forward(y.data(), B, S, int(H), int(D), pos.data(), theta);
  CHECK(max_err(y.data(), ref_rope(to_d(x), B, S, H, D, pos, theta)) < kFwdTol);
  // Backward: the transpose, i.e. the rotation by -angle; and it undoes the forward.
  const VecF dy = randn(x.size(), 21);
  VecF dx = dy;
  be.rope_backward(dx.data(), B, S, int(H), int(D), pos.data(), theta);
  CHECK(max_err(dx.data(), ref_rope(to_d(dy), B, S, H, D, pos, theta, -1.0)) < kFwdTol);
  be.rope_backward(y.data(), B, S, int(H), int(D), pos.data(), theta);
  CHECK(max_err(y.data(), to_d(x)) < kFwdTol);
  // Gradient check: d/dx sum(rope(x) * r) is rope_backward(r).
  Vec xd = to_d(x);
  const Vec r = to_d(dy);
  CHECK(fd_error(xd, 0, xd.size(), dx.data(),
                 [&] { return dot(ref_rope(xd, B, S, H, D, pos, theta), r); }) < kGradTol);
}

TEST_CASE("rope op: Hugging Face rotate-half on a hand-computed example", "[layers]") {
  Backend& be = cpu_backend();
  // D = 4: inv_freq = theta^(-0/4), theta^(-2/4) = 1, 0.01 for theta = 1e4. HF pairs x[i] with
  // x[i + 2] (rotate_half(x) = [-x2, -x3, x0, x1]; out = x cos + rotate_half(x) sin with
  // cos = [cos a0, cos a1, cos a0, cos a1]). Position 1, x = [1, 2, 3, 4]:
  //   out0 = 1 cos 1 - 3 sin 1,        out1 = 2 cos 0.01 - 4 sin 0.01,
  //   out2 = 3 cos 1 + 1 sin 1,        out3 = 4 cos 0.01 + 2 sin 0.01.
  // Position 7 with theta = 100 (inv_freq 1, 0.1): angles 7 and 0.7, same formulas.
  VecF x{1, 2, 3, 4, 1, 2, 3, 4};
  const std::vector<int64_t> pos1{1}, pos7{7};
  be.rope_forward(x.data(), 1, 1, 1, 4, pos1.data(), 10000.0f);
  be.rope_forward(x.data() + 4, 1, 1, 1, 4, pos7.data(), 100.0f);
  const double want[8] = {-1.9841106485555495, 1.959900667496664,   2.4623779024123156,
                          4.019799668334994,   -1.2170575418130625, -1.047186374381787,
                          2.9186933617487028,  4.3478041236133365};
  for (int i = 0; i < 8; ++i) CHECK(std::abs(x[size_t(i)] - want[i]) < 2e-6);
}

TEST_CASE("rope op: a shard at positions 100..115 equals that slice of the whole sequence",
          "[layers]") {
  Backend& be = cpu_backend();
  const int64_t B = 2, S = 128, H = 2, D = 16, s0 = 100, n = 16;
  const VecF x = randn(size_t(B * S * H * D), 30);
  std::vector<int64_t> all(S), shard_pos(n), local(n);
  for (int64_t i = 0; i < S; ++i) all[size_t(i)] = i;
  for (int64_t i = 0; i < n; ++i) shard_pos[size_t(i)] = s0 + i, local[size_t(i)] = i;
  VecF full = x;
  be.rope_forward(full.data(), B, S, int(H), int(D), all.data(), 10000.0f);
  const int64_t row = H * D;
  VecF shard(static_cast<size_t>(B * n * row)), wrong;
  for (int64_t b = 0; b < B; ++b)
    std::memcpy(shard.data() + b * n * row, x.data() + (b * S + s0) * row,
                size_t(n * row) * sizeof(float));
  wrong = shard;
  be.rope_forward(shard.data(), B, n, int(H), int(D), shard_pos.data(), 10000.0f);
  be.rope_forward(wrong.data(), B, n, int(H), int(D), local.data(), 10000.0f);
  bool same = true, differs = false;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < n * row; ++i) {
      const float want = full[size_t((b * S + s0) * row + i)];
      same = same && shard[size_t(b * n * row + i)] == want;
      differs = differs || wrong[size_t(b * n * row + i)] != want;
    }
  CHECK(same);     // bitwise: each token's rotation depends on its global position only
  CHECK(differs);  // local positions would give something else
}

TEST_CASE("swiglu op: forward and backward against float64, in place", "[layers]") {
  Backend& be = cpu_backend();
  const int64_t n = 257;
  const VecF g = randn(size_t(n), 40, 3.0f), u = randn(size_t(n), 41), dy = randn(size_t(n), 42);
  Vec want(static_cast<size_t>(n)), want_dg(static_cast<size_t>(n)),
      want_du(static_cast<size_t>(n));
  for (size_t i = 0; i < size_t(n); ++i) {
    const double s = 1.0 / (1.0 + std::exp(-double(g[i])));
    want[i] = silu(g[i]) * u[i];
    want_dg[i] = double(dy[i]) * u[i] * (s + g[i] * s * (1 - s));
    want_du[i] = double(dy[i]) * silu(g[i]);
  }
  VecF out(static_cast<size_t>(n));
  be.swiglu_forward(g.data(), u.data(), n, out.data());
  CHECK(max_err(out.data(), want) < kFwdTol);
  VecF dg = g, du = u;  // the in-place form the FFN uses
  be.swiglu_backward(dg.data(), du.data(), dy.data(), n, dg.data(), du.data());
  CHECK(max_err(dg.data(), want_dg) < kFwdTol);
  CHECK(max_err(du.data(), want_du) < kFwdTol);
  // Gradient check of the elementwise function itself.
  Vec gd = to_d(g), ud = to_d(u);
  const Vec r = to_d(dy);
  auto loss = [&] {
    double s = 0;
    for (size_t i = 0; i < gd.size(); ++i) s += silu(gd[i]) * ud[i] * r[i];
    return s;
  };
  CHECK(fd_error(gd, 0, gd.size(), dg.data(), loss) < kGradTol);
  CHECK(fd_error(ud, 0, ud.size(), du.data(), loss) < kGradTol);
}

TEST_CASE("cross entropy op: loss, dlogits, ignore index, weights and argmax", "[layers]") {
  Backend& be = cpu_backend();
  const int64_t rows = 7, vocab = 13;
  VecF logits = randn(size_t(rows * vocab), 50, 2.0f);
  std::vector<int32_t> targets{4, -1, 12, 0, 7, 3, -1};
  const VecF weights{1.0f, 5.0f, 0.5f, 0.0f, 2.0f, 1.0f, 1.0f};
  // Row 4's target is made its clear maximum, so at least one row is right.
  logits[size_t(4 * vocab + 7)] = 9.0f;
  const float grad_scale = 0.25f;
  double want_loss = 0;
  Vec want_dl(logits.size(), 0.0);
  std::vector<uint8_t> want_ok(size_t(rows), 0);
  const Vec ld = to_d(logits);
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t t = targets[size_t(r)];
    if (t < 0) continue;
    double lse = 0;
    want_loss += weights[size_t(r)] * ref_ce_row(ld.data() + r * vocab, vocab, t, &lse);
    int64_t arg = 0;
    for (int64_t j = 0; j < vocab; ++j) {
      if (ld[size_t(r * vocab + j)] > ld[size_t(r * vocab + arg)]) arg = j;
      want_dl[size_t(r * vocab + j)] =
          (std::exp(ld[size_t(r * vocab + j)] - lse) - (j == t ? 1.0 : 0.0)) * weights[size_t(r)] *
          grad_scale;
    }
    want_ok[size_t(r)] = uint8_t(arg == t);
  }
  VecF dl(logits.size());
  std::vector<uint8_t> ok(size_t(rows), 7);
  const double loss = be.cross_entropy(logits.data(), targets.data(), weights.data(), rows, vocab,
                                       grad_scale, dl.data(), ok.data());
  CHECK(std::abs(loss - want_loss) < 1e-5 * (1 + std::abs(want_loss)));
  CHECK(max_err(dl.data(), want_dl) < kFwdTol);
  CHECK(ok == want_ok);
  CHECK(want_ok[4] == 1);
  // In place over the logits, no weights (every row weighs 1), no correctness output.
  VecF inplace = logits;
  double want_unweighted = 0;
  for (int64_t r = 0; r < rows; ++r)
    if (targets[size_t(r)] >= 0)
      want_unweighted += ref_ce_row(ld.data() + r * vocab, vocab, targets[size_t(r)]);
  const double l2 = be.cross_entropy(inplace.data(), targets.data(), nullptr, rows, vocab, 1.0f,
                                     inplace.data(), nullptr);
  CHECK(std::abs(l2 - want_unweighted) < 1e-5 * (1 + want_unweighted));
  for (int64_t j = 0; j < vocab; ++j) CHECK(inplace[size_t(vocab + j)] == 0.0f);  // ignored row
  // Forward only.
  CHECK(be.cross_entropy(logits.data(), targets.data(), weights.data(), rows, vocab, 1.0f, nullptr,
                         nullptr) == Approx(loss).epsilon(1e-12));
  targets[2] = 13;
  CHECK_THROWS_AS(
      be.cross_entropy(logits.data(), targets.data(), nullptr, rows, vocab, 1.0f, nullptr, nullptr),
      Error);
}

TEST_CASE("elementwise ops: axpy, scale, fill", "[layers]") {
  Backend& be = cpu_backend();
  const int64_t n = 100000;  // large enough to run on the OpenMP team
  const VecF x = randn(size_t(n), 60), y0 = randn(size_t(n), 61);
  VecF y = y0;
  be.axpy(n, -0.5f, x.data(), y.data());
  for (size_t i = 0; i < size_t(n); i += 997) CHECK(y[i] == y0[i] + -0.5f * x[i]);
  be.scale(y.data(), n, 2.0f);
  for (size_t i = 0; i < size_t(n); i += 997) CHECK(y[i] == 2.0f * (y0[i] + -0.5f * x[i]));
  be.fill(y.data(), n, 3.0f);
  for (size_t i = 0; i < size_t(n); i += 997) CHECK(y[i] == 3.0f);
}

// ---- layers: gradient checks --------------------------------------------------------------------

TEST_CASE("Linear: forward, accumulation and finite-difference gradients", "[layers]") {
  Backend& be = cpu_backend();
  const Linear lin{12, 7};
  const int64_t n = 5;
  const VecF x = randn(size_t(n * lin.in), 70), w = randn(size_t(lin.out * lin.in), 71);
  const VecF r = randn(size_t(n * lin.out), 72);
  VecF y(r.size());
  lin.forward(be, w.data(), x.data(), n, y.data());
  Vec xd = to_d(x), wd = to_d(w);
  const Vec rd = to_d(r);
  auto ref = [&] { return ref_linear(xd.data(), n, lin.in, wd.data(), lin.out); };
  CHECK(max_err(y.data(), ref()) < kFwdTol);
  VecF y2 = y;
  lin.forward(be, w.data(), x.data(), n, y2.data(), true);
  CHECK(max_rel_diff(y2, [&] {
          VecF d = y;
          for (float& v : d) v *= 2;
          return d;
        }()) < 1e-6);
  VecF dx(x.size()), dw(w.size(), 0.0f);
  lin.backward(be, w.data(), x.data(), r.data(), n, dx.data(), dw.data());
  auto loss = [&] { return dot(ref(), rd); };
  CHECK(fd_error(xd, 0, xd.size(), dx.data(), loss) < kGradTol);
  CHECK(fd_error(wd, 0, wd.size(), dw.data(), loss) < kGradTol);
}

TEST_CASE("RmsNorm and Embedding layers: finite-difference gradients", "[layers]") {
  Backend& be = cpu_backend();
  const RmsNorm norm{10, 1e-5f};
  const int64_t n = 6;
  const VecF x = randn(size_t(n * norm.dim), 80, 1.5f), w = randn(size_t(norm.dim), 81, 0.2f, 1);
  const VecF r = randn(x.size(), 82);
  VecF y(x.size()), inv(static_cast<size_t>(n)), dx(x.size(), 0.0f), dw(w.size(), 0.0f);
  norm.forward(be, w.data(), x.data(), n, y.data(), inv.data());
  norm.backward(be, w.data(), x.data(), inv.data(), r.data(), n, dx.data(), dw.data());
  Vec xd = to_d(x), wd = to_d(w);
  const Vec rd = to_d(r);
  auto loss = [&] { return dot(ref_rmsnorm(xd.data(), wd.data(), n, norm.dim, 1e-5), rd); };
  CHECK(fd_error(xd, 0, xd.size(), dx.data(), loss) < kGradTol);
  CHECK(fd_error(wd, 0, wd.size(), dw.data(), loss) < kGradTol);

  const Embedding emb{7, 5};
  const std::vector<int32_t> tokens{6, 1, 1, 0, 6};
  const int64_t m = int64_t(tokens.size());
  const VecF table = randn(size_t(emb.vocab * emb.dim), 83), re = randn(size_t(m * emb.dim), 84);
  VecF out(re.size()), dtable(table.size(), 0.0f);
  emb.forward(be, table.data(), tokens.data(), m, out.data());
  emb.backward(be, tokens.data(), re.data(), m, dtable.data());
  Vec td = to_d(table);
  const Vec red = to_d(re);
  auto eloss = [&] {
    double s = 0;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t d = 0; d < emb.dim; ++d)
        s += td[size_t(tokens[size_t(i)] * emb.dim + d)] * red[size_t(i * emb.dim + d)];
    return s;
  };
  CHECK(fd_error(td, 0, td.size(), dtable.data(), eloss) < kGradTol);
}

TEST_CASE("FeedForward: forward, finite-difference gradients, any ffn_chunk", "[layers]") {
  Backend& be = cpu_backend();
  const int64_t hid = 12, I = 20, n = 13;
  const VecF x = randn(size_t(n * hid), 90);
  const VecF wg = randn(size_t(I * hid), 91, 0.3f), wu = randn(size_t(I * hid), 92, 0.3f),
             wdn = randn(size_t(hid * I), 93, 0.3f);
  const VecF r = randn(size_t(n * hid), 94);
  Vec xd = to_d(x), gd = to_d(wg), ud = to_d(wu), dd = to_d(wdn);
  const Vec rd = to_d(r);
  auto ref = [&] { return ref_ffn(xd.data(), n, hid, I, gd.data(), ud.data(), dd.data()); };

  struct Result {
    VecF y, dx, dg, du, dd;
  };
  auto run = [&](int64_t chunk) {
    const FeedForward ffn(be, hid, I, chunk);
    Result res{VecF(x.size()), VecF(x.size()), VecF(wg.size(), 0.0f), VecF(wu.size(), 0.0f),
               VecF(wdn.size(), 0.0f)};
    ffn.forward({wg.data(), wu.data(), wdn.data()}, x.data(), n, res.y.data());
    ffn.backward({wg.data(), wu.data(), wdn.data()}, x.data(), r.data(), n, res.dx.data(),
                 {res.dg.data(), res.du.data(), res.dd.data()});
    return res;
  };
  const Result whole = run(0);
  CHECK(max_err(whole.y.data(), ref()) < kFwdTol);
  auto loss = [&] { return dot(ref(), rd); };
  CHECK(fd_error(xd, 0, xd.size(), whole.dx.data(), loss) < kGradTol);
  CHECK(fd_error(gd, 0, gd.size(), whole.dg.data(), loss) < kGradTol);
  CHECK(fd_error(ud, 0, ud.size(), whole.du.data(), loss) < kGradTol);
  CHECK(fd_error(dd, 0, dd.size(), whole.dd.data(), loss) < kGradTol);
  // Chunked equals unchunked up to float32 summation order (weight gradients are summed over
  // chunks): 1e-6 of the largest entry. 4 and 5 do not divide 13; 20 exceeds it.
  for (int64_t chunk : {1, 4, 5, 13, 20}) {
    CAPTURE(chunk);
    const Result c = run(chunk);
    CHECK(max_rel_diff(c.y, whole.y) < 1e-6);
    CHECK(max_rel_diff(c.dx, whole.dx) < 1e-6);
    CHECK(max_rel_diff(c.dg, whole.dg) < 1e-6);
    CHECK(max_rel_diff(c.du, whole.du) < 1e-6);
    CHECK(max_rel_diff(c.dd, whole.dd) < 1e-6);
  }
}

TEST_CASE("AttentionBlock: forward and finite-difference gradients (GQA, RoPE, documents)",
          "[layers]") {
  Backend& be = cpu_backend();
  const ModelDims d = small_dims();
  const ParamLayout layout = decoder_layout(d, 0);
  const DecoderOffsets off(layout);
  for (bool segments : {false, true}) {
    CAPTURE(segments);
    const Shard sh = small_shard(segments);
    const ShardTokens t = sh.tokens();
    const int64_t n = sh.B * sh.S;
    const VecF p = random_params(layout, 100);
    const VecF x = randn(size_t(n * d.hidden), 101), r = randn(size_t(n * d.hidden), 102);
    Attention att(blockwise_options(), be);
    AttentionBlock block(d, be, att);
    VecF g(p.size(), 0.0f);
    const float* pp = p.data();
    const AttentionBlock::Weights w{pp + off.input_norm, pp + off.q, pp + off.k, pp + off.v,
                                    pp + off.o};
    const AttentionBlock::Grads gr{g.data() + off.input_norm, g.data() + off.q, g.data() + off.k,
                                   g.data() + off.v, g.data() + off.o};
    AttentionBlockCache cache;
    const Tensor X = tensor_of(x, {sh.B, sh.S, d.hidden});
    const Tensor out = block.forward(w, X, t, cache);
    Vec pd = to_d(p), xd = to_d(x);
    const Vec rd = to_d(r);
    auto ref = [&] { return ref_attention_block(xd.data(), pd.data(), off, d, sh); };
    CHECK(max_err(out.data<float>(), ref()) < kFwdTol);
    Tensor grad = tensor_of(r, {sh.B, sh.S, d.hidden});
    block.backward(w, gr, X, cache, grad);
    auto loss = [&] { return dot(ref(), rd); };
    CHECK(fd_error(xd, 0, xd.size(), grad.data<float>(), loss) < kGradTol);
    for (const char* name : {"input_layernorm", "q_proj", "k_proj", "v_proj", "o_proj"}) {
      const ParamEntry& e = layout.find(std::string("model.layers.0.") +
                                        (std::string(name) == "input_layernorm"
                                             ? "input_layernorm.weight"
                                             : "self_attn." + std::string(name) + ".weight"));
      CAPTURE(e.name);
      CHECK(fd_error(pd, size_t(e.offset), size_t(e.numel()), g.data() + e.offset, loss) <
            kGradTol);
    }
  }
}

TEST_CASE("DecoderLayer: forward and finite-difference gradients of every tensor", "[layers]") {
  Backend& be = cpu_backend();
  const ModelDims d = small_dims();
  const Shard sh = small_shard(true);
  const ShardTokens t = sh.tokens();
  const int64_t n = sh.B * sh.S;
  Attention att(blockwise_options(), be);
  DecoderLayer layer(d, 3, be, att, {5, Checkpointing::None});
  const ParamLayout& layout = layer.layout();
  REQUIRE(layout.entries().front().name == "model.layers.3.input_layernorm.weight");
  const DecoderOffsets off(layout);
  const VecF p = random_params(layout, 110);
  const VecF x = randn(size_t(n * d.hidden), 111), r = randn(size_t(n * d.hidden), 112);
  const Tensor X = tensor_of(x, {sh.B, sh.S, d.hidden});
  DecoderCache cache;
  const Tensor out = layer.forward(p.data(), X, t, cache);
  Vec pd = to_d(p), xd = to_d(x);
  const Vec rd = to_d(r);
  auto ref = [&] { return ref_decoder(xd.data(), pd.data(), off, d, sh); };
  CHECK(max_err(out.data<float>(), ref()) < kFwdTol);
  VecF g(p.size(), 0.0f);
  Tensor grad = tensor_of(r, {sh.B, sh.S, d.hidden});
  layer.backward(p.data(), g.data(), X, t, cache, grad);
  CHECK_FALSE(cache.filled);
  auto loss = [&] { return dot(ref(), rd); };
  CHECK(fd_error(xd, 0, xd.size(), grad.data<float>(), loss) < kGradTol);
  for (const ParamEntry& e : layout.entries()) {
    CAPTURE(e.name);
    CHECK(fd_error(pd, size_t(e.offset), size_t(e.numel()), g.data() + e.offset, loss, 24) <
          kGradTol);
  }
}

TEST_CASE("DecoderLayer: checkpointing none and layer give bitwise equal results", "[layers]") {
  Backend& be = cpu_backend();
  ModelDims d = small_dims();
  d.layers = 2;
  const Shard sh = small_shard(false);
  const ShardTokens t = sh.tokens();
  const int64_t n = sh.B * sh.S;
  const VecF x = randn(size_t(n * d.hidden), 121), r = randn(size_t(n * d.hidden), 122);
  struct Run {
    VecF out, dx, g0, g1;
  };
  // Two stacked layers, as a model runs them: the caller keeps each layer's input.
  auto run = [&](Checkpointing ck) {
    Attention att(blockwise_options(), be);
    DecoderLayer l0(d, 0, be, att, {5, ck}), l1(d, 1, be, att, {5, ck});
    const VecF p0 = random_params(l0.layout(), 123), p1 = random_params(l1.layout(), 124);
    Run res{{}, {}, VecF(p0.size(), 0.0f), VecF(p1.size(), 0.0f)};
    DecoderCache c0, c1;
    const Tensor X = tensor_of(x, {sh.B, sh.S, d.hidden});
    const Tensor h = l0.forward(p0.data(), X, t, c0);
    const Tensor out = l1.forward(p1.data(), h, t, c1);
    CHECK(c0.filled == (ck == Checkpointing::None));
    res.out = vec_of(out);
    Tensor grad = tensor_of(r, {sh.B, sh.S, d.hidden});
    l1.backward(p1.data(), res.g1.data(), h, t, c1, grad);
    l0.backward(p0.data(), res.g0.data(), X, t, c0, grad);
    res.dx = vec_of(grad);
    return res;
  };
  const Run none = run(Checkpointing::None), layer = run(Checkpointing::Layer);
  auto same = [](const VecF& a, const VecF& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  CHECK(same(none.out, layer.out));
  CHECK(same(none.dx, layer.dx));
  CHECK(same(none.g0, layer.g0));
  CHECK(same(none.g1, layer.g1));
}

TEST_CASE("LmHead: loss, finite-difference gradients, any loss_chunk", "[layers]") {
  Backend& be = cpu_backend();
  ModelDims d = small_dims();
  d.vocab = 17;
  const int64_t n = 13, hid = d.hidden, V = d.vocab;
  const VecF x = randn(size_t(n * hid), 130);
  const VecF norm = randn(size_t(hid), 131, 0.1f, 1.0f), w = randn(size_t(V * hid), 132, 0.5f);
  std::vector<int32_t> targets(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) targets[size_t(i)] = int32_t((i * 5 + 3) % V);
  targets[2] = targets[9] = -1;
  const VecF weights = randn(size_t(n), 133, 0.3f, 1.0f);
  const float scale = 0.125f;

  struct Result {
    LossStats st;
    VecF dx, dnorm, dw;
    std::vector<uint8_t> ok;
  };
  auto run = [&](int64_t chunk) {
    LmHead head(d, be, chunk);
    Result res{{},
               VecF(x.size()),
               VecF(norm.size(), 0.0f),
               VecF(w.size(), 0.0f),
               std::vector<uint8_t>(size_t(n))};
    res.st = head.forward_backward({norm.data(), w.data()}, {res.dnorm.data(), res.dw.data()},
                                   x.data(), targets.data(), weights.data(), n, scale,
                                   res.dx.data(), res.ok.data());
    const LossStats fwd =
        head.forward({norm.data(), w.data()}, x.data(), targets.data(), weights.data(), n);
    CHECK(fwd.loss_sum == res.st.loss_sum);
    CHECK(fwd.correct == res.st.correct);
    return res;
  };
  const Result whole = run(0);
  Vec xd = to_d(x), nd = to_d(norm), wd = to_d(w);
  auto loss = [&] {
    return scale *
           ref_head_loss(xd.data(), nd.data(), wd.data(), targets, weights, n, hid, V, d.norm_eps);
  };
  CHECK(std::abs(scale * whole.st.loss_sum - loss()) < 1e-5 * (1 + std::abs(loss())));
  int64_t ok = 0;
  for (uint8_t v : whole.ok) ok += v;
  CHECK(ok == whole.st.correct);
  CHECK(whole.ok[2] == 0);
  CHECK(fd_error(xd, 0, xd.size(), whole.dx.data(), loss) < kGradTol);
  CHECK(fd_error(nd, 0, nd.size(), whole.dnorm.data(), loss) < kGradTol);
  CHECK(fd_error(wd, 0, wd.size(), whole.dw.data(), loss) < kGradTol);
  for (int64_t chunk : {1, 3, 4, 13, 100}) {
    CAPTURE(chunk);
    const Result c = run(chunk);
    CHECK(c.st.loss_sum == Approx(whole.st.loss_sum).epsilon(1e-6));
    CHECK(c.st.correct == whole.st.correct);
    CHECK(c.ok == whole.ok);
    CHECK(max_rel_diff(c.dx, whole.dx) < 1e-6);
    CHECK(max_rel_diff(c.dnorm, whole.dnorm) < 1e-6);
    CHECK(max_rel_diff(c.dw, whole.dw) < 1e-6);
  }
}

TEST_CASE("Tied embedding and head: both gradients land in the embedding", "[layers]") {
  Backend& be = cpu_backend();
  ModelDims d = small_dims();
  d.tie_embeddings = true;
  REQUIRE_FALSE(head_layout(d).contains("lm_head.weight"));
  REQUIRE(head_layout(d).contains("model.norm.weight"));
  const int64_t n = 9, hid = d.hidden, V = d.vocab;
  const std::vector<int32_t> tokens{1, 4, 4, 9, 0, 2, 10, 3, 4};
  std::vector<int32_t> targets(tokens.begin() + 1, tokens.end());
  targets.push_back(-1);
  const VecF table = randn(size_t(V * hid), 140, 0.5f), norm = randn(size_t(hid), 141, 0.1f, 1);
  const Embedding emb{V, hid};
  LmHead head(d, be, 4);
  VecF x(static_cast<size_t>(n * hid)), dx(x.size()), dtable(table.size(), 0.0f),
      dnorm(norm.size(), 0.0f);
  emb.forward(be, table.data(), tokens.data(), n, x.data());
  head.forward_backward({norm.data(), table.data()}, {dnorm.data(), dtable.data()}, x.data(),
                        targets.data(), nullptr, n, 1.0f, dx.data());
  emb.backward(be, tokens.data(), dx.data(), n, dtable.data());
  Vec td = to_d(table), nd = to_d(norm);
  auto loss = [&] {
    Vec xs(static_cast<size_t>(n * hid));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < hid; ++k)
        xs[size_t(i * hid + k)] = td[size_t(tokens[size_t(i)] * hid + k)];
    return ref_head_loss(xs.data(), nd.data(), td.data(), targets, {}, n, hid, V, d.norm_eps);
  };
  CHECK(fd_error(td, 0, td.size(), dtable.data(), loss) < kGradTol);
  CHECK(fd_error(nd, 0, nd.size(), dnorm.data(), loss) < kGradTol);
}

TEST_CASE("Parameter layouts: Hugging Face names, shapes and offsets", "[layers]") {
  ModelDims d = small_dims();
  d.layers = 2;
  d.validate();
  const ParamLayout l = decoder_layout(d, 1);
  const char* names[] = {
      "input_layernorm.weight",  "self_attn.q_proj.weight", "self_attn.k_proj.weight",
      "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
      "mlp.gate_proj.weight",    "mlp.up_proj.weight",      "mlp.down_proj.weight"};
  const Shape shapes[] = {{16}, {16, 16}, {8, 16},  {8, 16}, {16, 16},
                          {16}, {24, 16}, {24, 16}, {16, 24}};
  REQUIRE(l.entries().size() == 9);
  int64_t off = 0;
  for (size_t i = 0; i < 9; ++i) {
    const ParamEntry& e = l.entries()[i];
    CHECK(e.name == std::string("model.layers.1.") + names[i]);
    CHECK(e.shape == shapes[i]);
    CHECK(e.offset == off);
    off += e.numel();
  }
  CHECK(l.numel() == off);
  CHECK(embedding_layout(d).find("model.embed_tokens.weight").shape == Shape{11, 16});
  CHECK(head_layout(d).find("lm_head.weight").shape == Shape{11, 16});
  CHECK_THROWS_AS(l.find("model.layers.1.mlp.gate.weight"), Error);
  CHECK(d.parameter_count() == 2 * off + 2 * 11 * 16 + 16);
  d.tie_embeddings = true;
  CHECK(d.parameter_count() == 2 * off + 11 * 16 + 16);
  // Initialisation: norms 1, the rest N(0, 0.02), deterministic.
  VecF a(size_t(l.numel())), b(size_t(l.numel()));
  init_parameters(l, a.data(), 7);
  init_parameters(l, b.data(), 7);
  CHECK(a == b);
  CHECK(a[0] == 1.0f);
  CHECK(std::abs(a[size_t(l.find("model.layers.1.self_attn.q_proj.weight").offset)]) < 0.2f);
  d.head_dim = 3;
  CHECK_THROWS_AS(d.validate(), Error);
  // From the trainer's config: kv_heads and head_dim defaults resolved.
  ModelConfig mc;
  mc.vocab_size = 50;
  mc.hidden_size = 32;
  mc.num_heads = 4;
  mc.num_layers = 3;
  mc.intermediate_size = 40;
  const ModelDims fc = ModelDims::from_config(mc);
  CHECK(fc.kv_heads == 4);
  CHECK(fc.head_dim == 8);
  CHECK(fc.layers == 3);
  CHECK(fc.vocab == 50);
}

TEST_CASE("ops: the OpenMP paths agree with one thread", "[layers]") {
  Backend& be = cpu_backend();
  // Sizes above the ops' parallel threshold (32768 elements), run on 1 and on 3 threads.
  const int64_t rows = 64, dim = 640, vocab = 600, B = 2, S = 64, H = 4, D = 64;
  const VecF x = randn(size_t(rows * dim), 150), w = randn(size_t(dim), 151, 0.1f, 1.0f);
  const VecF dy = randn(x.size(), 152), logits = randn(size_t(rows * vocab), 153);
  const VecF q = randn(size_t(B * S * H * D), 154);
  std::vector<int32_t> tokens(static_cast<size_t>(rows)), targets(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) {
    tokens[size_t(i)] = int32_t(i % 7);
    targets[size_t(i)] = i % 5 == 0 ? -1 : int32_t((i * 31) % vocab);
  }
  std::vector<int64_t> pos(static_cast<size_t>(S));
  for (int64_t i = 0; i < S; ++i) pos[size_t(i)] = 3 * i + 1;
  struct Out {
    VecF y, inv, dx, dw, rq, sw, dl, demb;
    double loss = 0;
  };
  auto run = [&](int threads) {
    const int saved = cpu_threads();
    set_cpu_threads(threads);
    Out o{VecF(x.size()),
          VecF(static_cast<size_t>(rows)),
          VecF(x.size(), 0.0f),
          VecF(w.size(), 0.0f),
          q,
          VecF(x.size()),
          VecF(logits.size()),
          VecF(size_t(7 * dim), 0.0f)};
    be.rmsnorm_forward(x.data(), w.data(), rows, dim, 1e-5f, o.y.data(), o.inv.data());
    be.rmsnorm_backward(x.data(), w.data(), o.inv.data(), dy.data(), rows, dim, o.dx.data(),
                        o.dw.data());
    be.rope_forward(o.rq.data(), B, S, int(H), int(D), pos.data(), 10000.0f);
    be.swiglu_forward(x.data(), dy.data(), rows * dim, o.sw.data());
    o.loss = be.cross_entropy(logits.data(), targets.data(), nullptr, rows, vocab, 1.0f,
                              o.dl.data(), nullptr);
    be.embedding_backward(tokens.data(), rows, dy.data(), 7, dim, o.demb.data());
    set_cpu_threads(saved);
    return o;
  };
  const Out one = run(1), many = run(3);
  CHECK(one.y == many.y);
  CHECK(one.inv == many.inv);
  CHECK(one.dx == many.dx);
  CHECK(max_rel_diff(many.dw, one.dw) < 1e-6);  // partial sums per thread: another order
  CHECK(one.rq == many.rq);
  CHECK(one.sw == many.sw);
  CHECK(one.dl == many.dl);
  CHECK(one.loss == many.loss);
  CHECK(one.demb == many.demb);
}

TEST_CASE("DecoderLayer: ring attention over the ranks equals the whole sequence on one rank",
          "[layers]") {
  Backend& be = cpu_backend();
  Mesh mesh(MeshShape{1, 1, -1, 1});
  Communicator& sp = mesh.axis(Axis::SP);
  const int ranks = sp.size();
  const ModelDims d = small_dims();
  const int64_t B = 2, S = 32, hid = d.hidden;
  const VecF p = random_params(decoder_layout(d, 0), 160);
  const VecF x = randn(size_t(B * S * hid), 161), r = randn(size_t(B * S * hid), 162);
  const Tensor X = tensor_of(x, {B, S, hid}), R = tensor_of(r, {B, S, hid});

  // The whole sequence, blockwise, on this rank alone.
  Attention whole_att(blockwise_options(), be);
  DecoderLayer whole(d, 0, be, whole_att, {7, Checkpointing::None});
  ShardTokens wt{B, S, {}, {}, nullptr};
  for (int64_t i = 0; i < S; ++i) wt.positions.push_back(i);
  DecoderCache wc;
  const Tensor wout = whole.forward(p.data(), X, wt, wc);
  Tensor wdx = R.clone();
  VecF wg(p.size(), 0.0f);
  whole.backward(p.data(), wg.data(), X, wt, wc, wdx);

  // This rank's zigzag shard with ring attention: RoPE and the mask see global positions, and the
  // parameter gradients summed over the ranks are the whole sequence's.
  std::vector<VecF> shard_dx, shard_g;
  for (Checkpointing ck : {Checkpointing::None, Checkpointing::Layer}) {
    CAPTURE(ranks, checkpointing_name(ck));
    AttentionOptions opt = blockwise_options();
    opt.impl = AttentionImpl::Ring;
    opt.layout = RingLayout::Zigzag;
    Attention ring(opt, be, &sp);
    DecoderLayer layer(d, 0, be, ring, {7, ck});
    const std::vector<int64_t> pos = layout_positions(RingLayout::Zigzag, S, ranks, sp.rank());
    const ShardTokens t{B, S / ranks, pos, {}, nullptr};
    const Tensor xs = take_positions(X, 1, pos);
    DecoderCache cache;
    const Tensor out = layer.forward(p.data(), xs, t, cache);
    Tensor dx = take_positions(R, 1, pos);
    VecF g(p.size(), 0.0f);
    layer.backward(p.data(), g.data(), xs, t, cache, dx);
    shard_dx.push_back(vec_of(dx));
    shard_g.push_back(g);
    sp.all_reduce(g.data(), g.size(), DType::F32, ReduceOp::Sum);
    CHECK(max_rel_diff(vec_of(gather_sequence(sp, out, 1, pos, S)), vec_of(wout)) < 1e-5);
    CHECK(max_rel_diff(vec_of(gather_sequence(sp, dx, 1, pos, S)), vec_of(wdx)) < 1e-5);
    CHECK(max_rel_diff(g, wg) < 1e-5);
  }
  CHECK(shard_dx[0] == shard_dx[1]);  // checkpointing stays bitwise under ring attention too
  CHECK(shard_g[0] == shard_g[1]);
}
