#include "core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <memory>
#include <string>

#include "core/error.h"

namespace ringattn::log {

namespace {
int g_rank = 0;
std::shared_ptr<spdlog::logger> g_errors;  // the default logger's sink, never filtered below err
}  // namespace

void init(int rank, int world_size) {
  g_rank = rank;
  // Log to stderr so that stdout stays clean for machine-readable output (bench JSON, --version).
  auto logger = spdlog::stderr_color_mt("ringattn");
  const std::string pattern = world_size > 1
                                  ? fmt::format("[%H:%M:%S.%e] [rank {}] [%^%l%$] %v", rank)
                                  : std::string("[%H:%M:%S.%e] [%^%l%$] %v");
  logger->set_pattern(pattern);
  spdlog::set_default_logger(logger);
  g_errors = std::make_shared<spdlog::logger>("ringattn-errors", logger->sinks().begin(),
                                              logger->sinks().end());
  g_errors->set_pattern(pattern);
  g_errors->set_level(spdlog::level::err);
}

spdlog::logger& error_logger() {
  // Before init (a test binary's own errors), the default logger.
  return g_errors ? *g_errors : *spdlog::default_logger();
}

int rank() {
  return g_rank;
}

namespace {
bool g_level_pinned = false;
}  // namespace

void pin_level(const std::string& level) {
  g_level_pinned = false;
  set_level(level);
  g_level_pinned = true;
}

void set_level(const std::string& level) {
  if (g_level_pinned) return;
  auto lv = spdlog::level::from_str(level);
  RA_CHECK(lv != spdlog::level::off || level == "off",
           "log level '{}' is not one of trace, debug, info, warn, error, off", level);
  spdlog::default_logger()->set_level(lv);  // not error_logger(): errors always print
}

}  // namespace ringattn::log
