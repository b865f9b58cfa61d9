// Hugging Face LLaMA configs (config.json) in and out.
//
// Import policy: the Hugging Face config SETS the model shape. apply_hf_config() overwrites the
// trainer's model.* shape keys (vocab_size, hidden_size, intermediate_size, num_layers,
// num_heads, num_kv_heads, head_dim, rope_theta, rms_norm_eps, tie_embeddings) with the values of
// config.json, logging every value it changes, so a fine-tuning config needs no shape at all and
// a stale one cannot silently disagree with the weights. Everything else (attention, mesh, data,
// chunk sizes, checkpointing) stays the trainer config's.
//
// Both spellings transformers has written are read: v4 ("torch_dtype", top-level "rope_theta"
// and "rope_scaling") and v5 ("dtype", "rope_parameters": {"rope_type", "rope_theta"}). Features
// the model does not implement are errors naming the key: rope scaling other than the default,
// attention or MLP biases, an activation other than silu, a head_dim other than
// hidden_size / num_attention_heads (the trainer's config rules), a model_type other than llama.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <string_view>

#include "core/dtype.h"
#include "core/json_config.h"
#include "model/train_config.h"

namespace ringattn {

struct HfConfig {
  std::string path;  // the config.json it was read from (named in errors and logs)
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // resolved: num_attention_heads when absent or null
  int64_t head_dim = 0;             // resolved: hidden_size / num_attention_heads when absent
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;  // LlamaConfig's default
  bool tie_word_embeddings = false;
  std::string dtype;  // "float32", "bfloat16", "float16", ... as written; "" when absent
  int64_t max_position_embeddings = 0;  // 0 when absent
};

// Reads <dir>/config.json. Errors name the file, the key and what was expected.
HfConfig read_hf_config(const std::string& dir);
// The same from parsed JSON; `source` is the file named in errors.
HfConfig parse_hf_config(const nlohmann::json& j, const std::string& source);

// Sets the model shape keys of `json` from `hf` (see the header comment), logging each value
// that changes (rank 0).
void apply_hf_config(const HfConfig& hf, JsonConfig& json);

// The config.json of a model: what transformers needs to load it as LlamaForCausalLM, in both
// the v4 and the v5 spellings. `dtype` is the weights' dtype (F32, BF16 or F16).
nlohmann::ordered_json make_hf_config_json(const ModelConfig& m, DType dtype,
                                           int64_t max_position_embeddings);

// "float32", "bfloat16", "float16" (torch's names); an Error for other types.
std::string_view torch_dtype_name(DType t);
// The inverse, also accepting "f32", "bf16", "f16"; an Error naming the accepted values.
DType parse_weight_dtype(std::string_view name);

}  // namespace ringattn
