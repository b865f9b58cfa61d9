// The NCCL communicator: device memory, and one communication stream per GPU, shared by every NCCL
// communicator of the process on it (the mesh's axes and its fsdp x sp group).
//
// Why one stream: NCCL kernels wait on the GPU for their peers. Operations of two communicators
// on two streams may run on one GPU in one order and on a peer in the other; each then holds
// resources (SMs, a device-wide synchronisation such as a cudaFree) while waiting for an operation
// that cannot start, a deadlock NCCL's documentation warns of. On one stream every GPU runs its
// NCCL operations in the order its host issued them. That order must be one that every rank
// follows across all its communicators (the contract's last-but-one point below); then the
// earliest unfinished operation always has all its ranks at it, and nothing waits in a cycle.
// The cost: a ring exchange and an FSDP transfer no longer run at the same time. Where the model
// queues a prefetch gather (or a reduce-scatter) before a layer's ring exchanges, the exchanges
// start after it; they still overlap compute, and the two share the links anyway. Whether the
// ring waits longer for it has not been measured on GPUs yet (bench train, sp > 1 and fsdp > 1).
//
// Contract (see also comm/communicator.h):
//  * Buffers are device pointers on this rank's GPU (MpiEnv::local_rank() % device count).
//  * Inputs must be complete before a call: the comm stream is created cudaStreamNonBlocking, so
//    it does not order against the compute stream or the legacy default stream. Synchronise the
//    stream that wrote them (Backend::synchronize()) first.
//  * Collectives are blocking for now: each is enqueued on the comm stream and the stream is
//    synchronised before returning, so outputs are ready for any stream and for the host.
//  * The ring exchange is asynchronous: start() enqueues ncclSend/ncclRecv (one NCCL group) and
//    records an event; test() queries it. A ring uses its communicator's NCCL communicator and
//    stream, so it must not outlive the communicator, and a collective called while an exchange
//    is in flight (on any communicator of this GPU) runs after that exchange.
//  * A ring made with the compute backend (make_ring(&backend)) is ordered by events, never by
//    the host: start() records `ready` on the compute stream and makes the communication stream
//    wait for it before the send/receive; wait() makes the compute stream wait for `done`, the
//    event recorded after them, and returns at once. So the KV exchange of step t+1 runs on the
//    communication stream while step t's tiles run on the compute stream, and the host keeps
//    queueing. Buffers freed afterwards are safe: the allocator frees in compute-stream order,
//    which now follows the transfer. Without a compute backend, wait() blocks the host on `done`.
//  * All ranks must issue their NCCL operations in one order, across communicators: every rank's
//    sequence of operations on all its communicators must be the same sequence of "slots", each
//    slot an operation of the same kind on its own group (ringattn's ranks all run the same
//    program, and the FSDP helper thread never issues NCCL operations). The same order within
//    each group is not enough: three ranks in pairwise groups could still wait in a cycle. Blocking
//    collectives synchronise the shared stream, so they wait for the other communicators' queued
//    operations too.
//  * Nothing here blocks the host for long except the blocking collectives' stream
//    synchronisations, and the stream-ordered work blocks nothing: a peer that dies leaves a
//    collective running for ever on the device. While the comm watchdog is armed every operation
//    queued on the communication stream is bracketed by events and watched
//    (comm/nccl/watched_stream.h): one that has run longer than comm.timeout_s, or an error NCCL
//    reports asynchronously, ends the job with a message naming the operation and the group.
#include <mpi.h>

#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <type_traits>

#include "comm/mesh.h"
#include "comm/mpi_check.h"
#include "comm/mpi_env.h"
#include "comm/nccl/nccl_check.h"
#include "comm/nccl/watched_stream.h"
#include "comm/watchdog.h"
#include "comm/world_ranks.h"
#include "core/backend.h"
#include "core/cuda/cuda_check.h"
#include "core/error.h"
#include "core/log.h"

namespace ringattn {

namespace {

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::F32:
      return ncclFloat32;
    case DType::BF16:
      return ncclBfloat16;
    case DType::F16:
      return ncclFloat16;
    case DType::I32:
      return ncclInt32;
    case DType::I64:
      return ncclInt64;
    case DType::U8:
      return ncclUint8;
  }
  RA_FAIL("unknown dtype {}", int(t));
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return ncclSum;
    case ReduceOp::Max:
      return ncclMax;
    case ReduceOp::Min:
      return ncclMin;
  }
  RA_FAIL("unknown reduce op {}", int(op));
}

