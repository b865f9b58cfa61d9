#include "model/hf/hf_config.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/log.h"
#include "core/regular_file.h"

namespace ringattn {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

bool has(const json& j, const char* key) {
  return j.contains(key) && !j.at(key).is_null();
}

int64_t positive_int(const json& j, const char* key, const std::string& source) {
  RA_CHECK(has(j, key), "Hugging Face config '{}': key '{}' is missing (the model shape needs it)",
           source, key);
  const json& v = j.at(key);
  RA_CHECK(v.is_number_integer() && v.get<int64_t>() > 0,
           "Hugging Face config '{}': '{}' must be a positive integer, got {}", source, key,
           v.dump());
  return v.get<int64_t>();
}

double positive_number(const json& v, const char* key, const std::string& source) {
  RA_CHECK(v.is_number() && v.get<double>() > 0 && std::isfinite(v.get<double>()),
           "Hugging Face config '{}': '{}' must be a positive number, got {}", source, key,
           v.dump());
  return v.get<double>();
}

bool flag(const json& j, const char* key, bool def, const std::string& source) {
  if (!has(j, key)) return def;
  RA_CHECK(j.at(key).is_boolean(), "Hugging Face config '{}': '{}' must be true or false, got {}",
           source, key, j.at(key).dump());
  return j.at(key).get<bool>();
}

std::string text(const json& j, const char* key, const std::string& source) {
  if (!has(j, key)) return "";
  RA_CHECK(j.at(key).is_string(), "Hugging Face config '{}': '{}' must be a string, got {}", source,
           key, j.at(key).dump());
  return j.at(key).get<std::string>();
}

// rope_scaling (v4) or rope_parameters (v5): only the default (unscaled) RoPE is implemented.
void check_rope_type(const json& j, const char* key, const std::string& source) {
  if (!has(j, key)) return;
  const json& r = j.at(key);
  RA_CHECK(r.is_object(), "Hugging Face config '{}': '{}' must be an object or null, got {}",
           source, key, r.dump());
  std::string type = "default";
  for (const char* k : {"rope_type", "type"})
    if (r.contains(k) && r.at(k).is_string()) type = r.at(k).get<std::string>();
  RA_CHECK(type == "default",
           "Hugging Face config '{}': '{}' asks for RoPE scaling of type '{}'; ringattn implements "
           "the default rotary embedding only (rope_type 'default')",
           source, key, type);
}

}  // namespace

HfConfig parse_hf_config(const json& j, const std::string& source) {
  RA_CHECK(j.is_object(), "Hugging Face config '{}' must hold a JSON object", source);
  HfConfig c;
  c.path = source;
  const std::string model_type = text(j, "model_type", source);
  RA_CHECK(model_type.empty() || model_type == "llama",
           "Hugging Face config '{}': model_type is '{}'; ringattn reads LLaMA models "
           "(model_type 'llama')",
           source, model_type);
  if (has(j, "architectures")) {
    const json& a = j.at("architectures");
    bool causal_lm = false;
    if (a.is_array())
      for (const json& x : a) causal_lm = causal_lm || x == "LlamaForCausalLM";
    RA_CHECK(causal_lm,
             "Hugging Face config '{}': architectures is {}; ringattn reads LlamaForCausalLM "
             "checkpoints",
             source, a.dump());
  }
  const std::string act = text(j, "hidden_act", source);
  RA_CHECK(act.empty() || act == "silu",
           "Hugging Face config '{}': hidden_act is '{}'; the model's SwiGLU feed-forward uses "
           "silu",
           source, act);
  RA_CHECK(!flag(j, "attention_bias", false, source),
           "Hugging Face config '{}': attention_bias is true; the model's projections have no "
           "bias",
           source);
  RA_CHECK(!flag(j, "mlp_bias", false, source),
           "Hugging Face config '{}': mlp_bias is true; the model's projections have no bias",
           source);
  check_rope_type(j, "rope_scaling", source);
  check_rope_type(j, "rope_parameters", source);

  c.vocab_size = positive_int(j, "vocab_size", source);
  c.hidden_size = positive_int(j, "hidden_size", source);
  c.intermediate_size = positive_int(j, "intermediate_size", source);
  c.num_hidden_layers = positive_int(j, "num_hidden_layers", source);
  c.num_attention_heads = positive_int(j, "num_attention_heads", source);
  c.num_key_value_heads = has(j, "num_key_value_heads")
                              ? positive_int(j, "num_key_value_heads", source)
                              : c.num_attention_heads;
  RA_CHECK(c.num_attention_heads % c.num_key_value_heads == 0,
           "Hugging Face config '{}': num_key_value_heads = {} must divide num_attention_heads = "
           "{}",
           source, c.num_key_value_heads, c.num_attention_heads);
  const int64_t derived = c.hidden_size / c.num_attention_heads;
  c.head_dim = has(j, "head_dim") ? positive_int(j, "head_dim", source) : derived;
  RA_CHECK(c.head_dim * c.num_attention_heads == c.hidden_size,
           "Hugging Face config '{}': head_dim = {} but hidden_size / num_attention_heads = {} / "
           "{}; ringattn needs hidden_size = num_attention_heads x head_dim",
           source, c.head_dim, c.hidden_size, c.num_attention_heads);
  RA_CHECK(c.head_dim % 2 == 0,
           "Hugging Face config '{}': head_dim = {} must be even (RoPE rotates pairs)", source,
           c.head_dim);

  // v5 keeps rope_theta inside rope_parameters; v4 at the top level. Either may be absent
  // (LlamaConfig's default base is 10000).
  if (has(j, "rope_theta"))
    c.rope_theta = positive_number(j.at("rope_theta"), "rope_theta", source);
  if (has(j, "rope_parameters") && has(j.at("rope_parameters"), "rope_theta"))
    c.rope_theta = positive_number(j.at("rope_parameters").at("rope_theta"),
                                   "rope_parameters.rope_theta", source);
  if (has(j, "rms_norm_eps"))
    c.rms_norm_eps = positive_number(j.at("rms_norm_eps"), "rms_norm_eps", source);
  c.tie_word_embeddings = flag(j, "tie_word_embeddings", false, source);
  c.dtype = text(j, "dtype", source);
  if (c.dtype.empty()) c.dtype = text(j, "torch_dtype", source);
  if (has(j, "max_position_embeddings"))
    c.max_position_embeddings = positive_int(j, "max_position_embeddings", source);
  return c;
}

