// The transformer's layers, forward and backward written by hand on top of the backend's
// operations (core/backend.h), so the same code runs on every backend.
//
// Conventions:
//  * Activations are [B, S, hidden] float32 rows of one rank's shard, tokens in local order; a
//    layer sees them as n = B * S rows.
//  * Parameters are read through pointers into a unit's flat buffer (model/layers/params.h);
//    gradients are ACCUMULATED (+=) into a flat buffer of the same layout, so micro-batches and a
//    tied embedding/head simply add up.
//  * The residual gradient flows in place: a block's backward takes `grad` = dL/d(output) and
//    leaves dL/d(input) in the same tensor (the residual connection makes the second the first
//    plus the block's own contribution).
//  * RoPE and the causal mask use the GLOBAL positions of the shard's tokens.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "core/backend.h"
#include "core/tensor.h"
#include "model/attention/attention.h"
#include "model/layers/params.h"
#include "model/train_config.h"

namespace ringattn {

// Activation checkpointing of a decoder block (the enum Checkpointing of model/train_config.h).
// `none` keeps the block's intermediate activations from forward to backward; `layer` keeps only
// the block input (held by the caller) and runs the block's forward again at the start of its
// backward. The recomputation performs exactly the same operations on the same inputs, so
// gradients are bitwise identical either way.

// What a layer needs to know about the tokens of a shard besides their activations.
struct ShardTokens {
  int64_t batch = 1, seq = 0;      // the shard holds batch x seq tokens
  std::vector<int64_t> positions;  // [seq] global positions, ascending (RoPE, causal mask)
  // [batch, seq] I32 packed-document ids (host memory, or the backend's device), or undefined.
  Tensor segment_ids;
  // Ring: every sp rank's positions and segment ids, gathered once for all layers
  // (Attention::share_tokens); null: each attention call gathers its own.
  std::shared_ptr<const RingTokens> ring_tokens;
  int64_t rows() const { return batch * seq; }
};

// Values a GEMM reads, float32 or already bfloat16: a Linear's input rows, its weight, or a whole
// unit's gathered parameters. Mixed precision keeps what only feeds GEMMs in bf16: activations
// (the GEMMs would round them to those values anyway) and the weights FSDP gathers in bf16
// (FlatShard::set_gather_dtype), which the GEMMs then read as they arrive, with no float32
// widening and no rounding again per call. Converts from either pointer type; null is {}.
struct F32OrBf16 {
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;
  F32OrBf16() = default;
  F32OrBf16(const float* x) : f32(x) {}      // NOLINT: implicit, the float32 case reads as before
  F32OrBf16(const uint16_t* x) : bf16(x) {}  // NOLINT
  // A float32 tensor's data, or a bf16 one's.
  static F32OrBf16 of(const Tensor& t);
  bool empty() const { return !f32 && !bf16; }
  // The values from element `elems` on.
  F32OrBf16 offset(int64_t elems) const {
    return bf16 ? F32OrBf16(bf16 + elems) : F32OrBf16(f32 ? f32 + elems : nullptr);
  }
};

// n values as float32: `v` itself, or (bf16) a widened copy held in `keep` (exact). For the few
// parameters that are not GEMM operands (RMSNorm weights, the embedding table's rows).
const float* as_f32(Backend& be, F32OrBf16 v, int64_t n, Tensor& keep, std::string_view what);

// y = x W^T with W [out, in] row-major (the Hugging Face nn.Linear layout), no bias.
// Mixed precision (`bf16`): every GEMM reads bfloat16 operands (x, W, dy) and runs
// Backend::gemm_bf16 (products of the bf16 values exact, sums in float32, the result float32,
// and weight gradients accumulate in float32). An operand given in float32 is rounded to bf16,
// nearest even, into a scratch buffer the allocator counts; one given in bf16 is read as it is.
// In the model W arrives in bf16 (FSDP gathers it so) and so do the kept activations; dy is
// rounded per call. bf16 operands need `bf16`.
struct Linear {
  int64_t in = 0, out = 0;
  bool bf16 = false;
  // y[n, out] = x[n, in] W^T, added to y when `accumulate`.
  void forward(Backend& be, F32OrBf16 w, F32OrBf16 x, int64_t n, float* y,
               bool accumulate = false) const;
  // dx[n, in] = dy[n, out] W (added to dx when `accumulate_dx`; skipped when dx is null);
  // dw[out, in] += dy^T x (skipped when dw is null). dw is computed before dx, so dx may be the
  // buffer x itself (both are [n, in]).
  void backward(Backend& be, F32OrBf16 w, F32OrBf16 x, const float* dy, int64_t n, float* dx,
                float* dw, bool accumulate_dx = false) const;
};

// y = x / rms(x) * w over rows of `dim`.
struct RmsNorm {
  int64_t dim = 0;
  float eps = 1e-5f;
  // inv_rms [n] is what backward needs besides x.
  void forward(Backend& be, const float* w, const float* x, int64_t n, float* y,
               float* inv_rms) const;
  // dx[n, dim] += ..., dw[dim] += ... (see Backend::rmsnorm_backward).
  void backward(Backend& be, const float* w, const float* x, const float* inv_rms, const float* dy,
                int64_t n, float* dx, float* dw) const;
};

// Token embedding: row lookup (from a float32 or bf16 table; rows come out float32), and
// scatter-add of the gradient.
struct Embedding {
  int64_t vocab = 0, dim = 0;
  void forward(Backend& be, F32OrBf16 table, const int32_t* tokens, int64_t n, float* out) const;
  void backward(Backend& be, const int32_t* tokens, const float* dout, int64_t n,
                float* dtable) const;
};

// SwiGLU feed-forward, y = down(silu(x gate^T) * (x up^T)), applied to `ffn_chunk` rows at a time
// (blockwise FFN, BPT): the [rows, intermediate] activations exist for one chunk only.
// Memory choice: forward saves nothing (the block already keeps x, the normalised input); backward
// recomputes gate and up chunk by chunk (two of the three forward GEMMs again) instead of keeping
// 2 x tokens x intermediate floats per layer, which would undo the point of chunking.
// Peak scratch: forward 2 x chunk x intermediate floats, backward 3 x chunk x intermediate.
class FeedForward {
 public:
  struct Weights {
    F32OrBf16 gate;  // [intermediate, hidden]
    F32OrBf16 up;    // [intermediate, hidden]
    F32OrBf16 down;  // [hidden, intermediate]
  };
  struct Grads {
    float *gate, *up, *down;  // accumulated
  };
  // ffn_chunk <= 0: all rows in one chunk.
  // `bf16`: its three projections are mixed-precision Linears.
  FeedForward(Backend& be, int64_t hidden, int64_t intermediate, int64_t ffn_chunk,
              bool bf16 = false);
  // y[n, hidden] (overwritten). x float32, or bf16 under `bf16`.
  void forward(const Weights& w, F32OrBf16 x, int64_t n, float* y) const;
  // dx[n, hidden] (overwritten); gradients of the weights accumulated.
  void backward(const Weights& w, F32OrBf16 x, const float* dy, int64_t n, float* dx,
                const Grads& g) const;
  int64_t chunk_rows(int64_t n) const { return ffn_chunk_ > 0 ? std::min(ffn_chunk_, n) : n; }

