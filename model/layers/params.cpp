#include "model/layers/params.h"

#include <fmt/format.h>

#include <cstring>

#include "core/error.h"
#include "core/random.h"

namespace ringattn {

ModelDims ModelDims::from_config(const ModelConfig& m) {
  ModelDims d;
  d.vocab = m.vocab_size;
  d.hidden = m.hidden_size;
  d.intermediate = m.intermediate_size;
  d.layers = int(m.num_layers);
  d.heads = int(m.num_heads);
  d.kv_heads = int(m.kv_heads());
  d.head_dim = int(m.head_size());
  d.rope_theta = float(m.rope_theta);
  d.norm_eps = float(m.rms_norm_eps);
  d.tie_embeddings = m.tie_embeddings;
  d.matmul = m.dtype;
  return d;
}

void ModelDims::validate() const {
  RA_CHECK(vocab > 0, "model: vocab must be positive, got {}", vocab);
  RA_CHECK(hidden > 0, "model: hidden must be positive, got {}", hidden);
  RA_CHECK(intermediate > 0, "model: intermediate must be positive, got {}", intermediate);
  RA_CHECK(layers >= 0, "model: layers must not be negative, got {}", layers);
  RA_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0,
           "model: heads ({}) must be a positive multiple of kv_heads ({})", heads, kv_heads);
  RA_CHECK(head_dim > 0 && head_dim % 2 == 0,
           "model: head_dim must be positive and even (RoPE turns pairs), got {}", head_dim);
  RA_CHECK(rope_theta > 0, "model: rope_theta must be positive, got {}", rope_theta);
  RA_CHECK(norm_eps > 0, "model: norm_eps must be positive, got {}", norm_eps);
  RA_CHECK(matmul == DType::F32 || matmul == DType::BF16,
           "model: the GEMMs take f32 or bf16 operands, got {}", dtype_name(matmul));
}

int64_t ModelDims::parameter_count() const {
  int64_t n = embedding_layout(*this).numel() + head_layout(*this).numel();
  if (layers > 0) n += int64_t(layers) * decoder_layout(*this, 0).numel();
  return n;
}

int64_t ParamLayout::add(std::string name, Shape shape) {
  RA_CHECK(!contains(name), "parameter layout: '{}' added twice", name);
  ParamEntry e{std::move(name), std::move(shape), numel_};
  numel_ += e.numel();
  entries_.push_back(std::move(e));
  return entries_.back().offset;
}

bool ParamLayout::contains(std::string_view name) const {
  for (const ParamEntry& e : entries_)
    if (e.name == name) return true;
  return false;
}

const ParamEntry& ParamLayout::find(std::string_view name) const {
  for (const ParamEntry& e : entries_)
    if (e.name == name) return e;
  std::string names;
  for (const ParamEntry& e : entries_) names += (names.empty() ? "" : ", ") + e.name;
  RA_FAIL("parameter layout: no tensor '{}' (has: {})", name, names);
}

ParamLayout embedding_layout(const ModelDims& d) {
  ParamLayout l;
  l.add("model.embed_tokens.weight", {d.vocab, d.hidden});
  return l;
}

ParamLayout decoder_layout(const ModelDims& d, int index) {
  const std::string p = fmt::format("model.layers.{}.", index);
  const int64_t q_out = int64_t(d.heads) * d.head_dim, kv_out = int64_t(d.kv_heads) * d.head_dim;
  ParamLayout l;
  l.add(p + "input_layernorm.weight", {d.hidden});
  l.add(p + "self_attn.q_proj.weight", {q_out, d.hidden});
  l.add(p + "self_attn.k_proj.weight", {kv_out, d.hidden});
  l.add(p + "self_attn.v_proj.weight", {kv_out, d.hidden});
  l.add(p + "self_attn.o_proj.weight", {d.hidden, q_out});
  l.add(p + "post_attention_layernorm.weight", {d.hidden});
  l.add(p + "mlp.gate_proj.weight", {d.intermediate, d.hidden});
  l.add(p + "mlp.up_proj.weight", {d.intermediate, d.hidden});
  l.add(p + "mlp.down_proj.weight", {d.hidden, d.intermediate});
  return l;
}

ParamLayout head_layout(const ModelDims& d) {
  ParamLayout l;
  l.add("model.norm.weight", {d.hidden});
  if (!d.tie_embeddings) l.add("lm_head.weight", {d.vocab, d.hidden});
  return l;
}

namespace {

// The entry whose name ends with `suffix` (decoder names carry their layer index in front).
int64_t offset_of(const ParamLayout& layout, std::string_view suffix) {
  for (const ParamEntry& e : layout.entries())
    if (e.name.size() >= suffix.size() &&
        std::string_view(e.name).substr(e.name.size() - suffix.size()) == suffix)
      return e.offset;
  RA_FAIL("parameter layout: no tensor ending in '{}'", suffix);
}

bool is_norm(std::string_view name) {
  return name.find("norm") != std::string_view::npos;
}

// FNV-1a: a stable hash of the tensor name, mixed into the seed.
uint64_t name_hash(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (char c : s) h = (h ^ uint64_t(uint8_t(c))) * 1099511628211ull;
  return h;
}

}  // namespace

DecoderOffsets::DecoderOffsets(const ParamLayout& layout)
    : input_norm(offset_of(layout, ".input_layernorm.weight")),
      q(offset_of(layout, ".self_attn.q_proj.weight")),
      k(offset_of(layout, ".self_attn.k_proj.weight")),
      v(offset_of(layout, ".self_attn.v_proj.weight")),
      o(offset_of(layout, ".self_attn.o_proj.weight")),
      post_norm(offset_of(layout, ".post_attention_layernorm.weight")),
      gate(offset_of(layout, ".mlp.gate_proj.weight")),
      up(offset_of(layout, ".mlp.up_proj.weight")),
      down(offset_of(layout, ".mlp.down_proj.weight")) {}

void init_parameters(const ParamLayout& layout, float* host_flat, uint64_t seed, float stddev) {
  for (const ParamEntry& e : layout.entries()) {
    float* dst = host_flat + e.offset;
    if (is_norm(e.name)) {
      std::fill(dst, dst + e.numel(), 1.0f);
      continue;
    }
    Tensor t = Tensor::empty({e.numel()}, DType::F32, Device::CPU, "parameter init");
    fill_normal(t, seed ^ name_hash(e.name), 0.0f, stddev);
    std::memcpy(dst, t.data<float>(), size_t(e.numel()) * sizeof(float));
  }
}

}  // namespace ringattn
