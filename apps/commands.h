// Subcommands of the ringattn executable. Each add_* function declares its options on `parent`
// and stores in `run` what to do when that subcommand was chosen (returns the exit code).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace ringattn::apps {

using Action = std::function<int()>;

void add_attention_command(CLI::App& parent, Action& run);
void add_bench_command(CLI::App& parent, Action& run);
void add_config_command(CLI::App& parent, Action& run);
void add_train_command(CLI::App& parent, Action& run);
void add_eval_command(CLI::App& parent, Action& run);
void add_forward_command(CLI::App& parent, Action& run);
void add_export_command(CLI::App& parent, Action& run);
// Subcommands of `bench`.
void add_bench_attention_command(CLI::App& bench, Action& run);
void add_bench_train_command(CLI::App& bench, Action& run);
void add_bench_throughput_command(CLI::App& bench, Action& run);
void add_bench_max_context_command(CLI::App& bench, Action& run);

}  // namespace ringattn::apps
