// Collectives and the ring exchange behind one interface, with an MPI implementation (host
// memory) and an NCCL one (device memory, communication stream; compiled with CUDA).
//
// Async contract:
//  * Collectives are blocking on both transports: when one returns, its output is complete (on
//    NCCL it was enqueued on the GPU's communication stream, which was then synchronised). Every
//    rank of the group must call the same collectives in the same order with the same counts. On
//    NCCL, whose communicators of one GPU share that stream, the order must hold across
//    communicators too (comm/nccl/nccl_communicator.cpp).
//  * The ring exchange is asynchronous on both: see RingExchange.
//  * Buffers live on device(): host memory for MPI, this rank's GPU for NCCL. On NCCL the inputs
//    of a collective must be complete before the call (the communication stream does not wait
//    for the compute stream: synchronise the backend first). A ring made with the backend that
//    computes (make_ring(&backend)) orders itself against it instead: see RingExchange.
//  * Buffers of one call must not overlap, except all_gather's in-place form
//    (send == recv + rank() * count elements).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "core/device.h"
#include "core/dtype.h"

namespace ringattn {

class Backend;

// The end of a stream-ordered collective on a transport's own stream (NCCL: an event recorded
// after it). order() makes everything queued on the compute backend afterwards wait for it, on
// the device; destroying a point that was not ordered orders it then, so dropping one is safe.
class StreamPoint {
 public:
  virtual ~StreamPoint() = default;
  virtual void order() = 0;
};

enum class ReduceOp { Sum, Max, Min };

// One step of the ring: send a buffer to the next rank, receive the previous rank's into a second
// buffer, while the caller computes on a third (double buffering).
class RingExchange {
 public:
  virtual ~RingExchange() = default;

  // Posts "send `bytes` from `send` to rank (r+1) mod N" and "receive `bytes` from rank
  // (r-1) mod N into `recv`", and returns at once. Neither buffer may be touched until wait()
  // returns (reading `send` is fine). One exchange in flight per object: every start() is paired
  // with a wait() before the next start() (a second start() raises an Error). All ranks pass the
  // same `bytes`. With N == 1 the receive is a copy of the send (send == recv is allowed then).
  // MPI: with MPI_THREAD_MULTIPLE a progress thread moves the data while the caller computes;
  // without it the data moves only inside test() and wait(). NCCL: enqueued on the GPU's
  // communication stream (after every NCCL operation issued before it on this rank).
  //
  // Ordering with the compute stream, for a ring made with the backend that computes
  // (Communicator::make_ring(&backend)): the transfer reads `send` only after every operation
  // already queued on that backend, so the caller does not synchronise first; and every
  // operation queued on the backend after wait() returns runs after the transfer (it sees
  // `recv`, and may overwrite `send`). NCCL keeps both orders with CUDA events between the
  // compute and communication streams, without blocking the host: its wait() returns at once
  // and the compute stream waits instead (wait_seconds() then counts host blocking only, ~0).
  // The CPU backend is synchronous and host-staged transports copy through the device's
  // synchronous copies, so both orders hold there anyway (a host-staged ring of one rank queues
  // its copy on the backend's stream instead, which keeps them too). A ring made without a backend
  // (null) reads `send` when start() is called (its producer must be complete) and wait() blocks
  // the host until the transfer is done.
  virtual void start(const void* send, void* recv, size_t bytes) = 0;
  // Lets the transfer progress (cheap; call between compute tiles). True once it is complete;
  // wait() must still be called. True when nothing is in flight.
  virtual bool test() = 0;
  // Blocks until the posted exchange is complete. The time spent blocked is accumulated. Returns
  // at once when nothing is in flight. Errors of the transfer are raised here.
  virtual void wait() = 0;

  int next() const { return next_; }
  int prev() const { return prev_; }
  // Seconds spent blocked in wait() since construction or the last reset_stats().
  double wait_seconds() const { return wait_seconds_; }
  // Bytes sent to next() by start() (0 for N == 1, where nothing crosses a link).
  size_t bytes_moved() const { return bytes_moved_; }
  void reset_stats() {
    wait_seconds_ = 0;
    bytes_moved_ = 0;
  }

