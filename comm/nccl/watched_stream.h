// An NCCL communicator's communication stream as the comm watchdog sees it.
//
// While the watchdog is armed, run() brackets each operation it queues with two events from a
// small pool, `begin` recorded just before and `end` just after, and hands them to a StreamWatch
// (comm/stream_watch.h): begin complete means the stream has reached the operation (its inputs
// are ready and every earlier operation on the stream is done), end complete means it is over. A
// collective that a dead or stopped peer never joins therefore shows as one that has *run* longer
// than comm.timeout_s, with its name and group, instead of as a host hanging later inside an
// unrelated device synchronisation. NCCL's asynchronous errors (ncclCommGetAsyncError) are
// reported the same way. Disarmed, run() just queues the operation.
//
// The watchdog thread queries the events and NCCL's error state; neither blocks. Events return to
// the pool once seen complete.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "comm/stream_watch.h"
#include "comm/watchdog.h"
#include "core/cuda/cuda_check.h"

namespace ringattn {

class WatchedStream {
 public:
  // `stream` on GPU `device` carries operations of `comm` over the ranks `group` names (`comm`
  // null: no NCCL error state to ask, for tests).
  WatchedStream(ncclComm_t comm, cudaStream_t stream, int device, std::string group);
  ~WatchedStream();  // unregisters from the watchdog, then destroys the pooled events
  WatchedStream(const WatchedStream&) = delete;
  WatchedStream& operator=(const WatchedStream&) = delete;

  // Queues `enqueue()` (the NCCL calls) on the stream, watched as `what` when the watchdog is
  // armed (`what` names it in reports: "NCCL all_gather"). The caller has made the stream's
  // device current.
  template <typename Enqueue>
  void run(const char* what, Enqueue&& enqueue) {
    if (!Watchdog::armed()) {
      enqueue();
      return;
    }
    Bracket b(*this);
    CUDA_CHECK(cudaEventRecord(b.begin, stream_));
    enqueue();
    CUDA_CHECK(cudaEventRecord(b.end, stream_));
    watch_->add(what, probe(b.begin, b.end));  // the probe owns the events from here on
    b.begin = b.end = nullptr;
  }

  // Operations handed to the watchdog and not yet seen finished (for tests).
  size_t pending() const { return watch_->pending(); }

 private:
  // Two events from the pool, returned to it unless handed over (null) first.
  struct Bracket {
    explicit Bracket(WatchedStream& w) : owner(w) {
      begin = owner.take();
      try {
        end = owner.take();
      } catch (...) {
        owner.give(begin);
        throw;
      }
    }
    ~Bracket() {
      if (begin) owner.give(begin);
      if (end) owner.give(end);
    }
    Bracket(const Bracket&) = delete;
    Bracket& operator=(const Bracket&) = delete;
    WatchedStream& owner;
    cudaEvent_t begin = nullptr, end = nullptr;
  };

  cudaEvent_t take();
  void give(cudaEvent_t e);
  StreamWatch::Probe probe(cudaEvent_t begin, cudaEvent_t end);
  // True once `e` has completed; an error (the device failed) counts as complete: the thread
  // using the stream raises it, the watchdog does not report a hang for it.
  bool complete(cudaEvent_t e) const;

  ncclComm_t comm_;
  cudaStream_t stream_;
  int device_;
  std::mutex pool_mu_;
  std::vector<cudaEvent_t> pool_;  // guarded by pool_mu_
  std::unique_ptr<StreamWatch> watch_;
};

}  // namespace ringattn
