// The simulated GPU itself (RINGATTN_CUDA=SIM, core/cuda_sim): that its barriers and shuffles
// behave as CUDA's, and that what would fault or hang on a GPU is an error here, not a pass.
// Only in the simulated build; rank 0 runs them (the simulation is deterministic).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "core/cuda/cuda_common.cuh"
#include "test/cuda_test_util.h"

using namespace ringattn;

namespace {

// out[t] = in[(t + 1) % n] through shared memory: right only if the barrier waits for everyone.
__global__ void rotate_kernel(const int* in, int* out) {
  __shared__ int s[1024];
  const int t = int(threadIdx.x), n = int(blockDim.x);
  s[t] = in[blockIdx.x * n + t];
  __syncthreads();
  out[blockIdx.x * n + t] = s[(t + 1) % n];
}

// rotate_kernel without its barrier: a race.
__global__ void rotate_racy_kernel(const int* in, int* out) {
  __shared__ int s[1024];
  const int t = int(threadIdx.x), n = int(blockDim.x);
  s[t] = in[blockIdx.x * n + t];
  out[blockIdx.x * n + t] = s[(t + 1) % n];
}

// Every lane gets its warp's sum by a butterfly of shuffles.
__global__ void warp_sum_kernel(const int* in, int* out) {
  const int t = int(blockIdx.x * blockDim.x + threadIdx.x);
  int v = in[t];
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  out[t] = v;
}

// The first half of the block skips the barrier: a hang or garbage on a GPU.
__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x >= blockDim.x / 2) __syncthreads();
  out[threadIdx.x] = 1;
}

// Lanes 0..15 leave before the shuffle the others wait in.
__global__ void partial_shuffle_kernel(int* out) {
  if (threadIdx.x < 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 1);
}

template <typename T>
T* device_alloc(size_t n) {
  void* p = nullptr;
  REQUIRE(cudaMalloc(&p, n * sizeof(T)) == cudaSuccess);
  return static_cast<T*>(p);
}

}  // namespace

TEST_CASE("simulated GPU: barriers wait for the whole block, shuffles for the whole warp",
          "[cuda]") {
  if (test::skip_without_gpu()) return;
  const int blocks = 3, threads = 96;  // three warps per block
  std::vector<int> host(size_t(blocks * threads));
  std::iota(host.begin(), host.end(), 7);
  int* in = device_alloc<int>(host.size());
  int* out = device_alloc<int>(host.size());
  REQUIRE(cudaMemcpy(in, host.data(), host.size() * 4, cudaMemcpyHostToDevice) == cudaSuccess);

  RA_LAUNCH(blocks, threads, 0, nullptr, rotate_kernel)(in, out);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  std::vector<int> got(host.size());
  REQUIRE(cudaMemcpy(got.data(), out, got.size() * 4, cudaMemcpyDeviceToHost) == cudaSuccess);
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < threads; ++t)
      CHECK(got[size_t(b * threads + t)] == host[size_t(b * threads + (t + 1) % threads)]);

  // Without the barrier the blocks disagree: threads run forwards in one, backwards in the next,
  // so a read of a later thread's write sees it in one block only.
  RA_LAUNCH(blocks, threads, 0, nullptr, rotate_racy_kernel)(in, out);
  REQUIRE(cudaMemcpy(got.data(), out, got.size() * 4, cudaMemcpyDeviceToHost) == cudaSuccess);
  int wrong[blocks] = {};
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < threads; ++t)
      wrong[b] += got[size_t(b * threads + t)] != host[size_t(b * threads + (t + 1) % threads)];
  // Forwards only the last thread reads a written value; backwards only the first thread to run
  // (the last) reads an unwritten one. Which block runs which way alternates with the launch.
  CHECK(std::min(wrong[0], wrong[1]) == 1);
  CHECK(wrong[0] + wrong[1] == threads);
  CHECK(wrong[2] == wrong[0]);

  RA_LAUNCH(blocks, threads, 0, nullptr, warp_sum_kernel)(in, out);
  REQUIRE(cudaMemcpy(got.data(), out, got.size() * 4, cudaMemcpyDeviceToHost) == cudaSuccess);
  for (size_t w = 0; w < host.size() / 32; ++w) {
    const int sum =
        std::accumulate(host.begin() + long(32 * w), host.begin() + long(32 * w + 32), 0);
    for (size_t l = 0; l < 32; ++l) CHECK(got[32 * w + l] == sum);
  }
  cudaFree(in);
  cudaFree(out);
}

