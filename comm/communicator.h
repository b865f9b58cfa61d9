// Collectives and the ring exchange behind one interface, with an MPI implementation (host
// memory) and an NCCL one (device memory, communication stream; compiled with CUDA).
//
// Async contract: collectives are blocking for the caller on MPI. On NCCL they are enqueued on
// the communicator's stream in call order; callers must issue them in the same order on every
// rank. The ring exchange is asynchronous on both: see RingExchange.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "core/device.h"
#include "core/dtype.h"

namespace ringattn {

enum class ReduceOp { Sum, Max, Min };

// One step of the ring: send a buffer to the next rank, receive the previous rank's into a second
// buffer, while the caller computes on a third (double buffering).
class RingExchange {
 public:
  virtual ~RingExchange() = default;

  // Posts "send `bytes` from `send` to rank (r+1) mod N" and "receive `bytes` from rank
  // (r-1) mod N into `recv`", and returns at once. Neither buffer may be touched until wait()
  // returns. One exchange in flight per object. With N == 1 the receive is a copy of the send.
  virtual void start(const void* send, void* recv, size_t bytes) = 0;
  // Lets the transfer progress (cheap; call between compute tiles). True once it is complete.
  virtual bool test() = 0;
  // Blocks until the posted exchange is complete. The time spent blocked is accumulated.
  virtual void wait() = 0;

  int next() const { return next_; }
  int prev() const { return prev_; }
  // Seconds spent blocked in wait() since construction or the last reset_stats().
  double wait_seconds() const { return wait_seconds_; }
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

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual Device device() const = 0;  // where buffers passed to this communicator live
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

  // A ring over this communicator's ranks in rank order.
  virtual std::unique_ptr<RingExchange> make_ring() = 0;
};

}  // namespace ringattn
