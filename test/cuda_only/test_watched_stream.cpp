// The NCCL transport's watch on its communication stream (comm/nccl/watched_stream.h) with real
// CUDA events: compiled only with CUDA, run only with a GPU. A host function that waits for a
// flag stands for a collective a dead peer never joins (it keeps the stream where it is), or for
// the computation a collective is queued behind.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "comm/nccl/watched_stream.h"
#include "core/cuda/cuda_check.h"
#include "cuda_test_util.h"
#include "hang_recorder.h"

using namespace ringattn;

namespace {

// Holds a stream at a host function until opened (at the latest when the gate is destroyed).
class Gate {
 public:
  explicit Gate(cudaStream_t s) : stream_(s) {}
  ~Gate() {
    open();
    (void)cudaStreamSynchronize(stream_);
  }
  void close_on_stream() { CUDA_CHECK(cudaLaunchHostFunc(stream_, &Gate::wait, this)); }
  void open() { open_.store(true); }

 private:
  static void CUDART_CB wait(void* self) {
    auto* g = static_cast<Gate*>(self);
    while (!g->open_.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  cudaStream_t stream_;
  std::atomic<bool> open_{false};
};

}  // namespace

TEST_CASE("WatchedStream reports an operation stuck on the stream, not one queued behind work",
          "[cuda]") {
  if (test::skip_without_gpu()) return;
  CUDA_CHECK(cudaSetDevice(0));
  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  float* buf = nullptr;
  CUDA_CHECK(cudaMalloc(&buf, 4096));
  {
    test::HangRecorder recorder;
    const WatchdogArm arm(0.3);
    WatchedStream watched(nullptr, s, 0, "1-rank group, world ranks 0");

    // Queued behind "computation" that takes four timeouts: not reported; released once done.
    {
      Gate compute(s);
      compute.close_on_stream();
      watched.run("queued op", [&] { CUDA_CHECK(cudaMemsetAsync(buf, 0, 4096, s)); });
      CHECK(watched.pending() == 1);
      std::this_thread::sleep_for(std::chrono::milliseconds(1200));
      CHECK(recorder.lines().empty());
    }
    CUDA_CHECK(cudaStreamSynchronize(s));
    watched.run("next op", [&] { CUDA_CHECK(cudaMemsetAsync(buf, 1, 4096, s)); });
    CUDA_CHECK(cudaStreamSynchronize(s));
    CHECK(watched.pending() <= 1);  // the finished "queued op" was released by this add
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    CHECK(recorder.lines().empty());

    // Started and never finishing (a peer that never joins): reported with its name and group.
    {
      Gate peer(s);
      watched.run("stuck op", [&] { peer.close_on_stream(); });
      REQUIRE(recorder.wait_for("stuck op running on the device for", 10.0));
      CHECK(recorder.saw("without finishing (1-rank group, world ranks 0)"));
      CHECK_FALSE(recorder.saw("queued op"));
    }
    CUDA_CHECK(cudaStreamSynchronize(s));
  }
  CUDA_CHECK(cudaFree(buf));
  CUDA_CHECK(cudaStreamDestroy(s));
}