 protected:
  int next_ = 0, prev_ = 0;
  double wait_seconds_ = 0;
  size_t bytes_moved_ = 0;
};

// Held by a scope that owns a ring's buffers, declared after them: when the scope is left by an
// exception while an exchange is in flight (a tile step that failed between start() and wait():
// out of memory, say), waits for that exchange there, before the buffers are freed. Otherwise the
// transfer would go on reading and writing freed memory, and the ring, which outlives the scope,
// would refuse its next start(). The wait is the one the ring's destructor would do later; it
// completes when the neighbours posted their side of the step, as the ranks of a failing job do
// when they fail at the same point. On a normal exit every start() already had its wait(), and this
// one returns at once. A failure of the wait is logged for this rank, not thrown (the scope may be
// unwinding).
class RingDrain {
 public:
  explicit RingDrain(RingExchange& ring) : ring_(ring) {}
  ~RingDrain();
  RingDrain(const RingDrain&) = delete;
  RingDrain& operator=(const RingDrain&) = delete;

 private:
  RingExchange& ring_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual Device device() const = 0;  // where buffers passed to this communicator live
  // True when host buffers may be passed as well (MPI; device communicators staged through host
  // memory). Code that reduces host scalars (gradient norms, loss sums) checks it.
  virtual bool accepts_host_buffers() const { return device() == Device::CPU; }
  virtual std::string name() const = 0;

  // In place over `count` elements.
  virtual void all_reduce(void* buf, size_t count, DType dtype, ReduceOp op) = 0;
  // recv holds size() * count elements, rank i's contribution at [i * count, (i+1) * count).
  virtual void all_gather(const void* send, void* recv, size_t count, DType dtype) = 0;
  // send holds size() * count elements; rank i receives the reduction of block i into recv.
  virtual void reduce_scatter(const void* send, void* recv, size_t count, DType dtype,
                              ReduceOp op) = 0;
  virtual void broadcast(void* buf, size_t count, DType dtype, int root) = 0;
  virtual void barrier() = 0;

  // Stream-ordered forms of the FSDP collectives. The collective reads its input after every
  // operation already queued on `compute` (a backend on device()). It returns a StreamPoint, or
  // null when the collective is already complete: until the point's order() (or its destruction)
  // the collective may still run, beside whatever `compute` runs meanwhile, so work queued in
  // between must not touch its buffers; work queued on `compute` after order() sees the output
  // and may reuse or free the buffers. Where orders_on_device() (NCCL) none of this waits on the
  // host: CUDA events order the communication stream after the compute stream and back, so the
  // transfer overlaps the compute queued before order(). Elsewhere the defaults synchronise
  // `compute`, run the blocking collective and return null (callers there prefer a helper
  // thread, model/fsdp/fsdp_group.h). The rules of the blocking forms (same order on every rank,
  // all_gather in place) apply.
  virtual bool orders_on_device() const { return false; }
  virtual std::unique_ptr<StreamPoint> all_gather_ordered(const void* send, void* recv,
                                                          size_t count, DType dtype,
                                                          Backend& compute);
  virtual std::unique_ptr<StreamPoint> reduce_scatter_ordered(const void* send, void* recv,
                                                              size_t count, DType dtype,
                                                              ReduceOp op, Backend& compute);

  // A ring over this communicator's ranks in rank order. Collective: every rank of the group
  // calls it, in the same order relative to other rings and collectives. The ring must not
  // outlive this communicator (NCCL rings share its stream; MPI rings own a duplicate of it).
  // Destroying a ring with an exchange in flight waits for it first. `compute`, when given, is
  // the backend whose queued work the exchanges are ordered against (RingExchange::start); it
  // must live on device() and outlive the ring.
  virtual std::unique_ptr<RingExchange> make_ring(Backend* compute = nullptr) = 0;
};

// Rank `root`'s text on every rank of `comm` (host memory: an MPI communicator). Collective.
std::string broadcast_text(Communicator& comm, std::string text, int root);

}  // namespace ringattn
