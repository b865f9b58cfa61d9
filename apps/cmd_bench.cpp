#include "apps/commands.h"

namespace ringattn::apps {

void add_bench_command(CLI::App& parent, Action& run) {
  auto* cmd = parent.add_subcommand("bench", "Benchmarks");
  cmd->callback([&run] { run = [] { return 0; }; });
}

}  // namespace ringattn::apps