HfConfig read_hf_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  RA_CHECK(
      fs::is_directory(dir), "Hugging Face model directory '{}' {}", dir,
      fs::exists(dir) ? "is a file; give the directory that holds config.json" : "does not exist");
  std::string text, why;
  RA_CHECK(read_regular_file(path, &text, &why),
           "Hugging Face model directory '{}' has no readable config.json ('{}': {})", dir, path,
           why);
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    RA_FAIL("Hugging Face config '{}' is not valid JSON: {}", path, e.what());
  }
  return parse_hf_config(j, path);
}

void apply_hf_config(const HfConfig& hf, JsonConfig& json_cfg) {
  const std::vector<std::pair<const char*, json>> keys{
      {"model.vocab_size", hf.vocab_size},
      {"model.hidden_size", hf.hidden_size},
      {"model.intermediate_size", hf.intermediate_size},
      {"model.num_layers", hf.num_hidden_layers},
      {"model.num_heads", hf.num_attention_heads},
      {"model.num_kv_heads", hf.num_key_value_heads},
      {"model.head_dim", hf.head_dim},
      {"model.rope_theta", hf.rope_theta},
      {"model.rms_norm_eps", hf.rms_norm_eps},
      {"model.tie_embeddings", hf.tie_word_embeddings},
  };
  int changed = 0;
  for (const auto& [key, value] : keys) {
    const json old = json_cfg.value(key);
    if (old == value) continue;
    json_cfg.set_value(key, value, hf.path);
    log::info("{} = {} -> {} (set by {})", key, old.dump(), value.dump(), hf.path);
    ++changed;
  }
  if (changed == 0) log::info("model shape: as in {}", hf.path);
}

std::string_view torch_dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "float32";
    case DType::BF16:
      return "bfloat16";
    case DType::F16:
      return "float16";
    default:
      RA_FAIL("Hugging Face weights: dtype {} is not a weight type (F32, BF16 or F16)",
              dtype_name(t));
  }
}

DType parse_weight_dtype(std::string_view name) {
  if (name == "f32" || name == "float32") return DType::F32;
  if (name == "bf16" || name == "bfloat16") return DType::BF16;
  if (name == "f16" || name == "float16") return DType::F16;
  RA_FAIL("weight dtype '{}': expected f32, bf16 or f16", name);
}

nlohmann::ordered_json make_hf_config_json(const ModelConfig& m, DType dtype,
                                           int64_t max_position_embeddings) {
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["vocab_size"] = m.vocab_size;
  j["hidden_size"] = m.hidden_size;
  j["intermediate_size"] = m.intermediate_size;
  j["num_hidden_layers"] = m.num_layers;
  j["num_attention_heads"] = m.num_heads;
  j["num_key_value_heads"] = m.kv_heads();
  j["head_dim"] = m.head_size();
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = m.rms_norm_eps;
  // v4 reads rope_theta and rope_scaling, v5 rope_parameters; each ignores the other's keys.
  j["rope_theta"] = m.rope_theta;
  j["rope_scaling"] = nullptr;
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", m.rope_theta}};
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["mlp_bias"] = false;
  j["tie_word_embeddings"] = m.tie_embeddings;
  j["torch_dtype"] = torch_dtype_name(dtype);
  j["dtype"] = torch_dtype_name(dtype);
  j["use_cache"] = true;
  return j;
}

}  // namespace ringattn
