// `ringattn bench throughput`: tokens/s, MFU and peak bytes per rank over a sweep of sequence
// lengths for each implementation (apps/bench_variants.h says how each uses the world's ranks).
// Results: <out>/throughput.json ({"rows": [...]}) and <out>/throughput.csv, out = run_dir.
//
//   mpirun -np 4 ringattn bench throughput --config configs/experiments/compare_cpu.json
//       --seq-lens 1024,2048,4096
#include <fmt/format.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "apps/bench_common.h"
#include "apps/bench_train_run.h"
#include "apps/bench_variants.h"
#include "apps/cli_checks.h"
#include "apps/commands.h"
#include "comm/mesh.h"
#include "comm/mpi_env.h"
#include "comm/watchdog.h"
#include "core/allocator.h"
#include "core/log.h"
#include "model/trainer.h"

namespace ringattn::apps {

namespace {

struct BenchThroughputArgs {
  std::string file, out;
  std::vector<std::string> sets;
  std::vector<int64_t> seq_lens{1024, 2048, 4096};
  std::vector<std::string> impls{"vanilla", "blockwise", "blockwise_ffn", "ring"};
  int steps = 2, threads = 0;
};

int run_bench_throughput(const BenchThroughputArgs& a) {
  BenchConfig bc = load_bench_config(a.file, a.sets);
  const TrainConfig& base = bc.cfg;
  const int world = MpiEnv::world_size();
  const std::vector<BenchVariant> variants = parse_variants(a.impls);
  configure_bench_threads(a.threads);
  const WatchdogArm watchdog(base.comm.timeout_s);  // a stopped or dead rank ends the job
  const size_t limit = base.memory_limit_bytes();
  double sgemm = 0;
  {
    Mesh all(MeshShape{1, world, 1, 1}, MPI_COMM_WORLD, base.comm.transport);
    sgemm = measure_gemm_gflops(all.world(), backend_for(base), base.model.dtype);
  }
  // The sweep measures what each length costs, including lengths that exceed the limit (the
  // `fits` column says so): an enforced limit would end the job at the first of them.
  Allocator& alloc = backend_for(base).allocator();  // the config's device
  alloc.set_limit(0);

  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  std::string csv =
      "impl,ffn_blockwise,ranks,seq_len,tokens_per_s,mfu,peak_bytes,fits_limit,step_s,gemm_frac,"
      "attention_frac,elementwise_frac,communication_frac,other_frac\n";
  for (BenchVariant v : variants) {
    const int64_t unit = variant_seq_unit(base, v, world);
    std::unique_ptr<Mesh> mesh;
    for (int64_t s : a.seq_lens) {
      if (s <= 0 || s % unit != 0) {
        log::warn("{}: skipping seq_len {}: not a multiple of {} (layout split x attention tiles)",
                  variant_name(v), s, unit);
        continue;
      }
      const TrainConfig cfg = variant_config(base, v, world, s);
      const MeshShape shape = validate(cfg, world);
      if (!mesh) mesh = std::make_unique<Mesh>(shape, MPI_COMM_WORLD, base.comm.transport);
      const TrainMeasurement m = measure_training(cfg, *mesh, a.steps, sgemm);
      nlohmann::ordered_json r;
      r["impl"] = std::string(variant_name(v));
      r["ffn_blockwise"] = variant_ffn_blockwise(v);
      r["fits_limit"] = limit == 0 || m.peak_bytes <= limit;
      const nlohmann::ordered_json fields = to_json(m);
      for (auto& [k, val] : fields.items()) r[k] = val;
      rows.push_back(r);
      const RankBreakdown& b = m.mean;
      const double w = b.wall_s > 0 ? b.wall_s : 1.0;
      csv += fmt::format(
          "{},{},{},{},{:.1f},{:.4f},{},{},{:.4f},{:.4f},{:.4f},{:.4f},{:.4f},{:.4f}\n",
          variant_name(v), variant_ffn_blockwise(v), world, s, m.tokens_per_s, m.mfu, m.peak_bytes,
          r["fits_limit"].get<bool>(), m.step_s, b.gemm_s / w, b.attention_s / w,
          b.elementwise_s / w, b.communication_s() / w, b.other_s() / w);
      log::info("{:<14} S={:<7} tokens/s {:>9.0f}  MFU {:5.1f}%  peak/rank {:>10}{}  step {:.2f} s",
                variant_name(v), s, m.tokens_per_s, 100 * m.mfu, format_bytes(m.peak_bytes),
                r["fits_limit"].get<bool>() ? "" : " (over limit)", m.step_s);
    }
  }
  alloc.set_limit(limit);
  if (MpiEnv::world_rank() == 0) {
    const std::string out = a.out.empty() ? base.run_dir : a.out;
    nlohmann::ordered_json j;
    j["config"] = a.file;
    j["sets"] = a.sets;
    j["ranks"] = world;
    j["peak_gemm"] = gemm_name(base.model.dtype);
    j["peak_gemm_gflops"] = sgemm;
    if (base.model.dtype == DType::F32) j["sgemm_gflops"] = sgemm;
    j["memory_limit_bytes"] = limit;
    j["rows"] = rows;
    write_text_file((std::filesystem::path(out) / "throughput.json").string(), j.dump(2) + "\n");
    write_text_file((std::filesystem::path(out) / "throughput.csv").string(), csv);
    log::info("wrote {0}/throughput.json and {0}/throughput.csv", out);
  }
  return 0;
}

}  // namespace

void add_bench_throughput_command(CLI::App& bench, Action& run) {
  auto a = std::make_shared<BenchThroughputArgs>();
  auto* cmd = bench.add_subcommand(
      "throughput", "Tokens/s, MFU and peak bytes per rank vs sequence length, per implementation");
  cmd->add_option("--config", a->file, "JSON config file (default: built-in defaults)");
  cmd->add_option("--set", a->sets, "Override one key (repeatable)")->allow_extra_args(false);
  cmd->add_option("--seq-lens", a->seq_lens, "Global sequence lengths")
      ->delimiter(',')
      ->capture_default_str()
      ->check(positive_count());
  cmd->add_option("--impls", a->impls, "vanilla, blockwise, blockwise_ffn, ring")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--steps", a->steps, "Steps per point; the first is an untimed warm-up (>= 2)")
      ->capture_default_str()
      ->check(number_in(2));
  cmd->add_option("--threads", a->threads, "Threads per rank (0: cores / ranks on the node)")
      ->capture_default_str()
      ->check(number_in(0));
  cmd->add_option("--out", a->out, "Directory for throughput.json/.csv (default: run_dir)");
  cmd->callback([&run, a] { run = [a] { return run_bench_throughput(*a); }; });
}

}  // namespace ringattn::apps