 private:
  Backend& be_;
  int64_t hidden_, intermediate_, ffn_chunk_;
  bool bf16_;
};

// What the attention block's backward needs from its forward. Under mixed precision (model.dtype
// = bf16) the activations that only feed GEMMs are kept in bf16, half the memory, with the same
// results (the GEMMs round them to these values anyway): xn, and q, k, v for the attention tiles.
// The residual stream, the norms' inputs, o (delta = rowsum(dO o) reads it) and the statistics
// stay float32.
struct AttentionBlockCache {
  Tensor inv_rms;       // [B*S]
  Tensor xn;            // [B, S, hidden] input_layernorm(x); F32, or BF16 under bf16
  AttentionInput in;    // q, k after RoPE, v (F32, or BF16 under bf16); positions; segment ids
  AttentionOutput out;  // o, lse
};

// out = x + o_proj(attention(rope(q_proj(xn)), rope(k_proj(xn)), v_proj(xn))), xn = rmsnorm(x).
class AttentionBlock {
 public:
  struct Weights {
    const float* norm;  // float32 (as_f32 widens a bf16 unit's)
    F32OrBf16 q, k, v, o;
  };
  struct Grads {
    float *norm, *q, *k, *v, *o;
  };
  // `attention` decides vanilla, blockwise or ring (and holds the sequence-parallel group).
  AttentionBlock(const ModelDims& d, Backend& be, Attention& attention);
  Tensor forward(const Weights& w, const Tensor& x, const ShardTokens& t, AttentionBlockCache& c);
  // grad: dL/d(out) in, dL/dx out. Releases the cache.
  void backward(const Weights& w, const Grads& g, const Tensor& x, AttentionBlockCache& c,
                Tensor& grad);

