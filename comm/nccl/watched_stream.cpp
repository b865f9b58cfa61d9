#include "comm/nccl/watched_stream.h"

#include <fmt/format.h>

namespace ringattn {

WatchedStream::WatchedStream(ncclComm_t comm, cudaStream_t stream, int device, std::string group)
    : comm_(comm), stream_(stream), device_(device) {
  watch_ = std::make_unique<StreamWatch>(std::move(group), [this]() -> std::string {
    // Called on the watchdog thread; NCCL allows it from any thread while the communicator
    // lives, which the unregistration in the destructor guarantees.
    ncclResult_t async = ncclSuccess;
    if (!comm_) return {};
    if (ncclCommGetAsyncError(comm_, &async) != ncclSuccess) return {};
    if (async == ncclSuccess || async == ncclInProgress) return {};
    return fmt::format("NCCL reported an error on this communicator: {}",
                       ncclGetErrorString(async));
  });
}

WatchedStream::~WatchedStream() {
  watch_.reset();  // unregisters (no query runs past this) and returns pending events
  std::lock_guard<std::mutex> lock(pool_mu_);
  // An event still pending on the stream may be destroyed: CUDA releases it once it completes.
  for (cudaEvent_t e : pool_) (void)cudaEventDestroy(e);
  pool_.clear();
}

cudaEvent_t WatchedStream::take() {
  {
    std::lock_guard<std::mutex> lock(pool_mu_);
    if (!pool_.empty()) {
      cudaEvent_t e = pool_.back();
      pool_.pop_back();
      return e;
    }
  }
  cudaEvent_t e = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

void WatchedStream::give(cudaEvent_t e) {
  std::lock_guard<std::mutex> lock(pool_mu_);
  pool_.push_back(e);
}

bool WatchedStream::complete(cudaEvent_t e) const {
  // The watchdog thread has no current device of its own; events belong to device_'s context.
  int current = -1;
  if (cudaGetDevice(&current) == cudaSuccess && current != device_) (void)cudaSetDevice(device_);
  return cuda::query_event(e) != cudaErrorNotReady;
}

StreamWatch::Probe WatchedStream::probe(cudaEvent_t begin, cudaEvent_t end) {
  StreamWatch::Probe p;
  p.started = [this, begin] { return complete(begin); };
  p.finished = [this, end] { return complete(end); };
  p.release = [this, begin, end] {
    give(begin);
    give(end);
  };
  return p;
}

}  // namespace ringattn
