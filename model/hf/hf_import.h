// Hugging Face LLaMA weights into the model (ringattn train/eval/forward --init-from DIR).
//
// A Hugging Face directory holds config.json (model/hf/hf_config.h) and its weights as
// safetensors, either one model.safetensors or shards listed by model.safetensors.index.json
// ({"metadata": {...}, "weight_map": {tensor name: shard file}}). Tensors may be F32, BF16 or
// F16; they are converted to float32 (the model's master weights) when loaded.
//
// Names and shapes are the model's own (model/layers/params.h uses the Hugging Face names), and
// the layers follow transformers' LlamaForCausalLM conventions, so no tensor is permuted:
//   * RoPE is rotate-half: dimension i pairs with i + head_dim/2, inv_freq = theta^(-2i/head_dim)
//     (core/cpu/cpu_layers.cpp; the angles are computed in float64, which differs from
//     transformers' float32 angles by rounding only);
//   * RMSNorm: y = w * (x / sqrt(mean(x^2) + eps)), eps inside the square root;
//   * the feed-forward is down(silu(gate(x)) * up(x)); attention scale 1/sqrt(head_dim).
//
// Checks: every tensor of the model must be present with its shape and a float dtype; tensors
// the model does not have are errors (a bias, a layer beyond num_hidden_layers), except the
// rotary "inv_freq" buffers some old checkpoints carry and a tied model's lm_head.weight, which
// are skipped. Every error names the file and the tensor.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "model/layers/params.h"
#include "model/transformer.h"

namespace ringattn {

// The safetensors weights of a Hugging Face directory, addressed by tensor name whatever shard
// holds them. Opening reads only the headers.
class HfWeights {
 public:
  // <dir>/model.safetensors.index.json when present, else <dir>/model.safetensors.
  static HfWeights open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  // Tensor names, sorted.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // Error naming the files when absent
  // The path of the file that holds `name`.
  const std::string& file_of(const std::string& name) const;
  // Host F32 copy (BF16 and F16 converted).
  Tensor load_f32(const std::string& name) const;
  size_t file_count() const { return files_.size(); }
  // "model.safetensors" or "3 shards listed in model.safetensors.index.json".
  std::string describe() const;

 private:
  std::string dir_, index_;  // index_: the index file's path, or empty
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

// Checks names, shapes and dtypes of `w` against a model of shape `d` (see the header comment);
// every mismatch is an Error naming the file and the tensor.
void check_hf_weights(const HfWeights& w, const ModelDims& d);

// What load_hf_weights found, for the log.
struct HfLoadSummary {
  int64_t tensors = 0;
  int64_t parameters = 0;
  std::map<std::string, int64_t> dtypes;  // stored dtype name -> tensors
  std::string describe() const;           // "29 tensors, 78144 parameters (BF16 x 29)"
};

// Checks `w` against the model's shape and replaces the model's parameters with it. Every rank
// reads the files (each keeps its FSDP slice); not collective.
HfLoadSummary load_hf_weights(const HfWeights& w, Transformer& model);

// HfWeights::open(dir) and load_hf_weights into `model`, with a log line saying what was loaded
// (train, eval and forward --init-from). Not collective.
HfLoadSummary init_from_hf(const std::string& dir, Transformer& model);

}  // namespace ringattn
