#include "model/hf/hf_import.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "core/log.h"

namespace ringattn {

namespace fs = std::filesystem;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

// Tensors a Hugging Face checkpoint may carry that are not parameters of the model.
bool skippable(const std::string& name, const ModelDims& d) {
  // Old transformers versions saved RoPE's inv_freq buffer per layer; it is recomputed.
  if (name.size() > 9 && name.ends_with(".inv_freq")) return true;
  // A tied head is the embedding; some writers store the shared tensor under both names.
  return d.tie_embeddings && name == "lm_head.weight";
}

// Every tensor of a model of shape `d`, in unit order.
std::vector<ParamEntry> model_entries(const ModelDims& d) {
  std::vector<ParamEntry> out;
  auto add = [&](const ParamLayout& l) {
    for (const ParamEntry& e : l.entries()) out.push_back(e);
  };
  add(embedding_layout(d));
  for (int l = 0; l < d.layers; ++l) add(decoder_layout(d, l));
  add(head_layout(d));
  return out;
}

std::string dims_text(const ModelDims& d) {
  return fmt::format(
      "vocab_size {}, hidden_size {}, intermediate_size {}, {} layers, {} heads, {} key/value "
      "heads, head_dim {}, {} embeddings",
      d.vocab, d.hidden, d.intermediate, d.layers, d.heads, d.kv_heads, d.head_dim,
      d.tie_embeddings ? "tied" : "untied");
}

}  // namespace

HfWeights HfWeights::open(const std::string& dir) {
  RA_CHECK(
      fs::is_directory(dir), "Hugging Face model directory '{}' {}", dir,
      fs::exists(dir) ? "is a file; give the directory that holds config.json" : "does not exist");
  HfWeights w;
  w.dir_ = dir;
  const fs::path index = fs::path(dir) / kIndexFile;
  const fs::path single = fs::path(dir) / kSingleFile;
  if (fs::exists(index)) {
    w.index_ = index.string();
    std::ifstream f(index);
    RA_CHECK(f.good(), "Hugging Face weight index '{}' cannot be read", w.index_);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(f);
    } catch (const std::exception& e) {
      RA_FAIL("Hugging Face weight index '{}' is not valid JSON: {}", w.index_, e.what());
    }
    RA_CHECK(j.is_object() && j.contains("weight_map") && j.at("weight_map").is_object(),
             "Hugging Face weight index '{}' has no \"weight_map\" object (tensor name -> file)",
             w.index_);
    std::map<std::string, size_t> file_index;
    for (const auto& [name, file] : j.at("weight_map").items()) {
      RA_CHECK(file.is_string(),
               "Hugging Face weight index '{}': the file of tensor '{}' must be a string, got {}",
               w.index_, name, file.dump());
      const std::string rel = file.get<std::string>();
      // Shards live next to the index; a path that leaves the directory is not a shard name.
      RA_CHECK(!rel.empty() && rel.find('/') == std::string::npos && rel != "." && rel != "..",
               "Hugging Face weight index '{}': tensor '{}' maps to '{}', which is not a file "
               "name in the same directory",
               w.index_, name, rel);
      auto it = file_index.find(rel);
      if (it == file_index.end()) {
        const fs::path p = fs::path(dir) / rel;
        RA_CHECK(fs::exists(p),
                 "Hugging Face weight index '{}' lists tensor '{}' in '{}', which does not exist",
                 w.index_, name, p.string());
        it = file_index.emplace(rel, w.files_.size()).first;
        w.files_.push_back(SafetensorsFile::open(p.string()));
      }
      const SafetensorsFile& sf = w.files_[it->second];
      RA_CHECK(sf.contains(name),
               "Hugging Face weight index '{}' lists tensor '{}' in '{}', but that file has no "
               "such tensor",
               w.index_, name, sf.path());
      w.where_[name] = it->second;
    }
    RA_CHECK(!w.where_.empty(), "Hugging Face weight index '{}' lists no tensors", w.index_);
  } else {
    RA_CHECK(fs::exists(single),
             "Hugging Face model directory '{}' has neither {} nor {} (only safetensors weights "
             "are read; convert a pytorch_model.bin with transformers' save_pretrained first)",
             dir, kSingleFile, kIndexFile);
    w.files_.push_back(SafetensorsFile::open(single.string()));
    for (const std::string& name : w.files_[0].names()) w.where_[name] = 0;
  }
  return w;
}

