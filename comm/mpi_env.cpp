#include "comm/mpi_env.h"

#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "comm/mpi_check.h"
#include "comm/watchdog.h"
#include "core/log.h"

namespace ringattn {

namespace {
int g_rank = 0, g_size = 1, g_local_rank = 0, g_local_size = 1, g_cpus_per_rank = 1;
bool g_thread_multiple = false;
double g_finalize_timeout_s = 0;  // watch_finalize's; 0: MPI_Finalize unwatched
// The CPUs this rank may run on (its affinity mask: a launcher that binds ranks, or taskset,
// narrows it), divided among the ranks of its node whose masks overlap it. Counting the node's
// cores instead gave a rank bound to one core (`mpirun -np 1` binds to a core) two threads on it.
int share_of_cpus(MPI_Comm node, int local_size) {
  const int procs = int(std::max(1u, std::thread::hardware_concurrency()));
  cpu_set_t mine;
  CPU_ZERO(&mine);
  if (::sched_getaffinity(0, sizeof mine, &mine) != 0 || CPU_COUNT(&mine) == 0)
    for (int c = 0; c < procs && c < CPU_SETSIZE; ++c) CPU_SET(c, &mine);
  std::vector<cpu_set_t> all(static_cast<size_t>(local_size));
  MPI_CHECK(MPI_Allgather(&mine, int(sizeof mine), MPI_BYTE, all.data(), int(sizeof mine), MPI_BYTE,
                          node));
  int sharers = 0;
  for (cpu_set_t& other : all) {
    cpu_set_t both;
    CPU_AND(&both, &mine, &other);
    if (CPU_COUNT(&both) > 0) ++sharers;
  }
  return std::max(1, CPU_COUNT(&mine) / std::max(1, sharers));
}

}  // namespace

std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(buf, size_t(len));
}

MpiEnv::MpiEnv(int* argc, char*** argv) {
  int provided = 0;
  MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  g_thread_multiple = provided >= MPI_THREAD_MULTIPLE;
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &g_rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &g_size));
  MPI_Comm node;
  MPI_CHECK(
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_rank, MPI_INFO_NULL, &node));
  MPI_CHECK(MPI_Comm_rank(node, &g_local_rank));
  MPI_CHECK(MPI_Comm_size(node, &g_local_size));
  g_cpus_per_rank = share_of_cpus(node, g_local_size);
  MPI_Comm_free(&node);
  log::init(g_rank, g_size);
}

MpiEnv::~MpiEnv() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  // MPI_Finalize waits for every rank: one stopped or hung after the last collective of a
  // command (its checkpoint saved, the job done) would hold the job, and its allocation, for
  // ever. The program may have the watchdog watch this wait too (watch_finalize).
  const double timeout_s = g_finalize_timeout_s;
  if (timeout_s <= 0) {
    MPI_Finalize();
    return;
  }
  Watchdog::arm(timeout_s);
  {
    const WatchdogScope watch("MPI_Finalize (waiting for every rank to end)", -1, "all ranks");
    MPI_Finalize();
  }
  Watchdog::disarm();
}

int MpiEnv::world_rank() {
  return g_rank;
}
int MpiEnv::world_size() {
  return g_size;
}
int MpiEnv::local_rank() {
  return g_local_rank;
}
int MpiEnv::local_size() {
  return g_local_size;
}
void MpiEnv::watch_finalize(double timeout_s) {
  g_finalize_timeout_s = timeout_s;
}
int MpiEnv::cpus_per_rank() {
  return g_cpus_per_rank;
}
bool MpiEnv::thread_multiple() {
  return g_thread_multiple;
}

void MpiEnv::abort(int code) {
  spdlog::default_logger()->flush();
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

}  // namespace ringattn