// Makes `device` current for the calling thread for the duration of a call, restoring the
// previous one: callers may drive several devices (tests, tools) from one thread.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { (void)cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

class NcclRing final : public RingExchange {
 public:
  // `compute`: the compute stream to order against, or null (see the file comment).
  // `watched`: the communicator's stream as the watchdog sees it; `world`: the group's world ranks.
  // `host_wait`: the compute backend's calls complete on return (calls_complete_on_return), so
  // wait() blocks the host on the transfer and counts it.
  NcclRing(ncclComm_t comm, cudaStream_t stream, WatchedStream* watched, cudaStream_t compute,
           bool host_wait, int device, int rank, const std::vector<int>& world)
      : comm_(comm),
        stream_(stream),
        watched_(watched),
        compute_(compute),
        host_wait_(host_wait),
        device_(device),
        size_(int(world.size())) {
    next_ = (rank + 1) % size_;
    prev_ = (rank + size_ - 1) % size_;
    what_ = fmt::format("NCCL ring exchange (send to world rank {}, receive from world rank {})",
                        world[size_t(next_)], world[size_t(prev_)]);
    DeviceGuard g(device_);
    CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    if (compute_) CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
  }

  ~NcclRing() override {
    if (in_flight_) {
      try {
        wait();
      } catch (const std::exception& e) {
        log::rank_error("NCCL ring exchange failed while its owner was being destroyed: {}",
                        e.what());
      }
    }
    // An event still pending on a stream may be destroyed: CUDA releases it once it completes.
    if (done_) (void)cudaEventDestroy(done_);
    if (ready_) (void)cudaEventDestroy(ready_);
  }

  void start(const void* send, void* recv, size_t bytes) override {
    RA_CHECK(!in_flight_, "RingExchange::start: the previous exchange was not waited for");
    RA_CHECK(bytes == 0 || (send && recv), "RingExchange::start: null buffer for {} bytes", bytes);
    DeviceGuard g(device_);
    if (compute_) {
      // The send buffer's producers (and the last readers of the receive buffer) were queued
      // on the compute stream: the communication stream starts after them.
      CUDA_CHECK(cudaEventRecord(ready_, compute_));
      CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
    }
    if (size_ == 1) {
      if (bytes && send != recv)
        CUDA_CHECK(cudaMemcpyAsync(recv, send, bytes, cudaMemcpyDeviceToDevice, stream_));
    } else if (bytes) {
      // Send and receive in one group so NCCL schedules them together (no ordering deadlock
      // around the ring). The group is always closed, even when an enqueue fails.
      watched_->run(what_.c_str(), [&] {
        NCCL_CHECK(ncclGroupStart());
        ncclResult_t st = ncclSend(send, bytes, ncclUint8, next_, comm_, stream_);
        if (st == ncclSuccess) st = ncclRecv(recv, bytes, ncclUint8, prev_, comm_, stream_);
        const ncclResult_t end = ncclGroupEnd();
        NCCL_CHECK_RESULT(st, "ncclSend/ncclRecv (ring exchange)");
        NCCL_CHECK_RESULT(end, "ncclGroupEnd (ring exchange)");
      });
      bytes_moved_ += bytes;
    }
    CUDA_CHECK(cudaEventRecord(done_, stream_));
    in_flight_ = true;
  }

  bool test() override {
    if (!in_flight_) return true;
    const cudaError_t st = cuda::query_event(done_);
    if (st == cudaErrorNotReady) return false;
    CUDA_CHECK(st);
    return true;
  }

