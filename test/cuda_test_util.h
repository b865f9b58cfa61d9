// Helpers shared by the CUDA backend tests (test/test_cuda*.cpp): the visible skip without a GPU,
// host <-> device copies, and the CUDA-against-CPU comparison.
#pragma once

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>

#include "core/backend.h"
#include "core/tensor.h"
#include "test_util.h"

namespace ringattn::test {

// True (after printing the skip line) when no GPU can be used: the caller returns. The simulated
// GPU (RINGATTN_CUDA=SIM) is deterministic and slow: rank 0 alone runs the tests there.
inline bool skip_without_gpu() {
#ifdef RINGATTN_CUDA_SIM
  if (world_rank() != 0) {
    std::printf("[cuda] simulated GPU: rank 0 runs this test\n");
    return true;
  }
#endif
  if (cuda_device_count() > 0) return false;
  std::printf("[cuda] skipped: no GPU\n");
  return true;
}

// Rows past the row kernels' grid (core/cuda/cuda_common.cuh's kMaxRowBlocks: 65535 on a GPU, 4
// simulated), so that their grid-stride loop wraps.
#ifdef RINGATTN_CUDA_SIM
inline constexpr int64_t kRowsPastGrid = 70;
#else
inline constexpr int64_t kRowsPastGrid = 70000;
#endif

inline Tensor to_device(Backend& gpu, const Tensor& host) {
  Tensor d = Tensor::empty(host.shape(), host.dtype(), Device::CUDA, "test input");
  gpu.copy_from_host(d.raw(), host.raw(), host.nbytes());
  return d;
}

inline Tensor to_host(Backend& gpu, const Tensor& dev) {
  Tensor h = Tensor::empty(dev.shape(), dev.dtype());
  gpu.copy_to_host(h.raw(), dev.raw(), dev.nbytes());
  return h;
}

// |got - want| <= atol + rtol * |want| everywhere (infinities must be equal, NaN never passes).
inline void check_close(const Tensor& got, const Tensor& want, double rtol, double atol,
                        const char* what) {
  REQUIRE(got.numel() == want.numel());
  const float* g = got.data<float>();
  const float* w = want.data<float>();
  double worst = 0;
  int64_t worst_at = 0, bad = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    if (std::isinf(w[i]) || std::isinf(g[i]) || std::isnan(g[i]) || std::isnan(w[i])) {
      if (!(std::isinf(w[i]) && g[i] == w[i])) ++bad;
      continue;
    }
    const double ratio = std::abs(double(g[i]) - double(w[i])) / (atol + rtol * std::abs(w[i]));
    if (ratio > worst) worst = ratio, worst_at = i;
  }
  INFO(what << ": worst " << worst << " x tolerance (rtol " << rtol << ", atol " << atol << ") at "
            << worst_at << ": cuda " << g[worst_at] << ", cpu " << w[worst_at] << "; " << bad
            << " inf/NaN mismatches");
  CHECK(bad == 0);
  CHECK(worst <= 1.0);
}

}  // namespace ringattn::test
