#include "core/cuda/pinned_upload.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <mutex>

#include "core/cuda/cuda_check.h"

namespace ringattn::cuda {

namespace {

struct PinnedBuffer {
  void* host = nullptr;
  size_t bytes = 0;
  cudaEvent_t done = nullptr;  // recorded after the last copy out of `host`
};

// The buffers of one device, used round robin: with kBuffers of them the host may run that many
// uploads ahead of the device before it waits.
class PinnedUploads {
 public:
  void upload(cudaStream_t stream, void* dst, const void* src, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    PinnedBuffer& b = buffers_[next_];
    next_ = (next_ + 1) % buffers_.size();
    if (b.done)
      CUDA_CHECK(cudaEventSynchronize(b.done));  // its previous copy has run
    else
      CUDA_CHECK(cudaEventCreateWithFlags(&b.done, cudaEventDisableTiming));
    if (b.bytes < bytes) {
      // At least double, so that slowly growing uploads do not reallocate each time
      // (cudaFreeHost may synchronise the device).
      const size_t grown = std::max(bytes, std::max<size_t>(2 * b.bytes, size_t(1) << 16));
      if (b.host) CUDA_CHECK(cudaFreeHost(b.host));
      b.host = nullptr;
      b.bytes = 0;
      CUDA_CHECK(cudaMallocHost(&b.host, grown));
      b.bytes = grown;
    }
    std::memcpy(b.host, src, bytes);
    CUDA_CHECK(cudaMemcpyAsync(dst, b.host, bytes, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaEventRecord(b.done, stream));
  }

 private:
  static constexpr size_t kBuffers = 8;
  std::mutex mu_;
  std::array<PinnedBuffer, kBuffers> buffers_{};
  size_t next_ = 0;
};

}  // namespace

void upload_async(cudaStream_t stream, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  // The buffers and their events belong to the calling thread's current device, which is the
  // stream's: every thread that queues work on a backend has called Backend::bind_thread().
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mu;
  static std::map<int, PinnedUploads>* per_device = new std::map<int, PinnedUploads>();  // kept
  PinnedUploads* uploads = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu);
    uploads = &(*per_device)[device];
  }
  uploads->upload(stream, dst, src, bytes);
}

}  // namespace ringattn::cuda
