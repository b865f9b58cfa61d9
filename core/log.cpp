#include "core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "core/error.h"

namespace ringattn::log {

namespace {
int g_rank = 0;
}

void init(int rank, int world_size) {
  g_rank = rank;
  // Log to stderr so that stdout stays clean for machine-readable output (bench JSON, --version).
  auto logger = spdlog::stderr_color_mt("ringattn");
  if (world_size > 1)
    logger->set_pattern(fmt::format("[%H:%M:%S.%e] [rank {}] [%^%l%$] %v", rank));
  else
    logger->set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
  spdlog::set_default_logger(logger);
}

int rank() {
  return g_rank;
}

void set_level(const std::string& level) {
  auto lv = spdlog::level::from_str(level);
  RA_CHECK(lv != spdlog::level::off || level == "off",
           "log level '{}' is not one of trace, debug, info, warn, error, off", level);
  spdlog::set_level(lv);
}

}  // namespace ringattn::log
