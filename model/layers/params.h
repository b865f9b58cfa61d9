// Model shapes and parameter layouts. The parameters of one unit (the embedding, one decoder
// layer, the final norm + head) live in one flat float32 buffer: the unit FSDP shards, all-gathers
// and reduce-scatters, and checkpoints save. A ParamLayout names each tensor of a unit with its
// Hugging Face LLaMA name, its shape and its offset (in floats) in the flat buffer, so a checkpoint
// is written tensor by tensor under the names Hugging Face loads. Gradients use the same layout in
// a flat buffer of their own.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "model/train_config.h"

namespace ringattn {

// The shape of a LLaMA-style decoder.
struct ModelDims {
  int64_t vocab = 0;
  int64_t hidden = 0;
  int64_t intermediate = 0;
  int layers = 0;
  int heads = 0;
  int kv_heads = 0;  // grouped-query attention: heads % kv_heads == 0
  int head_dim = 0;  // usually hidden / heads; q_proj is [heads * head_dim, hidden]
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  bool tie_embeddings = false;  // lm_head uses model.embed_tokens.weight
  // Operand type of the projection, FFN and head GEMMs (model.dtype): F32, or BF16 with float32
  // accumulation and float32 results (tensor cores on a GPU). See Linear.
  DType matmul = DType::F32;

  // The shape part of the trainer's model config (defaults resolved: kv_heads, head_dim).
  static ModelDims from_config(const ModelConfig& m);
  // Errors naming the offending field.
  void validate() const;
  // Parameters of the whole model (a tied head counted once).
  int64_t parameter_count() const;
};

struct ParamEntry {
  std::string name;  // "model.layers.3.self_attn.q_proj.weight"
  Shape shape;       // row-major; projections are [out, in] as in Hugging Face
  int64_t offset = 0;
  int64_t numel() const { return shape_numel(shape); }
};

class ParamLayout {
 public:
  // Appends a tensor right after the previous one; returns its offset.
  int64_t add(std::string name, Shape shape);
  const std::vector<ParamEntry>& entries() const { return entries_; }
  int64_t numel() const { return numel_; }  // floats in the flat buffer
  // The entry of that name; an Error listing the names when there is none.
  const ParamEntry& find(std::string_view name) const;
  bool contains(std::string_view name) const;

 private:
  std::vector<ParamEntry> entries_;
  int64_t numel_ = 0;
};

// The units of a model, in the order they run.
ParamLayout embedding_layout(const ModelDims& d);           // model.embed_tokens.weight
ParamLayout decoder_layout(const ModelDims& d, int index);  // model.layers.{index}.*
ParamLayout head_layout(const ModelDims& d);  // model.norm.weight (+ lm_head.weight if untied)

// Where each tensor of a decoder layer sits in its flat buffer (offsets from decoder_layout).
struct DecoderOffsets {
  int64_t input_norm, q, k, v, o, post_norm, gate, up, down;
  explicit DecoderOffsets(const ParamLayout& layout);
};

// Initial values on the host: RMSNorm weights 1, everything else N(0, stddev), drawn per tensor
// from a stream keyed by (seed, tensor name), so a tensor's values do not depend on which unit or
// which rank initialises it.
void init_parameters(const ParamLayout& layout, float* host_flat, uint64_t seed,
                     float stddev = 0.02f);

}  // namespace ringattn
