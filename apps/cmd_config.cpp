// `ringattn config`: resolve a config (defaults, file, --set overrides), validate it for a world
// size and print it as JSON: the same resolution `ringattn train` does, without training, so a
// config can be checked before a job is queued.
//
//   ringattn config --config configs/demo.json --set train.steps=50
//   ringattn config --config configs/7b.json --world-size 16
//   ringattn config --markdown      (hidden: the key table embedded in docs/config.md)
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "apps/cli_checks.h"
#include "apps/commands.h"
#include "comm/agreed_error.h"
#include "comm/mpi_env.h"
#include "core/error.h"
#include "model/data/make_source.h"
#include "model/train_config.h"

namespace ringattn::apps {

namespace {

struct ConfigArgs {
  std::string file;
  std::vector<std::string> sets;
  int world_size = 0;  // 0: the MPI world's size
  bool markdown = false;
};

int run_config(const ConfigArgs& a) {
  const bool printer = MpiEnv::world_rank() == 0;
  if (a.markdown) {
    if (printer) std::fputs(train_schema().markdown().c_str(), stdout);
    return 0;
  }
  // Every rank checks the same files alike: one message for all of them (comm/agreed_error.h).
  const JsonConfig resolved = agreed_across_ranks("checking the config", [&] {
    JsonConfig json = load_train_json(a.file, a.sets);
    const int world = a.world_size > 0 ? a.world_size : MpiEnv::world_size();
    const TrainConfig cfg = to_train_config(json);
    try {
      validate(cfg, world);
    } catch (const Error& e) {
      // Presets name their mesh, so checking one from a single process needs the job's size.
      if (a.world_size > 0) throw;
      RA_FAIL("{} (checked for the {} rank{} of this launch; pass --world-size N to check for N)",
              e.what(), world, world == 1 ? "" : "s");
    }
    // The generated task needs no file: its checks (the vocabulary it needs, room for its records
    // at every length trained and evaluated) run here as they do when training starts. Files
    // (text, tokens) are checked when train opens them, on the nodes that read them.
    if (cfg.data.source == DataSource::Retrieval) {
      const auto src = make_batch_source(cfg);
      src->check_seq_len(cfg.train.seq_len);
      for (int64_t s : cfg.train.curriculum_seq_lens) src->check_seq_len(s);
      for (int64_t s : cfg.eval_seq_lens()) src->check_seq_len(s);
    }
    return json;
  });
  if (printer) std::printf("%s\n", resolved.dump().c_str());
  return 0;
}

}  // namespace

void add_config_command(CLI::App& parent, Action& run) {
  auto args = std::make_shared<ConfigArgs>();
  CLI::App* cmd = parent.add_subcommand(
      "config", "Print the resolved training config as JSON after checking it for a world size");
  cmd->add_option("--config", args->file, "JSON config file (default: built-in defaults)");
  cmd->add_option("--set", args->sets, "Override one key: --set train.seq_len=4096 (repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("--world-size", args->world_size,
                  "Validate the mesh for this many ranks (default: the MPI world size)")
      ->check(positive_count());
  // Hidden (empty group): a maintainer's tool for regenerating docs/config.md.
  cmd->add_flag("--markdown", args->markdown, "Print the key table of docs/config.md")->group("");
  cmd->callback([args, &run] { run = [args] { return run_config(*args); }; });
}

}  // namespace ringattn::apps
