#include "model/layers/layers.h"

#include <algorithm>
#include <climits>

#include "core/error.h"

namespace ringattn {

namespace {

Tensor activation(Backend& be, const Shape& shape, std::string_view what) {
  return Tensor::empty(shape, DType::F32, be.device(), what);
}

// A bfloat16 copy of n floats on the backend's device: a GEMM operand of a bf16 Linear.
Tensor bf16_operand(Backend& be, const float* src, int64_t n, std::string_view what) {
  Tensor t = Tensor::empty({n}, DType::BF16, be.device(), what);
  if (n > 0) be.to_bf16(src, t.data<uint16_t>(), n);
  return t;
}

// A bf16 GEMM operand: as given, or a rounded copy held in `keep`.
const uint16_t* as_bf16(Backend& be, F32OrBf16 v, int64_t n, Tensor& keep, std::string_view what) {
  if (v.bf16) return v.bf16;
  keep = bf16_operand(be, v.f32, n, what);
  return keep.data<uint16_t>();
}

// An activation that only feeds GEMMs, as kept between forward and backward: under mixed
// precision rounded to bf16 (the float32 one is then dropped), else the float32 one itself.
Tensor kept_for_gemms(Backend& be, Tensor t, bool bf16, std::string_view what) {
  if (!bf16) return t;
  Tensor b = Tensor::empty(t.shape(), DType::BF16, be.device(), what);
  if (t.numel() > 0) be.to_bf16(t.data<float>(), b.data<uint16_t>(), t.numel());
  return b;
}

void check_gemm_size(int64_t a, int64_t b, int64_t c, const char* what) {
  RA_CHECK(a <= INT_MAX && b <= INT_MAX && c <= INT_MAX,
           "{}: sizes {} x {} x {} exceed the BLAS int range", what, a, b, c);
}

void check_rows(const Tensor& x, int64_t rows, int64_t hidden, const char* what) {
  RA_CHECK(
      x.defined() && x.dtype() == DType::F32 && x.is_contiguous() && x.numel() == rows * hidden,
      "{}: expected contiguous F32 activations of {} x {} floats, got {}", what, rows, hidden,
      x.defined() ? x.str() : "undefined");
}

}  // namespace

const float* as_f32(Backend& be, F32OrBf16 v, int64_t n, Tensor& keep, std::string_view what) {
  if (!v.bf16) return v.f32;
  keep = Tensor::empty({n}, DType::F32, be.device(), what);
  if (n > 0) be.from_bf16(v.bf16, keep.data<float>(), n);
  return keep.data<float>();
}

// ---- Linear, RmsNorm, Embedding -----------------------------------------------------------------

F32OrBf16 F32OrBf16::of(const Tensor& t) {
  if (!t.defined()) return {};
  if (t.dtype() == DType::BF16) return t.data<uint16_t>();
  return t.data<float>();
}

void Linear::forward(Backend& be, F32OrBf16 w, F32OrBf16 x, int64_t n, float* y,
                     bool accumulate) const {
  check_gemm_size(n, out, in, "linear");
  RA_CHECK(bf16 || (!x.bf16 && !w.bf16),
           "linear: bf16 operands need a bf16 (mixed-precision) Linear");
  if (bf16) {
    Tensor xkeep, wkeep;
    const uint16_t* xb = as_bf16(be, x, n * in, xkeep, "linear input (bf16)");
    const uint16_t* wb = as_bf16(be, w, out * in, wkeep, "linear weight (bf16)");
    be.gemm_bf16(false, true, int(n), int(out), int(in), 1.0f, xb, int(in), wb, int(in),
                 accumulate ? 1.0f : 0.0f, y, int(out));
    return;
  }
  be.gemm(false, true, int(n), int(out), int(in), 1.0f, x.f32, int(in), w.f32, int(in),
          accumulate ? 1.0f : 0.0f, y, int(out));
}

void Linear::backward(Backend& be, F32OrBf16 w, F32OrBf16 x, const float* dy, int64_t n, float* dx,
                      float* dw, bool accumulate_dx) const {
  check_gemm_size(n, out, in, "linear backward");
  RA_CHECK(bf16 || (!x.bf16 && !w.bf16),
           "linear: bf16 operands need a bf16 (mixed-precision) Linear");
  if (bf16) {
    const Tensor dyb = bf16_operand(be, dy, n * out, "linear output gradient (bf16)");
    if (dw && n > 0) {
      Tensor xkeep;
      const uint16_t* xb = as_bf16(be, x, n * in, xkeep, "linear input (bf16)");
      be.gemm_bf16(true, false, int(out), int(in), int(n), 1.0f, dyb.data<uint16_t>(), int(out), xb,
                   int(in), 1.0f, dw, int(in));
    }
    if (dx) {  // dw has used x (or its bf16 copy) already, so dx may be x itself here too
      Tensor wkeep;
      const uint16_t* wb = as_bf16(be, w, out * in, wkeep, "linear weight (bf16)");
      be.gemm_bf16(false, false, int(n), int(in), int(out), 1.0f, dyb.data<uint16_t>(), int(out),
                   wb, int(in), accumulate_dx ? 1.0f : 0.0f, dx, int(in));
    }
    return;
  }
  // dw first: x is then no longer needed, so dx may overwrite it (the FFN's h becomes dh).
  if (dw && n > 0)
    be.gemm(true, false, int(out), int(in), int(n), 1.0f, dy, int(out), x.f32, int(in), 1.0f, dw,
            int(in));
  if (dx)
    be.gemm(false, false, int(n), int(in), int(out), 1.0f, dy, int(out), w.f32, int(in),
            accumulate_dx ? 1.0f : 0.0f, dx, int(in));
}

void RmsNorm::forward(Backend& be, const float* w, const float* x, int64_t n, float* y,
                      float* inv_rms) const {
  be.rmsnorm_forward(x, w, n, dim, eps, y, inv_rms);
}

void RmsNorm::backward(Backend& be, const float* w, const float* x, const float* inv_rms,
                       const float* dy, int64_t n, float* dx, float* dw) const {
  be.rmsnorm_backward(x, w, inv_rms, dy, n, dim, dx, dw);
}

void Embedding::forward(Backend& be, F32OrBf16 table, const int32_t* tokens, int64_t n,
                        float* out) const {
  if (table.bf16)
    be.embedding_forward_bf16(tokens, n, table.bf16, vocab, dim, out);
  else
    be.embedding_forward(tokens, n, table.f32, vocab, dim, out);
}

void Embedding::backward(Backend& be, const int32_t* tokens, const float* dout, int64_t n,
                         float* dtable) const {
  be.embedding_backward(tokens, n, dout, vocab, dim, dtable);
}

// ---- FeedForward --------------------------------------------------------------------------------

FeedForward::FeedForward(Backend& be, int64_t hidden, int64_t intermediate, int64_t ffn_chunk,
                         bool bf16)
    : be_(be), hidden_(hidden), intermediate_(intermediate), ffn_chunk_(ffn_chunk), bf16_(bf16) {}

void FeedForward::forward(const Weights& w, F32OrBf16 x, int64_t n, float* y) const {
  if (n == 0) return;
  const int64_t c = chunk_rows(n), I = intermediate_, Hd = hidden_;
  const Linear gate{Hd, I, bf16_}, up{Hd, I, bf16_}, down{I, Hd, bf16_};
  Tensor g = activation(be_, {c, I}, "ffn gate chunk");
  Tensor u = activation(be_, {c, I}, "ffn up chunk");
  float* gp = g.data<float>();
  float* up_ = u.data<float>();
  for (int64_t r0 = 0; r0 < n; r0 += c) {
    const int64_t rows = std::min(c, n - r0);
    const F32OrBf16 xc = x.offset(r0 * Hd);
    gate.forward(be_, w.gate, xc, rows, gp);
    up.forward(be_, w.up, xc, rows, up_);
    be_.swiglu_forward(gp, up_, rows * I, gp);  // h = silu(g) * u, over g
    down.forward(be_, w.down, gp, rows, y + r0 * Hd);
  }
}

void FeedForward::backward(const Weights& w, F32OrBf16 x, const float* dy, int64_t n, float* dx,
                           const Grads& gr) const {
  if (n == 0) return;
  const int64_t c = chunk_rows(n), I = intermediate_, Hd = hidden_;
  const Linear gate{Hd, I, bf16_}, up{Hd, I, bf16_}, down{I, Hd, bf16_};
  Tensor g = activation(be_, {c, I}, "ffn gate chunk");
  Tensor u = activation(be_, {c, I}, "ffn up chunk");
  Tensor h = activation(be_, {c, I}, "ffn hidden chunk");
  float* gp = g.data<float>();
  float* up_ = u.data<float>();
  float* hp = h.data<float>();
  for (int64_t r0 = 0; r0 < n; r0 += c) {
    const int64_t rows = std::min(c, n - r0);
    const F32OrBf16 xc = x.offset(r0 * Hd);
    const float* dyc = dy + r0 * Hd;
    // Recompute this chunk's gate, up and h (see the memory note in the header).
    gate.forward(be_, w.gate, xc, rows, gp);
    up.forward(be_, w.up, xc, rows, up_);
    be_.swiglu_forward(gp, up_, rows * I, hp);
    // dWdown += dy^T h, then dh = dy Wdown over h (h is no longer needed).
    down.backward(be_, w.down, hp, dyc, rows, hp, gr.down);
    be_.swiglu_backward(gp, up_, hp, rows * I, gp, up_);  // dgate over g, dup over u
    gate.backward(be_, w.gate, xc, gp, rows, dx + r0 * Hd, gr.gate, false);
    up.backward(be_, w.up, xc, up_, rows, dx + r0 * Hd, gr.up, true);
  }
}

// ---- AttentionBlock -----------------------------------------------------------------------------

AttentionBlock::AttentionBlock(const ModelDims& d, Backend& be, Attention& attention)
    : d_(d),
      be_(be),
      attention_(attention),
      norm_{d.hidden, d.norm_eps},
      q_{d.hidden, int64_t(d.heads) * d.head_dim, d.matmul == DType::BF16},
      k_{d.hidden, int64_t(d.kv_heads) * d.head_dim, d.matmul == DType::BF16},
      v_{d.hidden, int64_t(d.kv_heads) * d.head_dim, d.matmul == DType::BF16},
      o_{int64_t(d.heads) * d.head_dim, d.hidden, d.matmul == DType::BF16} {}

Tensor AttentionBlock::forward(const Weights& w, const Tensor& x, const ShardTokens& t,
                               AttentionBlockCache& c) {
  const int64_t B = t.batch, S = t.seq, n = t.rows(), Hd = d_.hidden;
  check_rows(x, n, Hd, "attention block");
  RA_CHECK(int64_t(t.positions.size()) == S, "attention block: {} positions for {} tokens",
           t.positions.size(), S);
  const bool bf16 = d_.matmul == DType::BF16;
  c.inv_rms = activation(be_, {n}, "attention norm inv_rms");
  Tensor xn = activation(be_, {B, S, Hd}, "attention norm output");
  norm_.forward(be_, w.norm, x.data<float>(), n, xn.data<float>(), c.inv_rms.data<float>());
  c.xn = kept_for_gemms(be_, std::move(xn), bf16, "attention norm output (bf16)");
  Tensor q = activation(be_, {B, S, d_.heads, d_.head_dim}, "q");
  Tensor k = activation(be_, {B, S, d_.kv_heads, d_.head_dim}, "k");
  Tensor v = activation(be_, {B, S, d_.kv_heads, d_.head_dim}, "v");
  const F32OrBf16 xin = F32OrBf16::of(c.xn);
  q_.forward(be_, w.q, xin, n, q.data<float>());
  k_.forward(be_, w.k, xin, n, k.data<float>());
  v_.forward(be_, w.v, xin, n, v.data<float>());
  be_.rope_forward(q.data<float>(), B, S, d_.heads, d_.head_dim, t.positions.data(), d_.rope_theta);
  be_.rope_forward(k.data<float>(), B, S, d_.kv_heads, d_.head_dim, t.positions.data(),
                   d_.rope_theta);
  c.in.q = kept_for_gemms(be_, std::move(q), bf16, "q (bf16)");
  c.in.k = kept_for_gemms(be_, std::move(k), bf16, "k (bf16)");
  c.in.v = kept_for_gemms(be_, std::move(v), bf16, "v (bf16)");
  c.in.positions = t.positions;
  c.in.segment_ids = t.segment_ids;
  c.in.ring_tokens = t.ring_tokens;
  c.out = attention_.forward(c.in);
  Tensor out = activation(be_, {B, S, Hd}, "attention block output");
  o_.forward(be_, w.o, c.out.o.data<float>(), n, out.data<float>());
  be_.axpy(n * Hd, 1.0f, x.data<float>(), out.data<float>());  // residual
  return out;
}

void AttentionBlock::backward(const Weights& w, const Grads& g, const Tensor& x,
                              AttentionBlockCache& c, Tensor& grad) {
  const int64_t B = c.in.q.dim(0), S = c.in.q.dim(1), n = B * S, Hd = d_.hidden;
  check_rows(grad, n, Hd, "attention block backward");
  // The residual passes grad through unchanged; the branch's contributions are added below.
  Tensor dout = activation(be_, {B, S, d_.heads, d_.head_dim}, "attention output grad");
  o_.backward(be_, w.o, c.out.o.data<float>(), grad.data<float>(), n, dout.data<float>(), g.o);
  AttentionGrads ag = attention_.backward(c.in, c.out, dout);
  dout = Tensor();
  c.out = AttentionOutput();
  be_.rope_backward(ag.dq.data<float>(), B, S, d_.heads, d_.head_dim, c.in.positions.data(),
                    d_.rope_theta);
  be_.rope_backward(ag.dk.data<float>(), B, S, d_.kv_heads, d_.head_dim, c.in.positions.data(),
                    d_.rope_theta);
  Tensor dxn = activation(be_, {B, S, Hd}, "attention norm output grad");
  const F32OrBf16 xn = F32OrBf16::of(c.xn);
  q_.backward(be_, w.q, xn, ag.dq.data<float>(), n, dxn.data<float>(), g.q, false);
  k_.backward(be_, w.k, xn, ag.dk.data<float>(), n, dxn.data<float>(), g.k, true);
  v_.backward(be_, w.v, xn, ag.dv.data<float>(), n, dxn.data<float>(), g.v, true);
  norm_.backward(be_, w.norm, x.data<float>(), c.inv_rms.data<float>(), dxn.data<float>(), n,
                 grad.data<float>(), g.norm);
  c = AttentionBlockCache();
}

// ---- DecoderLayer -------------------------------------------------------------------------------

DecoderLayer::DecoderLayer(const ModelDims& d, int index, Backend& be, Attention& attention,
                           DecoderOptions options)
    : d_(d),
      be_(be),
      opt_(options),
      layout_(decoder_layout(d, index)),
      off_(layout_),
      attn_(d, be, attention),
      norm_{d.hidden, d.norm_eps},
      ffn_(be, d.hidden, d.intermediate, options.ffn_chunk, d.matmul == DType::BF16) {
  d.validate();
}

AttentionBlock::Weights DecoderLayer::attention_weights(F32OrBf16 p, Tensor& norm_keep) const {
  return {as_f32(be_, p.offset(off_.input_norm), d_.hidden, norm_keep, "input norm weight (f32)"),
          p.offset(off_.q), p.offset(off_.k), p.offset(off_.v), p.offset(off_.o)};
}

Tensor DecoderLayer::run_forward(F32OrBf16 p, const Tensor& x, const ShardTokens& t,
                                 DecoderCache& c, bool output) {
  const int64_t n = t.rows(), Hd = d_.hidden;
  {
    Tensor norm_keep;
    c.h1 = attn_.forward(attention_weights(p, norm_keep), x, t, c.attn);
  }
  c.inv_rms = activation(be_, {n}, "ffn norm inv_rms");
  Tensor xn = activation(be_, {t.batch, t.seq, Hd}, "ffn norm output");
  {
    Tensor norm_keep;
    const float* nw = as_f32(be_, p.offset(off_.post_norm), Hd, norm_keep, "ffn norm weight (f32)");
    norm_.forward(be_, nw, c.h1.data<float>(), n, xn.data<float>(), c.inv_rms.data<float>());
  }
  c.xn = kept_for_gemms(be_, std::move(xn), d_.matmul == DType::BF16, "ffn norm output (bf16)");
  c.filled = true;
  if (!output) return Tensor();
  Tensor out = activation(be_, {t.batch, t.seq, Hd}, "decoder output");
  ffn_.forward({p.offset(off_.gate), p.offset(off_.up), p.offset(off_.down)}, F32OrBf16::of(c.xn),
               n, out.data<float>());
  be_.axpy(n * Hd, 1.0f, c.h1.data<float>(), out.data<float>());  // residual
  return out;
}

Tensor DecoderLayer::forward(F32OrBf16 params, const Tensor& x, const ShardTokens& t,
                             DecoderCache& cache) {
  Tensor out = run_forward(params, x, t, cache, true);
  if (opt_.checkpointing == Checkpointing::Layer) cache = DecoderCache();
  return out;
}

void DecoderLayer::backward(F32OrBf16 p, float* grads, const Tensor& x, const ShardTokens& t,
                            DecoderCache& cache, Tensor& grad) {
  // Under layer checkpointing the cache is empty: the same forward runs again to refill it, up to
  // the FFN's input (the FFN's output is not needed, and its backward recomputes its own
  // intermediates anyway). Same operations on the same inputs: the same bits as a kept cache.
  if (!cache.filled) run_forward(p, x, t, cache, false);
  const int64_t n = t.rows(), Hd = d_.hidden;
  check_rows(grad, n, Hd, "decoder backward");
  float* g = grads;
  Tensor dxn = activation(be_, {t.batch, t.seq, Hd}, "ffn input grad");
  ffn_.backward({p.offset(off_.gate), p.offset(off_.up), p.offset(off_.down)},
                F32OrBf16::of(cache.xn), grad.data<float>(), n, dxn.data<float>(),
                {g + off_.gate, g + off_.up, g + off_.down});
  {
    Tensor norm_keep;
    const float* nw = as_f32(be_, p.offset(off_.post_norm), Hd, norm_keep, "ffn norm weight (f32)");
    norm_.backward(be_, nw, cache.h1.data<float>(), cache.inv_rms.data<float>(), dxn.data<float>(),
                   n, grad.data<float>(), g + off_.post_norm);
  }
  dxn = Tensor();
  cache.h1 = cache.xn = cache.inv_rms = Tensor();
  const AttentionBlock::Grads ag{g + off_.input_norm, g + off_.q, g + off_.k, g + off_.v,
                                 g + off_.o};
  Tensor norm_keep;
  attn_.backward(attention_weights(p, norm_keep), ag, x, cache.attn, grad);
  cache = DecoderCache();
}

// ---- LmHead -------------------------------------------------------------------------------------

LmHead::LmHead(const ModelDims& d, Backend& be, int64_t loss_chunk)
    : d_(d),
      be_(be),
      loss_chunk_(loss_chunk),
      norm_{d.hidden, d.norm_eps},
      head_{d.hidden, d.vocab, d.matmul == DType::BF16} {}

LossStats LmHead::forward(const Weights& w, const float* x, const int32_t* targets,
                          const float* weights, int64_t n, uint8_t* correct_rows) {
  return run(w, nullptr, x, targets, weights, n, 0.0f, nullptr, correct_rows);
}

LossStats LmHead::forward_backward(const Weights& w, const Grads& g, const float* x,
                                   const int32_t* targets, const float* weights, int64_t n,
                                   float grad_scale, float* dx, uint8_t* correct_rows) {
  RA_CHECK(dx, "lm head: forward_backward needs dx");
  return run(w, &g, x, targets, weights, n, grad_scale, dx, correct_rows);
}

void LmHead::logits(const Weights& w, const float* x, int64_t n, float* logits) {
  Tensor inv = activation(be_, {n}, "final norm inv_rms");
  Tensor xn = activation(be_, {n, d_.hidden}, "final norm output");
  norm_.forward(be_, w.norm, x, n, xn.data<float>(), inv.data<float>());
  // loss_chunk rows per GEMM, as the loss runs: one GEMM's output then stays far below 2^31
  // elements (cuBLAS's int sizes), which all the logits pass at long sequences and large
  // vocabularies (32K tokens x 128K entries is 4.2e9).
  const int64_t c = loss_chunk_ > 0 ? std::min(loss_chunk_, n) : n;
  for (int64_t r0 = 0; r0 < n; r0 += c)
    head_.forward(be_, w.head, xn.data<float>() + r0 * d_.hidden, std::min(c, n - r0),
                  logits + r0 * d_.vocab);
}

LossStats LmHead::run(const Weights& w, const Grads* g, const float* x, const int32_t* targets,
                      const float* weights, int64_t n, float grad_scale, float* dx,
                      uint8_t* correct_rows) {
  LossStats st;
  if (n == 0) return st;
  const int64_t c = loss_chunk_ > 0 ? std::min(loss_chunk_, n) : n, Hd = d_.hidden;
  Tensor inv = activation(be_, {n}, "final norm inv_rms");
  // xn holds the normalised rows; in backward each chunk's rows are overwritten by their gradient
  // once the head's weight gradient has used them, so one [n, hidden] buffer serves both.
  Tensor xn = activation(be_, {n, Hd}, "final norm output");
  Tensor logits = activation(be_, {c, d_.vocab}, "logits chunk");
  // Per-row losses (float64, as bytes) and correctness of every row, read back once at the end:
  // the chunks queue one after the other with no host wait between them.
  Tensor row_loss =
      Tensor::empty({n * int64_t(sizeof(double))}, DType::U8, be_.device(), "loss per row");
  Tensor correct = Tensor::empty({n}, DType::U8, be_.device(), "correct rows");
  double* losses = reinterpret_cast<double*>(row_loss.raw());
  norm_.forward(be_, w.norm, x, n, xn.data<float>(), inv.data<float>());
  for (int64_t r0 = 0; r0 < n; r0 += c) {
    const int64_t rows = std::min(c, n - r0);
    float* xc = xn.data<float>() + r0 * Hd;
    float* lg = logits.data<float>();
    head_.forward(be_, w.head, xc, rows, lg);
    be_.cross_entropy_rows(lg, targets + r0, weights ? weights + r0 : nullptr, rows, d_.vocab,
                           grad_scale, g ? lg : nullptr, correct.data<uint8_t>() + r0, losses + r0);
    if (!g) continue;
    // dW_head += dlogits^T xn_c, then dxn_c = dlogits W_head over xn_c (Linear::backward runs
    // them in that order, so xn_c may receive its own gradient).
    head_.backward(be_, w.head, xc, lg, rows, xc, g->head);
  }
  if (g) {
    be_.fill(dx, n * Hd, 0.0f);
    norm_.backward(be_, w.norm, x, inv.data<float>(), xn.data<float>(), n, dx, g->norm);
  }
  // The one host wait: every row's loss and correctness. The sum goes chunk by chunk in row
  // order, the same additions as when each chunk's total came back on its own.
  std::vector<double> host_loss(static_cast<size_t>(n));
  std::vector<uint8_t> host_correct(static_cast<size_t>(n));
  be_.copy_to_host(host_loss.data(), losses, host_loss.size() * sizeof(double));
  be_.copy_to_host(host_correct.data(), correct.data<uint8_t>(), host_correct.size());
  for (int64_t r0 = 0; r0 < n; r0 += c) {
    double chunk = 0;
    for (int64_t r = r0; r < std::min(n, r0 + c); ++r) chunk += host_loss[size_t(r)];
    st.loss_sum += chunk;
  }
  for (uint8_t ok : host_correct) st.correct += ok;
  if (correct_rows) std::copy(host_correct.begin(), host_correct.end(), correct_rows);
  return st;
}

}  // namespace ringattn