  void wait() override {
    if (!in_flight_) return;
    in_flight_ = false;
    const auto t0 = std::chrono::steady_clock::now();
    if (compute_) {
      DeviceGuard g(device_);
      // The compute stream is idle here when the backend completes its calls: the host waits for
      // the rest of the transfer, which is then what it left exposed (bench train's figure).
      if (host_wait_) CUDA_CHECK(cudaEventSynchronize(done_));
      CUDA_CHECK(cudaStreamWaitEvent(compute_, done_, 0));  // the device waits, not the host
      // NCCL reports a failed peer asynchronously; surface it here rather than as a hang later.
      ncclResult_t async = ncclSuccess;
      NCCL_CHECK(ncclCommGetAsyncError(comm_, &async));
      NCCL_CHECK_RESULT(async, "ncclCommGetAsyncError (an error NCCL reported asynchronously)");
    } else {
      CUDA_CHECK(cudaEventSynchronize(done_));
    }
    wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

 private:
  ncclComm_t comm_;
  cudaStream_t stream_;
  WatchedStream* watched_;
  cudaStream_t compute_;  // null: no ordering against a compute stream
  bool host_wait_;
  int device_;
  int size_;
  std::string what_;  // names the exchange in the watchdog's reports
  cudaEvent_t done_ = nullptr, ready_ = nullptr;
  bool in_flight_ = false;
};

// The end of one stream-ordered collective: an event on the communication stream that the compute
// stream waits for at order() (or when the point is dropped).
class NcclPoint final : public StreamPoint {
 public:
  // `host_wait`: as for the ring, order() first waits on the host when the compute backend's
  // calls complete on return.
  NcclPoint(cudaStream_t compute, bool host_wait, int device)
      : compute_(compute), host_wait_(host_wait), device_(device) {
    CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  }
  ~NcclPoint() override {
    int previous = -1;
    (void)cudaGetDevice(&previous);
    (void)cudaSetDevice(device_);
    if (!ordered_) (void)cudaStreamWaitEvent(compute_, done_, 0);  // cannot throw here
    (void)cudaEventDestroy(done_);  // its resources go once it has completed
    if (previous >= 0 && previous != device_) (void)cudaSetDevice(previous);
  }
  NcclPoint(const NcclPoint&) = delete;
  NcclPoint& operator=(const NcclPoint&) = delete;
  cudaEvent_t done() const { return done_; }
  void order() override {
    if (ordered_) return;
    DeviceGuard g(device_);
    if (host_wait_) CUDA_CHECK(cudaEventSynchronize(done_));
    CUDA_CHECK(cudaStreamWaitEvent(compute_, done_, 0));
    ordered_ = true;
  }

