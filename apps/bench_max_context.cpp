// `ringattn bench max-context`: for each implementation, the longest train.seq_len whose full
// training step fits memory_limit_gb per rank (apps/bench_max_context_search.h explains the
// search and why it cannot hang). Results: <out>/max_context.json
// ({"results": [{"impl", "ffn_blockwise", "ranks", "max_seq_len", "peak_bytes", ...}]}) and
// <out>/max_context.csv, out = run_dir.
//
//   mpirun -np 4 ringattn bench max-context --config configs/experiments/max_context_cpu.json
#include <fmt/format.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "apps/bench_common.h"
#include "apps/bench_max_context_search.h"
#include "apps/cli_checks.h"
#include "apps/commands.h"
#include "comm/mpi_env.h"
#include "comm/watchdog.h"
#include "core/allocator.h"
#include "core/error.h"
#include "core/log.h"

namespace ringattn::apps {

namespace {

struct BenchMaxContextArgs {
  std::string file, out;
  std::vector<std::string> sets;
  std::vector<std::string> impls{"vanilla", "blockwise", "blockwise_ffn", "ring"};
  MaxContextOptions search;
  int threads = 0;
};

int run_bench_max_context(const BenchMaxContextArgs& a) {
  BenchConfig bc = load_bench_config(a.file, a.sets);
  const TrainConfig& base = bc.cfg;
  const int world = MpiEnv::world_size();
  const std::vector<BenchVariant> variants = parse_variants(a.impls);
  const size_t limit = base.memory_limit_bytes();
  RA_CHECK(limit > 0,
           "bench max-context: memory_limit_gb = {}; set it > 0 (GiB per rank) in the config or "
           "with --set memory_limit_gb=0.25",
           base.memory_limit_gb);
  RA_CHECK(a.search.resolution >= 0, "--resolution = {} must be >= 0", a.search.resolution);
  configure_bench_threads(a.threads);
  const WatchdogArm watchdog(base.comm.timeout_s);  // a stopped or dead rank ends the job
  log::info("max context within {} per rank on {} rank(s), resolution {}", format_bytes(limit),
            world, a.search.resolution);

  nlohmann::ordered_json results = nlohmann::ordered_json::array();
  std::string csv =
      "impl,ffn_blockwise,ranks,max_seq_len,peak_bytes,next_seq_len,next_peak_bytes,"
      "limit_bytes,capped\n";
  for (BenchVariant v : variants) {
    const MaxContextResult r =
        search_max_context(base, v, limit, a.search, [v](const MaxContextTrial& t) {
          log::info("  {:<14} S={:<8} peak/rank {:>10}  {}  ({:.1f} s)", variant_name(v), t.seq_len,
                    format_bytes(t.peak_bytes), t.fits ? "fits" : "too big", t.seconds);
        });
    log::info("{:<14} on {} rank(s): max seq_len {} (peak {}{}){}", variant_name(v), r.ranks,
              r.max_seq_len, format_bytes(r.peak_bytes),
              r.next_seq_len
                  ? fmt::format("; {} needs {}", r.next_seq_len, format_bytes(r.next_peak_bytes))
                  : std::string(),
              r.capped ? " [capped by --max-seq-len]" : "");
    results.push_back(to_json(r));
    csv += fmt::format("{},{},{},{},{},{},{},{},{}\n", variant_name(v), variant_ffn_blockwise(v),
                       r.ranks, r.max_seq_len, r.peak_bytes, r.next_seq_len, r.next_peak_bytes,
                       r.limit_bytes, r.capped);
  }
  if (MpiEnv::world_rank() == 0) {
    const std::string out = a.out.empty() ? base.run_dir : a.out;
    nlohmann::ordered_json j;
    j["config"] = a.file;
    j["sets"] = a.sets;
    j["memory_limit_bytes"] = limit;
    j["results"] = results;
    write_text_file((std::filesystem::path(out) / "max_context.json").string(), j.dump(2) + "\n");
    write_text_file((std::filesystem::path(out) / "max_context.csv").string(), csv);
    log::info("wrote {0}/max_context.json and {0}/max_context.csv", out);
  }
  return 0;
}

}  // namespace

void add_bench_max_context_command(CLI::App& bench, Action& run) {
  auto a = std::make_shared<BenchMaxContextArgs>();
  auto* cmd = bench.add_subcommand(
      "max-context", "Longest sequence whose training step fits memory_limit_gb per rank");
  cmd->add_option("--config", a->file, "JSON config file (default: built-in defaults)");
  cmd->add_option("--set", a->sets, "Override one key (repeatable)")->allow_extra_args(false);
  cmd->add_option("--impls", a->impls, "vanilla, blockwise, blockwise_ffn, ring")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--start", a->search.start, "First length tried (0: the smallest valid)")
      ->capture_default_str()
      ->check(number_in(0));
  cmd->add_option("--max-seq-len", a->search.max_seq_len, "Never try longer sequences")
      ->capture_default_str()
      ->check(positive_count());
  cmd->add_option("--resolution", a->search.resolution,
                  "Stop bisecting at this fraction of the result (0: exact to the length grid)")
      ->capture_default_str()
      ->check(number_in(0, 1));
  cmd->add_option("--threads", a->threads, "Threads per rank (0: cores / ranks on the node)")
      ->capture_default_str()
      ->check(number_in(0));
  cmd->add_option("--out", a->out, "Directory for max_context.json/.csv (default: run_dir)");
  cmd->callback([&run, a] { run = [a] { return run_bench_max_context(*a); }; });
}

}  // namespace ringattn::apps