 private:
  ModelDims d_;
  Backend& be_;
  Attention& attention_;
  RmsNorm norm_;
  Linear q_, k_, v_, o_;
};

struct DecoderCache {
  bool filled = false;
  AttentionBlockCache attn;
  Tensor h1;       // [B, S, hidden] after the attention residual
  Tensor inv_rms;  // [B*S] of post_attention_layernorm
  Tensor xn;       // [B, S, hidden] post_attention_layernorm(h1), the FFN input (BF16 under bf16)
};

struct DecoderOptions {
  int64_t ffn_chunk = 0;  // <= 0: the whole shard at once
  Checkpointing checkpointing = Checkpointing::None;
};

// One LLaMA decoder layer: h1 = x + attention block(x); out = h1 + FFN(rmsnorm(h1)).
// Parameters: one flat buffer laid out by decoder_layout(dims, index), float32, or bf16 as FSDP
// gathers it under mixed precision (the GEMMs read it as it is, the norms' weights are widened).
class DecoderLayer {
 public:
  DecoderLayer(const ModelDims& d, int index, Backend& be, Attention& attention,
               DecoderOptions options);
  const ParamLayout& layout() const { return layout_; }
  const DecoderOptions& options() const { return opt_; }
  // x [B, S, hidden] -> out [B, S, hidden]. `cache` receives the activations backward needs
  // (nothing under layer checkpointing).
  Tensor forward(F32OrBf16 params, const Tensor& x, const ShardTokens& t, DecoderCache& cache);
  // x: the same input as forward. grad: dL/d(out) in, dL/dx out. Parameter gradients are added
  // into `grads` (flat, same layout). Releases the cache.
  void backward(F32OrBf16 params, float* grads, const Tensor& x, const ShardTokens& t,
                DecoderCache& cache, Tensor& grad);

 private:
  // Fills the cache; computes the block's output only when `output` (recomputation skips the FFN).
  Tensor run_forward(F32OrBf16 params, const Tensor& x, const ShardTokens& t, DecoderCache& c,
                     bool output);
  AttentionBlock::Weights attention_weights(F32OrBf16 p, Tensor& norm_keep) const;

  ModelDims d_;
  Backend& be_;
  DecoderOptions opt_;
  ParamLayout layout_;
  DecoderOffsets off_;
  AttentionBlock attn_;
  RmsNorm norm_;
  FeedForward ffn_;
};

// What a loss evaluation counted.
struct LossStats {
  double loss_sum = 0;  // sum of weight * cross-entropy over the rows that are not ignored
  int64_t correct = 0;  // rows (not ignored) whose argmax is the target
};

// Final RMSNorm, LM head and cross-entropy, `loss_chunk` rows at a time (blockwise, so no
// [tokens, vocab] buffer for the whole shard ever exists: peak scratch is loss_chunk x vocab).
// Targets: [n] int32, -1 = not counted; weights [n] per-row loss weights or null (1).
// forward_backward fuses the two passes: a chunk's dlogits are ready as soon as its logits are, so
// nothing is recomputed and nothing is kept between chunks.
class LmHead {
 public:
  struct Weights {
    const float* norm;  // [hidden] model.norm.weight, float32
    F32OrBf16 head;     // [vocab, hidden] lm_head.weight, or model.embed_tokens.weight when tied
  };
  struct Grads {
    float* norm;  // accumulated
    float* head;  // accumulated (the embedding's gradient when tied)
  };
  // loss_chunk <= 0: all rows in one chunk.
  LmHead(const ModelDims& d, Backend& be, int64_t loss_chunk);
  // Loss only (evaluation). correct_rows [n] (HOST memory, may be null) receives per-row
  // correctness (1 when the row's argmax is its target).
  LossStats forward(const Weights& w, const float* x, const int32_t* targets, const float* weights,
                    int64_t n, uint8_t* correct_rows = nullptr);
  // Loss and gradients of loss_sum * grad_scale: dx [n, hidden] overwritten, weights' gradients
  // accumulated.
  LossStats forward_backward(const Weights& w, const Grads& g, const float* x,
                             const int32_t* targets, const float* weights, int64_t n,
                             float grad_scale, float* dx, uint8_t* correct_rows = nullptr);
  // logits [n, vocab] (overwritten) of every row: the final norm and the head, no loss, in one
  // piece (no loss_chunk), with the same GEMM as the loss paths (bf16 operands under bf16).
  void logits(const Weights& w, const float* x, int64_t n, float* logits);

 private:
  LossStats run(const Weights& w, const Grads* g, const float* x, const int32_t* targets,
                const float* weights, int64_t n, float grad_scale, float* dx,
                uint8_t* correct_rows);

  ModelDims d_;
  Backend& be_;
  int64_t loss_chunk_;
  RmsNorm norm_;
  Linear head_;
};

}  // namespace ringattn
