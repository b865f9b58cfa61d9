// Operations queued on a device stream, as the comm watchdog sees them (comm/watchdog.h).
//
// A collective on the NCCL transport is queued on the communication stream and the host moves on;
// if a peer has died the collective never finishes, and the host hangs later in an unrelated
// device synchronisation. The transport hands each operation it queues to a StreamWatch with two
// probes: `started` (the stream has reached it: an event recorded just before it has completed)
// and `finished` (an event recorded just after it). The watchdog thread polls them:
//
//  * an operation that has not started is waiting for the computation that produces its input, or
//    for an earlier operation on the stream: not counted, so a long computation never looks like a
//    hang (that earlier operation is the one reported);
//  * an operation seen started is timed from the first poll that saw it so (the clock starts at
//    most one polling period late, which the period bounds at 10% of the timeout);
//  * one that has run for longer than the timeout without finishing is reported with its name, its
//    group and how long it has run; so is an error the transport reports asynchronously
//    (`async_error`, NCCL's ncclCommGetAsyncError).
//
// Finished operations are released (their probes' `release`, e.g. returning events to a pool) by
// whichever thread sees them finished first: the watchdog thread, or the issuing thread on its
// next add(), so the list stays short even when the watchdog polls rarely. (What is pending when
// the watchdog is disarmed stays until the next add() or the destructor.) Thread-safe. The probes
// must not block.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "comm/watchdog.h"

namespace ringattn {

class StreamWatch final : public WatchdogSource {
 public:
  struct Probe {
    std::function<bool()> started, finished;
    std::function<void()> release;  // optional: called once, when the operation is dropped
  };
  // `group` names the ranks in the reports ("4-rank group, world ranks 0-3"). `async_error`
  // (optional) returns a non-empty description of a failure the transport reports on its own.
  // Registers with the watchdog; the destructor unregisters, then releases what is pending.
  explicit StreamWatch(std::string group, std::function<std::string()> async_error = {});
  ~StreamWatch() override;
  StreamWatch(const StreamWatch&) = delete;
  StreamWatch& operator=(const StreamWatch&) = delete;

  // Hands over one queued operation, described by `what` ("all_gather", "ring exchange (send to
  // world rank 3, receive from world rank 1)"). Releases the finished ones at the front first.
  void add(std::string what, Probe probe);
  // Operations not yet seen finished.
  size_t pending() const;

  std::vector<std::string> overdue(double timeout_s) override;

 private:
  using Clock = std::chrono::steady_clock;
  struct Op {
    std::string what;
    Probe probe;
    std::optional<Clock::time_point> started_at;
  };
  // Drops the finished operations at the front (in stream order, an operation finishes only after
  // the ones queued before it on the same stream; one behind an unfinished one waits its turn).
  void reap_locked();

  std::string group_;
  std::function<std::string()> async_error_;
  mutable std::mutex mu_;
  std::deque<Op> ops_;  // guarded by mu_
};

}  // namespace ringattn
