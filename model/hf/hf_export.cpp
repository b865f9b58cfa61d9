#include "model/hf/hf_export.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/json_config.h"
#include "core/safetensors.h"
#include "model/checkpoint.h"
#include "model/hf/hf_config.h"
#include "model/layers/params.h"

namespace ringattn {

namespace fs = std::filesystem;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

void write_text(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    RA_CHECK(f.good(), "export: cannot write '{}'", tmp.string());
    f << text;
    f.flush();
    RA_CHECK(f.good(), "export: error writing '{}'", tmp.string());
  }
  fs::rename(tmp, path);
}

// model.safetensors, its index and model-*-of-*.safetensors: what a loader would pick up.
bool is_weight_file(const std::string& name) {
  return name == kSingleFile || name == kIndexFile ||
         (name.rfind("model-", 0) == 0 && name.find("-of-") != std::string::npos &&
          name.ends_with(".safetensors"));
}

nlohmann::json read_json(const fs::path& p, const char* what) {
  std::ifstream f(p);
  RA_CHECK(f.good(), "{} '{}' cannot be read", what, p.string());
  try {
    return nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    RA_FAIL("{} '{}' is not valid JSON: {}", what, p.string(), e.what());
  }
}

}  // namespace

HfExportResult write_hf_model(const std::string& out_dir, const TrainConfig& cfg,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const HfExportOptions& o) {
  const DType dtype = o.dtype;
  (void)torch_dtype_name(dtype);  // an Error for a non-float type, before anything is written
  RA_CHECK(o.shard_bytes > 0, "export: the shard size must be positive, got {}", o.shard_bytes);
  int64_t max_pos = o.max_position_embeddings;
  if (max_pos <= 0) {
    max_pos = cfg.train.seq_len;
    for (int64_t s : cfg.eval_seq_lens()) max_pos = std::max(max_pos, s);
  }

  // Shards in tensor order, each closed when the next tensor would take it past shard_bytes.
  std::vector<std::vector<size_t>> shards;
  int64_t in_shard = 0, total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t b = tensors[i].second.numel() * int64_t(dtype_size(dtype));
    if (shards.empty() || (in_shard > 0 && in_shard + b > o.shard_bytes)) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += b;
    total += b;
  }
  RA_CHECK(!shards.empty(), "export: the model has no tensors");

  // Before anything is written: an existing directory's files are someone's (a base model, a
  // checkpoint), so they are replaced only when asked.
  std::error_code ec;
  if (fs::exists(out_dir, ec)) {
    RA_CHECK(fs::is_directory(out_dir, ec), "export: '{}' exists and is not a directory", out_dir);
    RA_CHECK(!fs::exists(fs::path(out_dir) / "COMPLETE", ec) &&
                 !fs::exists(fs::path(out_dir) / "state.json", ec),
             "export: '{}' is a training checkpoint; export into a new directory", out_dir);
    RA_CHECK(o.overwrite || fs::is_empty(out_dir, ec),
             "export: '{}' already exists and is not empty; export into a new directory, or add "
             "--overwrite to replace its config.json and weight files (its other files stay)",
             out_dir);
  }
  fs::create_directories(out_dir);
  for (const auto& e : fs::directory_iterator(out_dir))
    if (e.is_regular_file() && is_weight_file(e.path().filename().string())) fs::remove(e.path());

  HfExportResult r;
  r.files.push_back("config.json");
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string name = shards.size() == 1 ? std::string(kSingleFile)
                                                : fmt::format("model-{:05d}-of-{:05d}.safetensors",
                                                              s + 1, shards.size());
    std::vector<std::pair<std::string, Tensor>> part;
    for (size_t i : shards[s]) {
      const auto& [tname, t] = tensors[i];
      RA_CHECK(t.dtype() == DType::F32, "export: tensor '{}' is {}, expected F32", tname,
               dtype_name(t.dtype()));
      part.emplace_back(tname, dtype == DType::F32 ? t : t.to(dtype));
      weight_map[tname] = name;
    }
    // transformers refuses safetensors files whose metadata lacks format = pt.
    save_safetensors((fs::path(out_dir) / name).string(), part, {{"format", "pt"}});
    r.files.push_back(name);
    r.tensors += int64_t(part.size());
  }
  r.bytes = total;
  if (shards.size() > 1) {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total}};
    index["weight_map"] = weight_map;
    write_text(fs::path(out_dir) / kIndexFile, index.dump(2) + "\n");
    r.files.push_back(kIndexFile);
  }
  write_text(fs::path(out_dir) / "config.json",
             make_hf_config_json(cfg.model, dtype, max_pos).dump(2) + "\n");
  return r;
}

std::string resolve_checkpoint_dir(const std::string& path) {
  RA_CHECK(fs::exists(path), "export: checkpoint '{}' does not exist", path);
  if (fs::exists(fs::path(path) / "state.json")) return path;
  for (const fs::path& p : {fs::path(path), fs::path(path) / "checkpoints"})
    if (auto latest = find_latest_checkpoint(p.string())) return *latest;
  RA_FAIL(
      "export: '{}' is neither a checkpoint (no state.json) nor a run directory holding a "
      "complete checkpoint",
      path);
}

HfExportResult export_checkpoint_to_hf(const std::string& checkpoint_dir,
                                       const std::string& out_dir, const HfExportOptions& o) {
  const fs::path dir(checkpoint_dir);
  const fs::path state_path = dir / "state.json";
  const nlohmann::json state = read_json(state_path, "checkpoint state");
  RA_CHECK(state.contains("config") && state.at("config").is_object(),
           "checkpoint state '{}' records no config, so the model shape is unknown",
           state_path.string());
  JsonConfig json(train_schema());
  json.load_text(state.at("config").dump(), state_path.string());
  const TrainConfig cfg = to_train_config(json);

  const std::string model_path = (dir / kSingleFile).string();
  const std::string want = state.contains("files") && state.at("files").contains(kSingleFile)
                               ? state.at("files").at(kSingleFile).value("fnv1a64", std::string())
                               : std::string();
  RA_CHECK(!want.empty(), "checkpoint state '{}' records no checksum for {}", state_path.string(),
           kSingleFile);
  const std::string got = file_checksum(model_path);
  RA_CHECK(got == want,
           "checkpoint file '{}' is corrupted: checksum {} does not match {} recorded in "
           "state.json",
           model_path, got, want);

  ModelDims d = ModelDims::from_config(cfg.model);
  d.validate();
  const SafetensorsFile st = SafetensorsFile::open(model_path);
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::vector<ParamLayout> layouts{embedding_layout(d)};
  for (int l = 0; l < d.layers; ++l) layouts.push_back(decoder_layout(d, l));
  layouts.push_back(head_layout(d));
  for (const ParamLayout& layout : layouts)
    for (const ParamEntry& e : layout.entries()) {
      RA_CHECK(st.contains(e.name), "checkpoint file '{}' has no tensor '{}'", model_path, e.name);
      RA_CHECK(st.info(e.name).shape == e.shape,
               "checkpoint file '{}': tensor '{}' has shape {}, the recorded config gives {}",
               model_path, e.name, shape_str(st.info(e.name).shape), shape_str(e.shape));
      tensors.emplace_back(e.name, st.load_f32(e.name));
    }
  return write_hf_model(out_dir, cfg, tensors, o);
}

}  // namespace ringattn
