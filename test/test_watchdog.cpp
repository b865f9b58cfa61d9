// The comm watchdog's decisions, in-process: late scopes and overdue stream operations reach the
// hang handler (a recorder here instead of ending the job), work that has not started is never
// counted, finished work is released. comm/stream_watch.h is the logic the NCCL transport feeds
// with CUDA events (comm/nccl/watched_stream.h); here its probes are plain flags. The job-ending
// path itself is tested end to end in test/cli/fault_test.sh.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "comm/stream_watch.h"
#include "comm/watchdog.h"
#include "hang_recorder.h"

using namespace ringattn;

namespace {

// One fake queued operation: the test moves it from queued to started to finished.
struct FakeOp {
  std::atomic<bool> started{false}, finished{false};
  std::atomic<int> released{0};
  StreamWatch::Probe probe() {
    StreamWatch::Probe p;
    p.started = [this] { return started.load(); };
    p.finished = [this] { return finished.load(); };
    p.release = [this] { ++released; };
    return p;
  }
};

void sleep_s(double s) {
  std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

}  // namespace

TEST_CASE("StreamWatch counts only the time an operation has run, in stream order",
          "[collectives]") {
  StreamWatch watch("2-rank group, world ranks 0-1");
  FakeOp a, b;
  watch.add("NCCL all_gather", a.probe());
  watch.add("NCCL reduce_scatter", b.probe());
  CHECK(watch.pending() == 2);

  // Queued behind computation: never late, however long it waits.
  CHECK(watch.overdue(0.0).empty());
  sleep_s(0.05);
  CHECK(watch.overdue(0.0).empty());

  // Started: the clock starts at the first poll that sees it so.
  a.started = true;
  CHECK(watch.overdue(0.02).empty());  // just seen started: has run 0 s
  sleep_s(0.06);
  std::vector<std::string> late = watch.overdue(0.02);
  REQUIRE(late.size() == 1);  // b is behind a: not started, not reported
  CHECK(late[0].find("NCCL all_gather running on the device for") != std::string::npos);
  CHECK(late[0].find("without finishing (2-rank group, world ranks 0-1)") != std::string::npos);
  CHECK(watch.overdue(10.0).empty());  // a generous timeout: not late yet

  // a finishes, b starts: a is released once, b is timed from now, not from when it was queued.
  a.finished = true;
  b.started = true;
  CHECK(watch.overdue(0.02).empty());
  CHECK(a.released == 1);
  CHECK(watch.pending() == 1);
  sleep_s(0.06);
  late = watch.overdue(0.02);
  REQUIRE(late.size() == 1);
  CHECK(late[0].find("NCCL reduce_scatter running") != std::string::npos);

  // add() releases finished work at the front, so the list stays short without the watchdog.
  b.finished = true;
  FakeOp c;
  watch.add("NCCL broadcast", c.probe());
  CHECK(b.released == 1);
  CHECK(watch.pending() == 1);
  CHECK(c.released == 0);
}

TEST_CASE("StreamWatch reports asynchronous errors and releases what is pending when destroyed",
          "[collectives]") {
  std::atomic<bool> failed{false};
  FakeOp op;
  {
    StreamWatch watch("4-rank group, world ranks 0-3", [&]() -> std::string {
      return failed ? "NCCL reported an error on this communicator: remote process exited" : "";
    });
    watch.add("NCCL ring exchange", op.probe());
    CHECK(watch.overdue(100.0).empty());
    failed = true;
    const std::vector<std::string> late = watch.overdue(100.0);
    REQUIRE(late.size() == 1);
    CHECK(late[0] ==
          "NCCL reported an error on this communicator: remote process exited (4-rank group, "
          "world ranks 0-3)");
    CHECK(op.released == 0);
  }
  CHECK(op.released == 1);  // destroyed with the operation pending: released once, not leaked
}

TEST_CASE("the watchdog hands late scopes and overdue stream operations to its hang handler",
          "[collectives]") {
  test::HangRecorder recorder;
  const WatchdogArm arm(0.25);  // polls every 50 ms

  SECTION("a scope blocked past the timeout") {
    {
      const WatchdogScope s("test receive", 3, "2-rank group, world ranks 2-3");
      REQUIRE(recorder.wait_for("test receive blocked for", 10.0));
    }
    CHECK(recorder.saw("waiting for rank 3 (2-rank group, world ranks 2-3)"));
  }

  SECTION("an operation queued for long, then running past the timeout") {
    FakeOp op;
    StreamWatch watch("2-rank group, world ranks 0-1");
    watch.add("NCCL all_reduce", op.probe());
    sleep_s(0.75);  // three timeouts queued behind computation: nothing to report
    CHECK(recorder.lines().empty());
    op.started = true;
    REQUIRE(recorder.wait_for("NCCL all_reduce running on the device for", 10.0));
    op.finished = true;
  }

  SECTION("work that finishes within the timeout is never reported, and is released") {
    // Its own timeout, far above the 50 ms each operation runs: a loaded machine may delay the
    // polls, never make an operation run longer.
    const WatchdogArm generous(2.0);
    FakeOp ops[3];
    {
      StreamWatch watch("2-rank group, world ranks 0-1");
      for (FakeOp& op : ops) {
        watch.add("NCCL all_gather", op.probe());
        op.started = true;
        sleep_s(0.05);
        op.finished = true;
      }
      const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (watch.pending() > 0 && std::chrono::steady_clock::now() < end) sleep_s(0.01);
      CHECK(watch.pending() == 0);  // the watchdog thread released them
    }
    for (FakeOp& op : ops) CHECK(op.released == 1);
    CHECK(recorder.lines().empty());
  }

  SECTION("a source removed is no longer asked") {
    std::atomic<int> asked{0};
    {
      StreamWatch watch("1-rank group, world ranks 0", [&]() -> std::string {
        ++asked;
        return "";
      });
      const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (asked == 0 && std::chrono::steady_clock::now() < end) sleep_s(0.01);
      REQUIRE(asked > 0);
    }
    const int after = asked;
    sleep_s(0.2);
    CHECK(asked == after);
  }
}
