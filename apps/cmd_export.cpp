// `ringattn export`: a training checkpoint as a Hugging Face LLaMA directory that transformers
// loads with LlamaForCausalLM.from_pretrained (model/hf/hf_export.h).
//
//   ringattn export --checkpoint runs/x/checkpoints/step_100 --to hf_out [--dtype bf16]
//       [--shard-size 5GB] [--max-position-embeddings N]
//
// --checkpoint may also name a run directory (or its checkpoints/ folder): the newest complete
// checkpoint there is exported. Runs on rank 0 alone (other ranks of an mpirun do nothing).
#include <fmt/format.h>

#include <cctype>
#include <memory>
#include <string>

#include "apps/cli_checks.h"
#include "apps/commands.h"
#include "comm/mpi_env.h"
#include "core/error.h"
#include "core/log.h"
#include "model/hf/hf_config.h"
#include "model/hf/hf_export.h"

namespace ringattn::apps {

namespace {

struct ExportArgs {
  std::string checkpoint, to, dtype = "f32", shard_size = "5GB";
  int64_t max_positions = 0;
  bool overwrite = false;
};

// "5GB" (10^9, as transformers' max_shard_size counts), "500MiB" (2^20), "123456" (bytes).
int64_t parse_size(const std::string& text) {
  size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  std::string unit = text.substr(digits);
  for (char& c : unit) c = char(std::toupper(static_cast<unsigned char>(c)));
  int64_t mult = 0;
  if (unit.empty() || unit == "B") mult = 1;
  if (unit == "KB") mult = 1000;
  if (unit == "MB") mult = 1000 * 1000;
  if (unit == "GB") mult = 1000 * 1000 * 1000;
  if (unit == "KIB") mult = int64_t(1) << 10;
  if (unit == "MIB") mult = int64_t(1) << 20;
  if (unit == "GIB") mult = int64_t(1) << 30;
  RA_CHECK(digits > 0 && digits <= 12 && mult > 0,
           "export: --shard-size '{}' is not a size (e.g. 5GB, 500MB, 2GiB or a byte count)", text);
  return std::stoll(text.substr(0, digits)) * mult;
}

int run_export(const ExportArgs& a) {
  if (MpiEnv::world_rank() != 0) return 0;
  HfExportOptions o;
  o.dtype = parse_weight_dtype(a.dtype);
  o.shard_bytes = parse_size(a.shard_size);
  o.max_position_embeddings = a.max_positions;
  o.overwrite = a.overwrite;
  const std::string dir = resolve_checkpoint_dir(a.checkpoint);
  const HfExportResult r = export_checkpoint_to_hf(dir, a.to, o);
  log::info("export: {} -> {}: {} tensors, {} bytes of {} weights in {}", dir, a.to, r.tensors,
            r.bytes, torch_dtype_name(o.dtype), fmt::join(r.files, ", "));
  return 0;
}

}  // namespace

void add_export_command(CLI::App& parent, Action& run) {
  auto args = std::make_shared<ExportArgs>();
  CLI::App* cmd = parent.add_subcommand(
      "export", "Write a checkpoint as a Hugging Face LLaMA directory (config.json + safetensors)");
  cmd->add_option("--checkpoint", args->checkpoint,
                  "Checkpoint directory (step_N), or a run directory: its newest checkpoint")
      ->required();
  cmd->add_option("--to", args->to, "Output directory: new or empty (created)")->required();
  cmd->add_flag("--overwrite", args->overwrite,
                "Write into a directory that holds files: its config.json and weight files are "
                "replaced, other files stay (never a checkpoint)");
  cmd->add_option("--dtype", args->dtype, "Weight type: f32 (lossless), bf16 or f16")
      ->capture_default_str();
  cmd->add_option("--shard-size", args->shard_size,
                  "Largest weight file before sharding with model.safetensors.index.json")
      ->capture_default_str();
  cmd->add_option("--max-position-embeddings", args->max_positions,
                  "config.json's max_position_embeddings (default: the longest sequence length "
                  "of the checkpoint's config)")
      ->check(positive_count());
  cmd->callback([args, &run] { run = [args] { return run_export(*args); }; });
}

}  // namespace ringattn::apps