std::vector<std::string> HfWeights::names() const {
  std::vector<std::string> out;
  for (const auto& [name, file] : where_) out.push_back(name);
  return out;
}

const TensorInfo& HfWeights::info(const std::string& name) const {
  RA_CHECK(contains(name), "Hugging Face weights in '{}' ({}) have no tensor '{}'", dir_,
           describe(), name);
  return files_[where_.at(name)].info(name);
}

const std::string& HfWeights::file_of(const std::string& name) const {
  RA_CHECK(contains(name), "Hugging Face weights in '{}' ({}) have no tensor '{}'", dir_,
           describe(), name);
  return files_[where_.at(name)].path();
}

Tensor HfWeights::load_f32(const std::string& name) const {
  RA_CHECK(contains(name), "Hugging Face weights in '{}' ({}) have no tensor '{}'", dir_,
           describe(), name);
  return files_[where_.at(name)].load_f32(name);
}

std::string HfWeights::describe() const {
  if (index_.empty()) return kSingleFile;
  return fmt::format("{} shard(s) listed in {}", files_.size(), kIndexFile);
}

void check_hf_weights(const HfWeights& w, const ModelDims& d) {
  std::set<std::string> expected;
  for (const ParamEntry& e : model_entries(d)) {
    expected.insert(e.name);
    RA_CHECK(w.contains(e.name),
             "Hugging Face weights in '{}' ({}): tensor '{}' (shape {}) is missing; the model "
             "({}) needs it",
             w.dir(), w.describe(), e.name, shape_str(e.shape), dims_text(d));
    const TensorInfo& ti = w.info(e.name);
    RA_CHECK(ti.shape == e.shape,
             "Hugging Face weights: tensor '{}' in '{}' has shape {}, expected {} for the model "
             "of config.json ({})",
             e.name, w.file_of(e.name), shape_str(ti.shape), shape_str(e.shape), dims_text(d));
    RA_CHECK(is_floating(ti.dtype),
             "Hugging Face weights: tensor '{}' in '{}' is {}, expected F32, BF16 or F16", e.name,
             w.file_of(e.name), dtype_name(ti.dtype));
  }
  for (const std::string& name : w.names()) {
    if (expected.count(name) || skippable(name, d)) continue;
    RA_FAIL(
        "Hugging Face weights: tensor '{}' in '{}' is not a parameter of the model of "
        "config.json ({}); is config.json the one these weights were saved with?",
        name, w.file_of(name), dims_text(d));
  }
}

std::string HfLoadSummary::describe() const {
  std::string types;
  for (const auto& [name, n] : dtypes)
    types += fmt::format("{}{} x {}", types.empty() ? "" : ", ", name, n);
  return fmt::format("{} tensors, {} parameters ({})", tensors, parameters, types);
}

HfLoadSummary load_hf_weights(const HfWeights& w, Transformer& model) {
  check_hf_weights(w, model.dims());
  HfLoadSummary s;
  for (size_t u = 0; u < model.units().size(); ++u) {
    const ParamLayout& layout = model.units()[u].layout;
    std::vector<float> full(size_t(layout.numel()));
    for (const ParamEntry& e : layout.entries()) {
      const Tensor t = w.load_f32(e.name);
      std::memcpy(full.data() + e.offset, t.data<float>(), size_t(e.numel()) * sizeof(float));
      ++s.tensors;
      s.parameters += e.numel();
      ++s.dtypes[std::string(dtype_name(w.info(e.name).dtype))];
    }
    model.load_unit(u, full.data(), layout.numel());
  }
  return s;
}

HfLoadSummary init_from_hf(const std::string& dir, Transformer& model) {
  const HfWeights w = HfWeights::open(dir);
  const HfLoadSummary s = load_hf_weights(w, model);
  log::info("init from {}: {} from {}, converted to f32", dir, s.describe(), w.describe());
  return s;
}

}  // namespace ringattn
