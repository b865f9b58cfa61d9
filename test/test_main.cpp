// MPI-aware Catch2 main: every rank runs the same tests; the job passes only if every rank
// passed (the failure count is all-reduced), so a failure on any rank fails ctest. Every rank
// prints its own report, so a failure names the rank it happened on.
//
// A test case that fails on some ranks only can leave the others waiting for ever in a collective
// the failed ranks left (a test's REQUIRE, an exception between two collectives). Then ctest's
// timeout would end the job ten minutes later without saying why. So the ranks meet at the end of
// every test case (a barrier on a communicator of their own); a rank whose test case failed waits
// there at most RINGATTN_TEST_PEER_WAIT_S seconds (default 60) for the others, then names the
// test case and ends the job. (Ending it early turns no pass into a failure, since this rank
// failed, but for a failure Catch counts as allowed, [!mayfail] or CHECK_NOFAIL, which none of
// our tests use; at worst a slow peer's own report is cut short.) A rank that crashes (Catch
// reports the test case from its signal handler) does not wait: MPI ends the job on its own.
#define CATCH_CONFIG_RUNNER
#include <mpi.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "comm/mpi_env.h"

namespace {

MPI_Comm test_case_ends = MPI_COMM_NULL;  // the ranks' meeting point, away from the tests' own

double peer_wait_seconds() {
  const char* v = std::getenv("RINGATTN_TEST_PEER_WAIT_S");
  if (!v || !*v) return 60;
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  return end && *end == '\0' && s > 0 ? s : 60;
}

struct RanksMeetAfterEachTestCase : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  // (Catch does not pass fatalErrorEncountered on to listeners; the assertion it fakes, it does.)
  bool assertionEnded(const Catch::AssertionStats& stats) override {
    if (stats.assertionResult.getResultType() == Catch::ResultWas::FatalErrorCondition)
      crashed_ = true;
    return true;
  }
  void testCaseEnded(const Catch::TestCaseStats& stats) override {
    if (test_case_ends == MPI_COMM_NULL || crashed_) return;
    MPI_Request meet = MPI_REQUEST_NULL;
    MPI_Ibarrier(test_case_ends, &meet);
    // Any failed assertion, [!mayfail] ones too: the others may be stuck all the same.
    const bool passed = stats.totals.assertions.allPassed();
    const double limit = peer_wait_seconds();
    const auto start = std::chrono::steady_clock::now();
    // Peers usually arrive within microseconds: poll fast at first, then every 20 ms.
    auto pause = std::chrono::microseconds(50);
    for (bool noted = false;;) {
      int met = 0;
      MPI_Test(&meet, &met, MPI_STATUS_IGNORE);
      if (met) return;
      const double waited =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (!passed && waited > limit) break;
      if (passed && !noted && waited > limit) {
        // A slow peer is no reason to give up; but should a peer be stuck in a collective this
        // rank left (the test passed here), the log names the test case before ctest's timeout.
        std::fprintf(stderr,
                     "rank %d: passed test case '%s' and has waited over %g s for the other ranks "
                     "to finish it (still waiting)\n",
                     ringattn::MpiEnv::world_rank(), stats.testInfo.name.c_str(), limit);
        std::fflush(stderr);
        noted = true;
      }
      std::this_thread::sleep_for(pause);
      pause = std::min<std::chrono::microseconds>(pause * 2, std::chrono::milliseconds(20));
    }
    std::fprintf(stderr,
                 "rank %d: test case '%s' failed here, and the other ranks did not finish it "
                 "within %g s (RINGATTN_TEST_PEER_WAIT_S): they are probably waiting in a "
                 "collective this rank left. Ending the job.\n",
                 ringattn::MpiEnv::world_rank(), stats.testInfo.name.c_str(), limit);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }

 private:
  bool crashed_ = false;  // in a fatal signal's handler: no MPI
};

}  // namespace

CATCH_REGISTER_LISTENER(RanksMeetAfterEachTestCase)

int main(int argc, char** argv) {
  ringattn::MpiEnv mpi(&argc, &argv);
  Catch::Session session;
  if (int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  MPI_Comm_dup(MPI_COMM_WORLD, &test_case_ends);
  const int failed = session.run();
  MPI_Comm_free(&test_case_ends);
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any_failed && failed == 0 && ringattn::MpiEnv::world_rank() == 0)
    std::fprintf(stderr, "a test failed on another rank (see its output above)\n");
  return any_failed ? 1 : 0;
}