 private:
  cudaStream_t compute_;
  bool host_wait_;
  int device_;
  cudaEvent_t done_ = nullptr;
  bool ordered_ = false;
};

using StreamHandle = std::shared_ptr<std::remove_pointer_t<cudaStream_t>>;

// The communication stream of GPU `device` (see the file comment), created by the first
// communicator on it and destroyed with the last.
StreamHandle communication_stream(int device) {
  static std::mutex mu;
  static std::map<int, std::weak_ptr<std::remove_pointer_t<cudaStream_t>>> streams;
  const std::lock_guard<std::mutex> lock(mu);
  if (StreamHandle s = streams[device].lock()) return s;
  DeviceGuard g(device);
  cudaStream_t raw = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&raw, cudaStreamNonBlocking));
  StreamHandle s(raw, [device](cudaStream_t st) {
    int previous = -1;
    (void)cudaGetDevice(&previous);
    (void)cudaSetDevice(device);
    (void)cudaStreamDestroy(st);
    if (previous >= 0 && previous != device) (void)cudaSetDevice(previous);
  });
  streams[device] = s;
  return s;
}

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(MPI_Comm comm) {
    MPI_CHECK(MPI_Comm_rank(comm, &rank_));
    MPI_CHECK(MPI_Comm_size(comm, &size_));
    world_ = world_ranks_of(comm);

    // Every rank learns whether every rank can run NCCL before anyone blocks in a collective
    // call, so a missing GPU raises the same Error everywhere instead of hanging the others.
    const int devices = cuda_device_count();
    int min_devices = 0;
    MPI_CHECK(MPI_Allreduce(&devices, &min_devices, 1, MPI_INT, MPI_MIN, comm));
    RA_CHECK(min_devices > 0,
             "the NCCL transport needs a usable CUDA device on every rank, but {} (no GPU, or "
             "the driver is missing or too old); use the MPI transport on CPUs",
             devices == 0 ? "this rank has none" : "another rank has none");
    device_ = MpiEnv::local_rank() % devices;
    if (MpiEnv::local_size() > devices && !cuda_simulated())  // the simulated NCCL shares
      log::rank_warn(
          "{} ranks on this node share {} GPUs; NCCL rejects two ranks of one "
          "communicator on the same GPU",
          MpiEnv::local_size(), devices);

    // Rank 0 makes the unique id; the broadcast carries a success flag with it so that a
    // failure on rank 0 also ends the other ranks with an Error.
    struct {
      int ok = 0;
      ncclUniqueId id;
    } boot;
    std::memset(&boot.id, 0, sizeof(boot.id));
    std::string boot_error;
    if (rank_ == 0) {
      const ncclResult_t st = ncclGetUniqueId(&boot.id);
      boot.ok = st == ncclSuccess;
      if (!boot.ok)
        boot_error = fmt::format("{}: {}", ncclGetErrorString(st), ncclGetLastError(nullptr));
    }
    MPI_CHECK(MPI_Bcast(&boot, int(sizeof(boot)), MPI_BYTE, 0, comm));
    RA_CHECK(boot.ok, "ncclGetUniqueId failed on rank 0 of the group{}",
             boot_error.empty() ? "" : ": " + boot_error);

    DeviceGuard g(device_);
    try {
      NCCL_CHECK(ncclCommInitRank(&comm_, size_, boot.id, rank_));
      shared_stream_ = communication_stream(device_);
      stream_ = shared_stream_.get();
      CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
      CUDA_CHECK(cudaMalloc(&scratch_, sizeof(float)));
      CUDA_CHECK(cudaMemsetAsync(scratch_, 0, sizeof(float), stream_));
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      group_ = group_text(world_);
      watched_ = std::make_unique<WatchedStream>(comm_, stream_, device_, group_);
    } catch (...) {
      release(/*graceful=*/false);
      throw;
    }
  }

  ~NcclCommunicator() override {
    int previous = -1;
    (void)cudaGetDevice(&previous);
    (void)cudaSetDevice(device_);
    release(/*graceful=*/true);
    if (previous >= 0 && previous != device_) (void)cudaSetDevice(previous);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::CUDA; }
  std::string name() const override {
    return fmt::format("nccl (cuda:{}, {} ranks)", device_, size_);
  }

  void all_reduce(void* buf, size_t count, DType dtype, ReduceOp op) override {
    if (count == 0) return;
    DeviceGuard g(device_);
    watched_->run("NCCL all_reduce", [&] {
      NCCL_CHECK(ncclAllReduce(buf, buf, count, nccl_type(dtype), nccl_op(op), comm_, stream_));
    });
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    if (count == 0) return;
    DeviceGuard g(device_);
    // send == recv + rank * count is NCCL's in-place form and works as is.
    watched_->run("NCCL all_gather", [&] {
      NCCL_CHECK(ncclAllGather(send, recv, count, nccl_type(dtype), comm_, stream_));
    });
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void reduce_scatter(const void* send, void* recv, size_t count, DType dtype,
                      ReduceOp op) override {
    if (count == 0) return;
    DeviceGuard g(device_);
    watched_->run("NCCL reduce_scatter", [&] {
      NCCL_CHECK(
          ncclReduceScatter(send, recv, count, nccl_type(dtype), nccl_op(op), comm_, stream_));
    });
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  // Events instead of host waits: `ready` recorded on the compute stream orders the collective
  // after the work that produced its input (one event serves every call: cudaStreamWaitEvent
  // takes its most recent record at the time it is called); the returned point's own event,
  // recorded after the collective, is what the compute stream waits for at order().
  bool orders_on_device() const override { return true; }
  std::unique_ptr<StreamPoint> all_gather_ordered(const void* send, void* recv, size_t count,
                                                  DType dtype, Backend& compute) override {
    return ordered(compute, "NCCL all_gather (stream-ordered)", [&] {
      if (count) NCCL_CHECK(ncclAllGather(send, recv, count, nccl_type(dtype), comm_, stream_));
    });
  }
  std::unique_ptr<StreamPoint> reduce_scatter_ordered(const void* send, void* recv, size_t count,
                                                      DType dtype, ReduceOp op,
                                                      Backend& compute) override {
    return ordered(compute, "NCCL reduce_scatter (stream-ordered)", [&] {
      if (count)
        NCCL_CHECK(
            ncclReduceScatter(send, recv, count, nccl_type(dtype), nccl_op(op), comm_, stream_));
    });
  }

  void broadcast(void* buf, size_t count, DType dtype, int root) override {
    RA_CHECK(root >= 0 && root < size_, "broadcast: root {} is not a rank of this {}-rank group",
             root, size_);
    if (count == 0) return;
    DeviceGuard g(device_);
    watched_->run("NCCL broadcast", [&] {
      NCCL_CHECK(ncclBroadcast(buf, buf, count, nccl_type(dtype), root, comm_, stream_));
    });
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  // NCCL has no barrier: a one-element all-reduce completes only when every rank has joined.
  void barrier() override {
    DeviceGuard g(device_);
    watched_->run("NCCL barrier (a one-element all_reduce)", [&] {
      NCCL_CHECK(ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm_, stream_));
    });
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  std::unique_ptr<RingExchange> make_ring(Backend* compute) override {
    cudaStream_t compute_stream = nullptr;
    if (compute) {
      RA_CHECK(compute->device() == Device::CUDA && compute->native_stream(),
               "NCCL ring: the compute backend must be a CUDA backend, got '{}'", compute->name());
      compute_stream = static_cast<cudaStream_t>(compute->native_stream());
      int stream_device = -1;
      CUDA_CHECK(cudaStreamGetDevice(compute_stream, &stream_device));
      RA_CHECK(stream_device == device_,
               "NCCL ring: the compute backend runs on GPU {}, this communicator on GPU {}",
               stream_device, device_);
    }
    const bool host_wait = compute && compute->calls_complete_on_return();
    return std::make_unique<NcclRing>(comm_, stream_, watched_.get(), compute_stream, host_wait,
                                      device_, rank_, world_);
  }

 private:
  template <typename Enqueue>
  std::unique_ptr<StreamPoint> ordered(Backend& compute, const char* what, Enqueue enqueue) {
    RA_CHECK(compute.device() == Device::CUDA && compute.native_stream(),
             "NCCL: stream-ordered collectives need a CUDA compute backend, got '{}'",
             compute.name());
    DeviceGuard g(device_);
    cudaStream_t cs = static_cast<cudaStream_t>(compute.native_stream());
    int stream_device = -1;
    CUDA_CHECK(cudaStreamGetDevice(cs, &stream_device));
    RA_CHECK(stream_device == device_,
             "NCCL: the compute backend runs on GPU {}, this communicator on GPU {}", stream_device,
             device_);
    CUDA_CHECK(cudaEventRecord(ready_, cs));
    CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
    watched_->run(what, enqueue);
    auto point = std::make_unique<NcclPoint>(cs, compute.calls_complete_on_return(), device_);
    CUDA_CHECK(cudaEventRecord(point->done(), stream_));
    return point;
  }

  // Frees in reverse order of creation; never throws. Graceful (the destructor, reached on every
  // rank alike): finalize, which waits until the communicator is quiet on all ranks, so destroy
  // cuts nothing off. A constructor failing on this rank alone must not wait for the others, so
  // it aborts. The first synchronisation waits for every communicator's work on the shared stream
  // (each stuck operation stays watched by its own communicator until that one is released).
  void release(bool graceful) noexcept {
    // Graceful only: the shared stream may hold other communicators' work still waiting for
    // peers, which a constructor failing on this rank alone must not wait for.
    if (stream_ && graceful) (void)cudaStreamSynchronize(stream_);
    watched_.reset();  // the watchdog stops querying the communicator before it goes
    if (comm_) {
      // Finalize waits for the other ranks: watched like any blocking wait.
      const WatchdogScope watch("NCCL communicator finalize", -1, group_.c_str());
      if (graceful && ncclCommFinalize(comm_) == ncclSuccess)
        (void)ncclCommDestroy(comm_);
      else
        (void)ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    if (scratch_) (void)cudaFree(scratch_);
    scratch_ = nullptr;
    if (ready_) (void)cudaEventDestroy(ready_);
    ready_ = nullptr;
    shared_stream_.reset();  // destroys the stream after the last communicator on this GPU
    stream_ = nullptr;
  }

  int rank_ = 0, size_ = 1, device_ = 0;
  ncclComm_t comm_ = nullptr;
  StreamHandle shared_stream_;
  cudaStream_t stream_ = nullptr;  // shared_stream_'s
  float* scratch_ = nullptr;
  cudaEvent_t ready_ = nullptr;             // the stream-ordered collectives' start
  std::vector<int> world_;                  // world rank of each rank of the group
  std::string group_;                       // names the group in the watchdog's reports
  std::unique_ptr<WatchedStream> watched_;  // the stream as the watchdog sees it
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm comm) {
  return std::make_unique<NcclCommunicator>(comm);
}

}  // namespace ringattn
