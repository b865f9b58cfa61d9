// Rank-aware logging through spdlog. `log::info(...)` and friends print on rank 0 only (messages
// about the job); `log::rank_info(...)` etc. print on whichever rank calls them, prefixed with
// the rank (messages about that rank). Call `log::init(rank, world)` once after MPI starts.
// set_level filters everything but rank_error, which always prints.
#pragma once

#include <spdlog/spdlog.h>

namespace ringattn::log {

void init(int rank, int world_size);
int rank();
// "trace" | "debug" | "info" | "warn" | "error" | "off"; unknown names raise an Error.
void set_level(const std::string& level);
// The level the user gave on the command line (ringattn --log-level): set now, and later
// set_level calls (a config's log_level) leave it alone.
void pin_level(const std::string& level);

template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (rank() == 0) spdlog::info(f, std::forward<Args>(args)...);
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  if (rank() == 0) spdlog::warn(f, std::forward<Args>(args)...);
}
template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (rank() == 0) spdlog::debug(f, std::forward<Args>(args)...);
}
template <typename... Args>
void rank_info(fmt::format_string<Args...> f, Args&&... args) {
  spdlog::info(f, std::forward<Args>(args)...);
}
template <typename... Args>
void rank_warn(fmt::format_string<Args...> f, Args&&... args) {
  spdlog::warn(f, std::forward<Args>(args)...);
}
// Errors are printed whatever the level (even "off"): a job that ends non-zero says why.
spdlog::logger& error_logger();
template <typename... Args>
void rank_error(fmt::format_string<Args...> f, Args&&... args) {
  error_logger().error(f, std::forward<Args>(args)...);
}

}  // namespace ringattn::log
