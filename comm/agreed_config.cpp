#include "comm/agreed_config.h"

#include <mpi.h>

#include <algorithm>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "comm/agreed_error.h"
#include "comm/mpi_check.h"
#include "comm/watchdog.h"
#include "core/json_config.h"

namespace ringattn {

namespace {

// Rank 0's `text` on every rank of MPI_COMM_WORLD, bounded like an agreement.
std::string rank0_text(const std::string& text) {
  int rank = 0;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  std::string root = rank == 0 ? text : std::string();
  const bool arm = !Watchdog::armed();
  if (arm) Watchdog::arm(kAgreementTimeoutS);
  {
    const WatchdogScope watch(
        "receiving rank 0's command line or config (to check every rank runs the same)", 0,
        "all ranks");
    unsigned long long n = root.size();
    MPI_CHECK(MPI_Bcast(&n, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD));
    root.resize(size_t(n));
    if (n > 0) MPI_CHECK(MPI_Bcast(root.data(), int(n), MPI_CHAR, 0, MPI_COMM_WORLD));
  }
  if (arm) Watchdog::disarm();
  return root;
}

}  // namespace

void require_same_command_line(const std::vector<std::string>& args) {
  int size = 1;
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  if (size == 1) return;
  // As JSON: arguments may hold any bytes but NUL, and the list keeps their boundaries.
  // (Bytes that are not UTF-8 are replaced alike on every rank, so they compare as they came.)
  const std::string text =
      nlohmann::json(args).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  const nlohmann::json mine = nlohmann::json::parse(text);
  const nlohmann::json root = nlohmann::json::parse(rank0_text(text));
  std::string difference;
  for (size_t i = 0; difference.empty() && i < std::max(mine.size(), root.size()); ++i) {
    const auto quoted = [](const nlohmann::json& list, size_t k) {
      return k < list.size() ? fmt::format("'{}'", list[k].get<std::string>())
                             : std::string("missing");
    };
    const std::string here = quoted(mine, i), there = quoted(root, i);
    if (here != there)
      difference = fmt::format("argument {} is {} here and {} on rank 0", i + 1, here, there);
  }
  const Error own(fmt::format("this rank was started with other arguments than rank 0: {}; every "
                              "rank must be started with the same command line",
                              difference),
                  __FILE__, __LINE__);
  raise_if_any_rank_failed(nullptr, difference.empty() ? nullptr : &own, [](int r) {
    return fmt::format(
        "rank {} was started with other arguments than rank 0 (its message says which); every "
        "rank must be started with the same command line",
        r);
  });
}

std::string first_config_difference(const std::string& mine, const std::string& rank0) {
  if (mine == rank0) return "";
  try {
    const nlohmann::json a = nlohmann::json::parse(mine).flatten();
    const nlohmann::json b = nlohmann::json::parse(rank0).flatten();
    if (a == b) return "";  // the same keys and values, written in another order
    for (auto it = b.begin(); it != b.end(); ++it) {
      const auto here = a.find(it.key());
      if (here == a.end())
        return fmt::format("{} is not set here and is {} on rank 0",
                           config_key_of_pointer(it.key()), it.value().dump());
      if (*here != it.value())
        return fmt::format("{} is {} here and {} on rank 0", config_key_of_pointer(it.key()),
                           here->dump(), it.value().dump());
    }
    for (auto it = a.begin(); it != a.end(); ++it)
      if (!b.contains(it.key()))
        return fmt::format("{} is {} here and not set on rank 0", config_key_of_pointer(it.key()),
                           it.value().dump());
  } catch (const nlohmann::json::exception&) {
  }
  return "the two differ";  // one of them is not JSON
}

void require_same_config_on_every_rank(const std::string& config_json) {
  int rank = 0, size = 1;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  if (size == 1) return;
  const std::string root = rank0_text(config_json);
  const std::string difference = rank == 0 ? "" : first_config_difference(config_json, root);
  const Error mine(
      // Without this rank's number: ranks that differ alike say it once (comm/agreed_error.h).
      fmt::format("this rank resolved another config than rank 0: {}; every rank must be given "
                  "the same config file contents and --set options",
                  difference),
      __FILE__, __LINE__);
  raise_if_any_rank_failed(nullptr, difference.empty() ? nullptr : &mine, [](int r) {
    return fmt::format(
        "rank {} resolved another config than rank 0 (its message names the key); every rank "
        "must be given the same config file contents and --set options",
        r);
  });
}

}  // namespace ringattn