TEST_CASE("simulated GPU: divergent barriers and shuffles are errors, as are bad launches",
          "[cuda]") {
  if (test::skip_without_gpu()) return;
  int* out = device_alloc<int>(64);
  CHECK_THROWS_WITH(RA_LAUNCH(1, 64, 0, nullptr, divergent_barrier_kernel)(out),
                    Catch::Contains("__syncthreads not reached by every thread") &&
                        Catch::Contains("32 at __syncthreads") && Catch::Contains("32 exited"));
  CHECK_THROWS_WITH(RA_LAUNCH(1, 32, 0, nullptr, partial_shuffle_kernel)(out),
                    Catch::Contains("warp shuffle") && Catch::Contains("16 lanes"));
  // The driver's limits: an invalid configuration, left as the last error, nothing run.
  RA_LAUNCH(1, 2048, 0, nullptr, divergent_barrier_kernel)(out);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  RA_LAUNCH(dim3(1, 70000), 32, 0, nullptr, divergent_barrier_kernel)(out);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  CHECK(cudaGetLastError() == cudaSuccess);  // read once
  cudaFree(out);
}

TEST_CASE("simulated GPU: copies and frees are checked against the device allocations", "[cuda]") {
  if (test::skip_without_gpu()) return;
  float* d = device_alloc<float>(16);
  std::vector<float> h(32, 1.0f);
  CHECK(cudaMemcpy(d, h.data(), 16 * 4, cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK(cudaMemcpy(d + 8, h.data(), 9 * 4, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(h.data(), d, 17 * 4, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
  // The kind must match the pointers.
  CHECK(cudaMemcpy(h.data(), d, 4, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(d, h.data(), 4, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(d, h.data(), 4, cudaMemcpyDefault) == cudaSuccess);
  CHECK(cudaMemsetAsync(d + 15, 0, 8, nullptr) == cudaErrorInvalidValue);
  cudaPointerAttributes attr;
  REQUIRE(cudaPointerGetAttributes(&attr, d + 3) == cudaSuccess);
  CHECK(attr.type == cudaMemoryTypeDevice);
  REQUIRE(cudaPointerGetAttributes(&attr, h.data()) == cudaSuccess);
  CHECK(attr.type == cudaMemoryTypeUnregistered);
  CHECK(cudaFree(d + 1) == cudaErrorInvalidValue);  // not what cudaMalloc returned
  CHECK(cudaFree(d) == cudaSuccess);
  CHECK(cudaFree(d) == cudaErrorInvalidValue);  // twice
  (void)cudaGetLastError();
}

TEST_CASE("simulated GPU: cuBLAS is column-major and checks its operands", "[cuda]") {
  if (test::skip_without_gpu()) return;
  cublasHandle_t h = nullptr;
  REQUIRE(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
  // Column-major A (2 x 3) = [1 2 3; 4 5 6], B (3 x 2) = [1 0; 0 1; 1 1]: C = A B = [4 5; 10 11].
  const std::vector<float> a = {1, 4, 2, 5, 3, 6}, b = {1, 0, 1, 0, 1, 1};
  float* da = device_alloc<float>(6);
  float* db = device_alloc<float>(6);
  float* dc = device_alloc<float>(4);
  REQUIRE(cudaMemcpy(da, a.data(), 24, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(db, b.data(), 24, cudaMemcpyHostToDevice) == cudaSuccess);
  const float one = 1, zero = 0;
  REQUIRE(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, da, 2, db, 3, &zero, dc, 2) ==
          CUBLAS_STATUS_SUCCESS);
  std::vector<float> c(4);
  REQUIRE(cudaMemcpy(c.data(), dc, 16, cudaMemcpyDeviceToHost) == cudaSuccess);
  CHECK(c == std::vector<float>{4, 10, 5, 11});
  // Transposed: B^T (2 x 3) times A^T (3 x 2) = (A B)^T = [4 10; 5 11].
  REQUIRE(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_T, 2, 2, 3, &one, db, 3, da, 2, &zero, dc, 2) ==
          CUBLAS_STATUS_SUCCESS);
  REQUIRE(cudaMemcpy(c.data(), dc, 16, cudaMemcpyDeviceToHost) == cudaSuccess);
  CHECK(c == std::vector<float>{4, 5, 10, 11});
  // Refused: lda below A's rows, an operand past its allocation or in host memory, C over A.
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, da, 1, db, 3, &zero, dc, 2) ==
        CUBLAS_STATUS_INVALID_VALUE);
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, da + 1, 2, db, 3, &zero, dc, 2) ==
        CUBLAS_STATUS_INVALID_VALUE);
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, a.data(), 2, db, 3, &zero, dc,
                    2) == CUBLAS_STATUS_INVALID_VALUE);  // host memory
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 1, 2, &one, da, 2, db, 2, &zero, da + 2, 2) ==
        CUBLAS_STATUS_INVALID_VALUE);
  // Batched: the pointer arrays themselves must be device memory.
  const float* ptrs[1] = {da};
  float* cptrs[1] = {dc};
  const float* bptrs[1] = {db};
  CHECK(cublasSgemmBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, ptrs, 2, bptrs, 3, &zero,
                           cptrs, 2, 1) == CUBLAS_STATUS_INVALID_VALUE);
  cudaFree(da);
  cudaFree(db);
  cudaFree(dc);
  cublasDestroy(h);
}
