// `ringattn bench ...`: benchmarks. Performance is measured here, never by timed tests.
#include "apps/commands.h"

namespace ringattn::apps {

void add_bench_command(CLI::App& parent, Action& run) {
  auto* bench = parent.add_subcommand("bench", "Benchmarks (results also as JSON with --json)");
  bench->require_subcommand(1);
  add_bench_attention_command(*bench, run);
  add_bench_train_command(*bench, run);
  add_bench_throughput_command(*bench, run);
  add_bench_max_context_command(*bench, run);
}

}  // namespace ringattn::apps
