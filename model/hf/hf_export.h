// Writing a model as a Hugging Face LLaMA directory (ringattn export): config.json plus the
// weights as safetensors, one model.safetensors when they fit in one shard, otherwise
// model-0000i-of-0000n.safetensors shards and model.safetensors.index.json, the layout
// transformers' save_pretrained writes and LlamaForCausalLM.from_pretrained loads.
//
// Float32 export is lossless: the checkpoint's master weights are written bit for bit, so
// export then import gives the same parameters. BF16 and F16 round to nearest even.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "model/train_config.h"

namespace ringattn {

struct HfExportOptions {
  DType dtype = DType::F32;                // F32, BF16 or F16
  int64_t shard_bytes = int64_t(5) << 30;  // largest shard (a larger tensor gets its own)
  int64_t max_position_embeddings = 0;     // 0: the config's longest sequence length
  // Write into a directory that already holds files, replacing its config.json and weight files
  // (others stay). Without it only a new or empty directory is written. Never a checkpoint.
  bool overwrite = false;
};

// What was written.
struct HfExportResult {
  std::vector<std::string> files;  // relative names, config.json first
  int64_t tensors = 0, bytes = 0;  // weights only
};

// Writes `tensors` (Hugging Face names and shapes, F32) and the config.json of `cfg.model` into
// `out_dir` (created; weight files of an earlier export there are removed first, so no stale
// shard is left for a loader to find).
HfExportResult write_hf_model(const std::string& out_dir, const TrainConfig& cfg,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const HfExportOptions& options);

// The directory of a checkpoint: `path` itself when it holds state.json, else the newest
// complete checkpoint under `path` or `path`/checkpoints (a run directory); an Error otherwise.
std::string resolve_checkpoint_dir(const std::string& path);

// Exports the checkpoint `checkpoint_dir` (model.safetensors, checked against the checksum in
// state.json, and the model config state.json recorded) to `out_dir`.
HfExportResult export_checkpoint_to_hf(const std::string& checkpoint_dir,
                                       const std::string& out_dir, const HfExportOptions& options);

}  // namespace ringattn
