// MPI bootstrap: one MpiEnv object lives for the whole program (apps and the test main).
#pragma once

#include <mpi.h>

namespace ringattn {

class MpiEnv {
 public:
  // Initialises MPI (asking for MPI_THREAD_MULTIPLE so a progress thread may drive the ring),
  // sets MPI_ERRORS_RETURN on the world, finds the rank's node-local index, and starts logging.
  MpiEnv(int* argc, char*** argv);
  ~MpiEnv();  // MPI_Finalize, watched by the watchdog after watch_finalize
  // Has the destructor's MPI_Finalize watched with this timeout (> 0; comm/watchdog.h): a rank
  // stopped or hung after the program's last collective then ends the job instead of holding it
  // for ever. The apps call it with the timeout their command armed; the tests do not (their
  // watchdog tests arm fractions of a second).
  static void watch_finalize(double timeout_s);
  MpiEnv(const MpiEnv&) = delete;
  MpiEnv& operator=(const MpiEnv&) = delete;

  static int world_rank();
  static int world_size();
  // Index of this rank among the ranks on its node (MPI_Comm_split_type SHARED); picks the GPU.
  static int local_rank();
  static int local_size();
  // The CPUs this rank may use: those of its affinity mask, shared evenly with the node's other
  // ranks whose masks overlap it (at least 1). The default thread count of every command.
  static int cpus_per_rank();
  static bool thread_multiple();  // true when MPI granted MPI_THREAD_MULTIPLE
  // Ends every rank of the job with `code` (used when one rank fails alone).
  [[noreturn]] static void abort(int code);
};

}  // namespace ringattn
