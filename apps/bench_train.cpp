// `ringattn bench train`: a few training steps of a config (the first a warm-up), reported as
// tokens/s, MFU against OpenBLAS sgemm measured on the same cores in the same run, peak allocator
// bytes per rank, and where the time goes (apps/bench_train_run.h).
//
//   mpirun -np 2 ringattn bench train --config configs/125m.json --set train.seq_len=8192
//       --set train.batch_size=1 --steps 3 --json 125m.json
#include <fmt/format.h>

#include <memory>
#include <string>
#include <vector>

#include "apps/bench_common.h"
#include "apps/bench_train_run.h"
#include "apps/cli_checks.h"
#include "apps/commands.h"
#include "comm/agreed_error.h"
#include "comm/mesh.h"
#include "comm/mpi_env.h"
#include "comm/watchdog.h"
#include "core/allocator.h"
#include "core/log.h"
#include "model/trainer.h"

namespace ringattn::apps {

namespace {

struct BenchTrainArgs {
  std::string file, json;
  std::vector<std::string> sets;
  int steps = 3, threads = 0;
};

int run_bench_train(const BenchTrainArgs& a) {
  BenchConfig bc = load_bench_config(a.file, a.sets);
  const TrainConfig& cfg = bc.cfg;
  const MeshShape shape = agreed_across_ranks("checking the config",
                                              [&] { return validate(cfg, MpiEnv::world_size()); });
  configure_bench_threads(a.threads);
  const WatchdogArm watchdog(cfg.comm.timeout_s);  // a stopped or dead rank ends the job
  Mesh mesh(shape, MPI_COMM_WORLD, cfg.comm.transport);
  const double sgemm = measure_gemm_gflops(mesh.world(), backend_for(cfg), cfg.model.dtype);
  // The config's limit holds, as in `ringattn train`: a step that does not fit ends the job
  // with the allocator's message (use `bench max-context` to find what fits).
  backend_for(cfg).allocator().set_limit(cfg.memory_limit_bytes());
  const TrainMeasurement m = measure_training(cfg, mesh, a.steps, sgemm);
  nlohmann::ordered_json j;
  j["config"] = a.file;
  j["sets"] = a.sets;
  j["mesh"] = mesh.describe();
  j["attention_impl"] = std::string(impl_name(cfg.attention.impl));
  j["layout"] = std::string(layout_name(cfg.attention.layout));
  j["ffn_chunk"] = cfg.model.ffn_chunk;
  j["checkpointing"] = std::string(checkpointing_name(cfg.model.checkpointing));
  const nlohmann::ordered_json fields = to_json(m);
  for (auto& [k, v] : fields.items()) j[k] = v;
  if (MpiEnv::world_rank() == 0) {
    const std::string title = fmt::format(
        "bench train: {} ({}, {} attention, layout {}, ffn_chunk {}, checkpointing "
        "{})",
        a.file.empty() ? std::string("defaults") : a.file, mesh.describe(),
        impl_name(cfg.attention.impl), layout_name(cfg.attention.layout), cfg.model.ffn_chunk,
        checkpointing_name(cfg.model.checkpointing));
    fmt::print("{}", format_report(m, title));
    if (!a.json.empty()) write_text_file(a.json, j.dump(2) + "\n");
  }
  return 0;
}

}  // namespace

void add_bench_train_command(CLI::App& bench, Action& run) {
  auto a = std::make_shared<BenchTrainArgs>();
  auto* cmd = bench.add_subcommand(
      "train", "Training steps of a config: tokens/s, MFU, peak bytes per rank, time breakdown");
  cmd->add_option("--config", a->file, "JSON config file (default: built-in defaults)");
  cmd->add_option("--set", a->sets, "Override one key: --set train.seq_len=8192 (repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("--steps", a->steps, "Steps to run; the first is an untimed warm-up (>= 2)")
      ->capture_default_str()
      ->check(number_in(2));
  cmd->add_option("--threads", a->threads, "Threads per rank (0: cores / ranks on the node)")
      ->capture_default_str()
      ->check(number_in(0));
  cmd->add_option("--json", a->json, "Write every figure as one JSON object");
  cmd->callback([&run, a] { run = [a] { return run_bench_train(*a); }; });
}

}  // namespace ringattn::apps
