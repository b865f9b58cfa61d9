#include "comm/agreed_error.h"

#include <mpi.h>

#include <cstdint>
#include <vector>

#include "comm/mpi_check.h"
#include "comm/watchdog.h"
#include "core/log.h"

namespace ringattn {

namespace {

[[noreturn]] void raise(const std::vector<int32_t>& failed, const Error* mine,
                        const std::function<std::string(int)>& others) {
  if (mine) throw AgreedError(*mine, /*own=*/true);
  for (size_t r = 0; r < failed.size(); ++r)
    if (failed[r]) throw AgreedError(Error(others(int(r)), __FILE__, __LINE__), /*own=*/false);
  RA_FAIL("agreed error: no rank failed");  // unreachable: called only when one did
}

bool any(const std::vector<int32_t>& failed) {
  for (int32_t f : failed)
    if (f) return true;
  return false;
}

}  // namespace

void raise_if_any_rank_failed(Communicator& comm, const std::string& error,
                              const std::function<std::string(int failed_rank)>& others) {
  const Error own(error, __FILE__, __LINE__);
  raise_if_any_rank_failed(&comm, error.empty() ? nullptr : &own, others);
}

void raise_if_any_rank_failed(Communicator* comm, const Error* mine,
                              const std::function<std::string(int failed_rank)>& others) {
  const int32_t flag = mine ? 1 : 0;
  std::vector<int32_t> failed;
  if (comm) {
    failed.assign(size_t(comm->size()), 0);
    comm->all_gather(&flag, failed.data(), 1, DType::I32);
  } else {
    int size = 1;
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
    failed.assign(size_t(size), 0);
    // Before a command arms the watchdog (its config is what is being read): a rank stuck reading
    // its inputs must not hold the others here for ever, and should the wait end the job, this
    // rank's own verdict is in the watchdog's report.
    const bool arm = !Watchdog::armed();
    if (arm) Watchdog::arm(kAgreementTimeoutS);
    {
      const WatchdogScope watch(
          mine ? "agreeing with the other ranks after this rank failed: " + mine->describe()
               : std::string("agreeing with the other ranks that this rank succeeded"),
          -1, "all ranks");
      MPI_CHECK(
          MPI_Allgather(&flag, 1, MPI_INT32_T, failed.data(), 1, MPI_INT32_T, MPI_COMM_WORLD));
    }
    if (arm) Watchdog::disarm();
  }
  if (any(failed)) raise(failed, mine, others);
}

void report_agreed_error(const AgreedError& e, double timeout_s) {
  int rank = 0, size = 1;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  const std::string text = e.describe();
  // Per rank: whether its message is its own failure, and the message's hash.
  const uint64_t mine[2] = {e.own() ? 1u : 0u, std::hash<std::string>{}(text)};
  std::vector<uint64_t> all(2 * size_t(size), 0);
  if (size > 1) {
    const bool arm = !Watchdog::armed() && timeout_s > 0;
    if (arm) Watchdog::arm(timeout_s);
    {
      const WatchdogScope watch("reporting an error every rank raised", -1, "all ranks");
      MPI_CHECK(MPI_Allgather(mine, 2, MPI_UINT64_T, all.data(), 2, MPI_UINT64_T, MPI_COMM_WORLD));
    }
    if (arm) Watchdog::disarm();
  } else {
    all = {mine[0], mine[1]};
  }
  bool anyone_failed = false;
  bool said_by_lower_rank = false;
  for (int r = 0; r < size; ++r) {
    const bool own = all[2 * size_t(r)] != 0;
    anyone_failed = anyone_failed || own;
    if (r < rank && own && all[2 * size_t(r) + 1] == mine[1]) said_by_lower_rank = true;
  }
  // A pointer at another rank's message names no place in the code: it is not where anything
  // went wrong.
  if (e.own() ? !said_by_lower_rank : rank == 0 || !anyone_failed)
    log::rank_error("{}", e.own() ? text : std::string(e.what()));
}

}  // namespace ringattn
