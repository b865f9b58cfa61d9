// FsdpGroup: the fsdp x sp communicator plus one helper thread that runs its collectives, so
// that the all-gather of the next layer's parameters (and the reduce-scatter of the previous
// layer's gradients) overlaps the current layer's compute.
//
// Why a thread: MPI collectives block. A collective started on the helper thread moves data
// while the caller computes; MPI_THREAD_MULTIPLE (which MpiEnv asks for) makes that legal. A
// communicator that orders its collectives on the device (NCCL, Communicator::orders_on_device())
// needs no thread: FlatShard queues its gathers and reduce-scatters there directly, ordered by
// CUDA events, and submits nothing here.
//
// Ordering contract (what keeps every rank's collectives matched):
//  * Work submitted to a group runs on its one helper thread, one job at a time, in submission
//    order. Every rank of the group must submit the same collectives in the same order, exactly
//    as for blocking collectives; prefetching on one rank only is a hang.
//  * While work is queued or running, nobody else may call collectives on comm() (another
//    thread's collective could interleave with the helper's in a different order on different
//    ranks). Call synchronize() first, or submit() the collective. Other communicators (the dp
//    and sp axes, ring exchanges, which own duplicates of their communicator) are unaffected and
//    may be used concurrently.
//  * Buffers a job reads or writes must stay alive and untouched until its future is ready.
//    FlatShard (model/fsdp/flat_shard.h) does this bookkeeping for the parameter and gradient
//    buffers; most callers never use submit() directly.
//
// Modes: Async runs jobs on the helper thread (requires MPI_THREAD_MULTIPLE; an Error without
// it); Sync runs each job inside submit() on the calling thread, so every prefetch becomes a
// blocking collective (same results, no overlap); Auto picks Async when MPI granted
// MPI_THREAD_MULTIPLE and the group has more than one rank, else Sync.
//
// Devices: the shards live on the backend's device, and the communicator must move that
// device's memory (checked): MPI for the CPU backend; a host-staged MPI communicator
// (comm/host_staged_communicator.h) or NCCL for CUDA. Jobs that compute (a reduce-scatter adding
// its result into the gradient shard) do so through the backend, which the helper thread binds
// to at start. Before a job reads a buffer that backend operations wrote, the caller synchronizes
// the backend (FlatShard does), as the communication may not be ordered with the compute stream.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "comm/communicator.h"
#include "core/backend.h"

namespace ringattn {

class FsdpGroup {
 public:
  enum class Mode { Auto, Async, Sync };

  // `comm` (normally mesh.fsdp_sp()) must outlive the group. Not collective.
  // The CPU backend's group (`comm` must be a host communicator).
  explicit FsdpGroup(Communicator& comm, Mode mode = Mode::Auto);
  // Shards on `backend`'s device; `comm` must move that device's memory. Both must outlive it.
  FsdpGroup(Communicator& comm, Backend& backend, Mode mode = Mode::Auto);
  // Runs every job still queued (other ranks are waiting in those collectives), then stops the
  // helper thread. Errors of jobs whose futures were dropped are lost.
  ~FsdpGroup();
  FsdpGroup(const FsdpGroup&) = delete;
  FsdpGroup& operator=(const FsdpGroup&) = delete;

  Communicator& comm() const { return comm_; }
  Backend& backend() const { return backend_; }
  int size() const { return comm_.size(); }
  int rank() const { return comm_.rank(); }
  bool async() const { return async_; }

  // Queues `job` after everything submitted before. The future becomes ready when the job has
  // run; get() rethrows what it threw. In Sync mode the job has already run when submit()
  // returns (its exception, if any, is still delivered through the future).
  std::future<void> submit(std::function<void()> job);
  // Blocks until every job submitted so far has run, and retires every stream-ordered collective
  // (below). Rethrows nothing: errors belong to the futures of the jobs that raised them.
  void synchronize();

  // Stream-ordered collectives in flight (a communicator that orders on the device, NCCL): each
  // one's StreamPoint and what must follow it on the compute stream (adding a reduce-scatter's
  // result into the shard, freeing its buffers). retire(keep) orders all but the newest `keep`
  // of them, oldest first, and runs what follows each: the compute stream then waits for those
  // collectives, on the device. Keeping the newest one in flight lets it run beside the compute
  // queued until the next retire. Only the thread that drives the model calls these.
  void defer(std::unique_ptr<StreamPoint> point, std::function<void()> then);
  void retire(size_t keep = 0);

  // Seconds the CALLING thread spent blocked on this group's communication, accumulated by
  // FlatShard (what `ringattn bench train` reports as communication): waiting for parameter
  // gathers, for gradient reduce-scatters, and in the dp all-reduce of the shard gradients. In
  // Sync mode a collective runs inside submit(), so its whole duration counts. Transfers that
  // overlap compute on the helper thread cost nothing here, which is the point of prefetching.
  // Only the thread that drives the model updates these.
  struct WaitTimes {
    double gather_s = 0, reduce_scatter_s = 0, dp_all_reduce_s = 0;
  };
  WaitTimes& wait_times() { return waits_; }

 private:
  void worker_loop();

  Communicator& comm_;
  Backend& backend_;
  bool async_ = false;
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<void()>> queue_;  // guarded by mu_
  bool stop_ = false;                             // guarded by mu_
  struct Deferred {
    // Declared before the point, so destroyed after it: a Deferred dropped unretired (an error
    // unwinding) has its point order the compute stream (StreamPoint's destructor) before the
    // buffers `then` holds go back to the allocator in stream order.
    std::function<void()> then;
    std::unique_ptr<StreamPoint> point;  // null: the collective was complete on return
  };
  std::deque<Deferred> deferred_;  // oldest first; the model's thread only
  WaitTimes waits_;
};

}  // namespace ringattn
