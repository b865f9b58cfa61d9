#include "core/debug_faults.h"

#include <cstdlib>
#include <map>
#include <sstream>
#include <string>

#include "core/error.h"

namespace ringattn {

namespace {

constexpr const char* kVar = "RINGATTN_DEBUG_FAULTS";
constexpr const char* kKeys[] = {"nan_grad_step",
                                 "nan_grad_rank",
                                 "stop_step",
                                 "stop_rank",
                                 "checkpoint_crash_step",
                                 "step_sleep_ms",
                                 "checkpoint_free_kib",
                                 "checkpoint_write_fail_rank",
                                 "exit_stop_rank",
                                 "fsdp_communicate_alone",
                                 "sim_fault_launch",
                                 "sim_fault_rank"};

std::map<std::string, int64_t, std::less<>> parse() {
  std::map<std::string, int64_t, std::less<>> out;
  const char* env = std::getenv(kVar);
  if (env == nullptr) return out;
  std::stringstream in(env);
  for (std::string item; std::getline(in, item, ',');) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    RA_CHECK(eq != std::string::npos, "{}: '{}' is not KEY=INTEGER", kVar, item);
    const std::string key = item.substr(0, eq);
    bool known = false;
    for (const char* k : kKeys) known = known || key == k;
    RA_CHECK(known, "{}: unknown key '{}'", kVar, key);
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str() + eq + 1, &end, 10);
    RA_CHECK(end != item.c_str() + eq + 1 && *end == '\0', "{}: '{}' is not KEY=INTEGER", kVar,
             item);
    out[key] = v;
  }
  return out;
}

}  // namespace

int64_t debug_fault(std::string_view key, int64_t fallback) {
  static const auto table = parse();
  const auto it = table.find(key);
  return it == table.end() ? fallback : it->second;
}

}  // namespace ringattn
