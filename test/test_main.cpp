// MPI-aware Catch2 main: every rank runs the same tests; the job passes only if every rank
// passed (the failure count is all-reduced), so a failure on any rank fails ctest. Every rank
// prints its own report, so a failure names the rank it happened on.
#define CATCH_CONFIG_RUNNER
#include <mpi.h>
#include <catch2/catch.hpp>

#include "comm/mpi_env.h"

int main(int argc, char** argv) {
  ringattn::MpiEnv mpi(&argc, &argv);
  Catch::Session session;
  if (int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  const int failed = session.run();
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any_failed && failed == 0 && ringattn::MpiEnv::world_rank() == 0)
    std::fprintf(stderr, "a test failed on another rank (see its output above)\n");
  return any_failed ? 1 : 0;
}
