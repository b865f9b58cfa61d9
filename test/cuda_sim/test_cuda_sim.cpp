// The simulated GPU itself (RINGATTN_CUDA=SIM, core/cuda_sim): that its barriers and shuffles
// behave as CUDA's, and that what would fault or hang on a GPU is an error here, not a pass.
// Only in the simulated build; rank 0 runs them (the simulation is deterministic).
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <thread>
#include <vector>

#include "core/cuda/cuda_common.cuh"
#include "core/cuda_sim/sim_memory.h"
#include "core/cuda_sim/sim_streams.h"
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

// out[i] = v for i < n.
__global__ void set_kernel(int* out, int n, int v) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = v;
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
  // A fault is found when the queued kernel runs, and is sticky, as on a GPU: every synchronising
  // call and cudaGetLastError report it from then on, and later work is dropped.
  RA_LAUNCH(1, 64, 0, nullptr, divergent_barrier_kernel)(out);
  CHECK(cudaGetLastError() == cudaSuccess);  // the launch itself was fine
  CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
  CHECK_THAT(sim::device_fault_message(),
             Catch::Contains("__syncthreads not reached by every thread") &&
                 Catch::Contains("32 at __syncthreads") && Catch::Contains("32 exited"));
  CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
  CHECK(cudaGetLastError() == cudaErrorLaunchFailure);  // not cleared by reading it
  CHECK(cudaMemsetAsync(out, 0, 4, nullptr) == cudaSuccess);
  CHECK(cudaStreamSynchronize(nullptr) == cudaErrorLaunchFailure);
  std::vector<int> host(64);
  CHECK(cudaMemcpy(host.data(), out, 4, cudaMemcpyDeviceToHost) == cudaErrorLaunchFailure);
  sim::clear_device_fault();  // a GPU would need a new process
  RA_LAUNCH(1, 32, 0, nullptr, partial_shuffle_kernel)(out);
  CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
  CHECK_THAT(sim::device_fault_message(),
             Catch::Contains("warp shuffle") && Catch::Contains("16 lanes"));
  sim::clear_device_fault();
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
  // Device pointer arrays are read when the product runs: an operand there that is host memory is
  // the device's fault then (an illegal address on a GPU), not a status at the call.
  void** arrays = device_alloc<void*>(3);
  const void* host_ptrs[3] = {a.data(), db, dc};  // A in host memory
  REQUIRE(cudaMemcpy(arrays, host_ptrs, sizeof(host_ptrs), cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK(cublasSgemmBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one,
                           reinterpret_cast<const float* const*>(arrays), 2,
                           reinterpret_cast<const float* const*>(arrays + 1), 3, &zero,
                           reinterpret_cast<float* const*>(arrays + 2), 2,
                           1) == CUBLAS_STATUS_SUCCESS);
  CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
  CHECK_THAT(sim::device_fault_message(),
             Catch::Contains("batched GEMM") && Catch::Contains("outside device memory"));
  sim::clear_device_fault();
  cudaFree(arrays);
  cudaFree(da);
  cudaFree(db);
  cudaFree(dc);
  cublasDestroy(h);
}

// The streams (core/cuda_sim/sim_streams.h): queued work runs only when something waits for it,
// and each kind of copy waits for what CUDA says it does. These are the rules the CUDA backend's
// tests then run under: a missing wait reads stale data here every time.
TEST_CASE("simulated GPU: queued work runs when the host or another stream waits for it",
          "[cuda]") {
  if (test::skip_without_gpu()) return;
  constexpr int n = 64;
  cudaStream_t s1 = nullptr, s2 = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking) == cudaSuccess);
  int* x = device_alloc<int>(n);
  int* y = device_alloc<int>(n);
  int* pinned = nullptr;
  REQUIRE(cudaMallocHost(reinterpret_cast<void**>(&pinned), n * sizeof(int)) == cudaSuccess);
  std::fill(pinned, pinned + n, 0);
  std::vector<int> host(n, 0);
  const auto all = [](const int* p, int v) {
    return std::all_of(p, p + n, [v](int e) { return e == v; });
  };

  SECTION("a kernel and a copy to pinned memory run at the stream's synchronisation") {
    const size_t before = sim::queued_work();
    RA_LAUNCH(1, n, 0, s1, set_kernel)(x, n, 7);
    REQUIRE(cudaMemcpyAsync(pinned, x, n * sizeof(int), cudaMemcpyDeviceToHost, s1) == cudaSuccess);
    CHECK(sim::queued_work() == before + 2);
    CHECK(all(pinned, 0));  // nothing ran: a host reading it now reads stale data
    REQUIRE(cudaStreamSynchronize(s1) == cudaSuccess);
    CHECK(all(pinned, 7));
    CHECK(sim::queued_work() == before);
  }
  SECTION("a copy to pageable host memory waits for its stream") {
    RA_LAUNCH(1, n, 0, s1, set_kernel)(x, n, 8);
    REQUIRE(cudaMemcpyAsync(host.data(), x, n * sizeof(int), cudaMemcpyDeviceToHost, s1) ==
            cudaSuccess);
    CHECK(all(host.data(), 8));
  }
  SECTION("a copy from pageable memory takes its source at the call, from pinned when it runs") {
    std::fill(host.begin(), host.end(), 3);
    std::fill(pinned, pinned + n, 3);
    REQUIRE(cudaMemcpyAsync(x, host.data(), n * sizeof(int), cudaMemcpyHostToDevice, s1) ==
            cudaSuccess);
    REQUIRE(cudaMemcpyAsync(y, pinned, n * sizeof(int), cudaMemcpyHostToDevice, s1) == cudaSuccess);
    std::fill(host.begin(), host.end(), 4);  // fine: the pageable source was staged
    std::fill(pinned, pinned + n, 4);        // a race on a GPU: the copy has not read it yet
    REQUIRE(cudaMemcpy(host.data(), x, n * sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(all(host.data(), -1));  // the legacy stream does not wait for a non-blocking one
    REQUIRE(cudaStreamSynchronize(s1) == cudaSuccess);
    REQUIRE(cudaMemcpy(host.data(), x, n * sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(all(host.data(), 3));
    REQUIRE(cudaMemcpy(host.data(), y, n * sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(all(host.data(), 4));
  }
  SECTION("a stream reads another's result only after waiting for its event") {
    cudaEvent_t e = nullptr;
    REQUIRE(cudaEventCreateWithFlags(&e, cudaEventDisableTiming) == cudaSuccess);
    // No event: s2's copy runs when s2 is synchronised, before s1's kernel.
    RA_LAUNCH(1, n, 0, s1, set_kernel)(x, n, 5);
    REQUIRE(cudaMemcpyAsync(y, x, n * sizeof(int), cudaMemcpyDeviceToDevice, s2) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(s2) == cudaSuccess);
    REQUIRE(cudaMemcpy(host.data(), y, n * sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(all(host.data(), -1));  // fresh device memory is all ones
    // With it: synchronising s2 runs s1 up to the event first.
    RA_LAUNCH(1, n, 0, s1, set_kernel)(x, n, 6);
    REQUIRE(cudaEventRecord(e, s1) == cudaSuccess);
    RA_LAUNCH(1, n, 0, s1, set_kernel)(x, n, 9);  // after the event: not waited for
    REQUIRE(cudaStreamWaitEvent(s2, e, 0) == cudaSuccess);
    REQUIRE(cudaMemcpyAsync(y, x, n * sizeof(int), cudaMemcpyDeviceToDevice, s2) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(s2) == cudaSuccess);
    REQUIRE(cudaMemcpy(host.data(), y, n * sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(all(host.data(), 6));
    // A pending event answers "not ready" once, then its work runs (pollers make progress).
    RA_LAUNCH(1, n, 0, s1, set_kernel)(x, n, 2);
    REQUIRE(cudaEventRecord(e, s1) == cudaSuccess);
    CHECK(cuda::query_event(e) == cudaErrorNotReady);
    CHECK(cudaGetLastError() == cudaSuccess);  // query_event cleared it
    CHECK(cuda::query_event(e) == cudaSuccess);
    REQUIRE(cudaMemcpyAsync(host.data(), x, n * sizeof(int), cudaMemcpyDeviceToHost, s2) ==
            cudaSuccess);
    CHECK(all(host.data(), 2));
    REQUIRE(cudaStreamSynchronize(s1) == cudaSuccess);
    cudaEventDestroy(e);
  }
  SECTION("a stream-ordered free happens when its stream reaches it") {
    int* z = nullptr;
    REQUIRE(cudaMallocAsync(reinterpret_cast<void**>(&z), n * sizeof(int), s1) == cudaSuccess);
    RA_LAUNCH(1, n, 0, s1, set_kernel)(z, n, 1);
    REQUIRE(cudaFreeAsync(z, s1) == cudaSuccess);
    CHECK(sim::device_memory(z, n * sizeof(int)));  // the kernel before the free still uses it
    REQUIRE(cudaStreamSynchronize(s1) == cudaSuccess);
    CHECK_FALSE(sim::device_memory(z, n * sizeof(int)));
    CHECK(cudaFreeAsync(z, s1) == cudaErrorInvalidValue);  // twice
    // A second free while the first is still queued is refused at the call.
    REQUIRE(cudaMallocAsync(reinterpret_cast<void**>(&z), n * sizeof(int), s1) == cudaSuccess);
    REQUIRE(cudaFreeAsync(z, s1) == cudaSuccess);
    CHECK(cudaFreeAsync(z, s2) == cudaErrorInvalidValue);
    CHECK(cudaFree(z) == cudaErrorInvalidValue);
    (void)cudaGetLastError();
    // Work queued on another stream that outlives the free, without an event: a named fault
    // when it runs (the freed address is held back, so no new allocation can take it meanwhile).
    REQUIRE(cudaMallocAsync(reinterpret_cast<void**>(&z), n * sizeof(int), s1) == cudaSuccess);
    REQUIRE(cudaMemsetAsync(z, 0, n * sizeof(int), s2) == cudaSuccess);
    REQUIRE(cudaFreeAsync(z, s1) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(s1) == cudaSuccess);
    CHECK(cudaStreamSynchronize(s2) == cudaErrorLaunchFailure);
    CHECK_THAT(sim::device_fault_message(),
               Catch::Contains("memset") && Catch::Contains("freed before it ran"));
    sim::clear_device_fault();
  }
  SECTION("a blocking stream and the legacy default stream wait for each other") {
    cudaStream_t blocking = nullptr;
    REQUIRE(cudaStreamCreate(&blocking) == cudaSuccess);
    RA_LAUNCH(1, n, 0, blocking, set_kernel)(x, n, 11);
    REQUIRE(cudaMemcpy(host.data(), x, n * sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(all(host.data(), 11));
    // And the other way: a copy to the host on the blocking stream waits for the legacy one.
    REQUIRE(cudaMemsetAsync(x, 0, n * sizeof(int), nullptr) == cudaSuccess);
    REQUIRE(cudaMemcpyAsync(host.data(), x, n * sizeof(int), cudaMemcpyDeviceToHost, blocking) ==
            cudaSuccess);
    CHECK(all(host.data(), 0));
    // Destroying a stream does not run its work: that happens later, as on a GPU.
    RA_LAUNCH(1, n, 0, blocking, set_kernel)(x, n, 12);
    REQUIRE(cudaStreamDestroy(blocking) == cudaSuccess);
    CHECK(sim::queued_work() > 0);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    REQUIRE(cudaMemcpy(host.data(), x, n * sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(all(host.data(), 12));
  }
  CHECK(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(sim::queued_work() == 0);
  REQUIRE(cudaFreeHost(pinned) == cudaSuccess);
  cudaFree(x);
  cudaFree(y);
  cudaStreamDestroy(s1);
  cudaStreamDestroy(s2);
}

namespace {

// What the simulated NCCL's tests share: a communication and a compute stream (non-blocking, as
// the CUDA backend's), an event, and an NCCL communicator over `group` (this rank alone by
// default) whose operations the tests queue on `comm`.
struct NcclStreams {
  cudaStream_t comm = nullptr, compute = nullptr;
  cudaEvent_t done = nullptr;
  ncclComm_t nccl = nullptr;
  explicit NcclStreams(MPI_Comm group = MPI_COMM_SELF) {
    REQUIRE(cudaStreamCreateWithFlags(&comm, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cudaEventCreateWithFlags(&done, cudaEventDisableTiming) == cudaSuccess);
    int rank = 0, size = 1;
    MPI_Comm_rank(group, &rank);
    MPI_Comm_size(group, &size);
    ncclUniqueId id;
    if (rank == 0) REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
    MPI_Bcast(&id, int(sizeof id), MPI_BYTE, 0, group);
    REQUIRE(ncclCommInitRank(&nccl, size, id, rank) == ncclSuccess);
  }
  ~NcclStreams() {
    (void)ncclCommDestroy(nccl);
    cudaEventDestroy(done);
    cudaStreamDestroy(comm);
    cudaStreamDestroy(compute);
  }
  NcclStreams(const NcclStreams&) = delete;
  NcclStreams& operator=(const NcclStreams&) = delete;
};

}  // namespace

TEST_CASE("simulated GPU: work that may run during a watched operation leaves its memory alone",
          "[cuda]") {
  if (test::skip_without_gpu()) return;
  constexpr int n = 256;
  const NcclStreams streams;  // an all-gather of `in` into `out` on `comm`, over this rank alone
  cudaStream_t comm = streams.comm, compute = streams.compute;
  cudaEvent_t done = streams.done;
  ncclComm_t nccl = streams.nccl;
  int* in = device_alloc<int>(n);
  int* out = device_alloc<int>(n);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const auto gather = [&] {
    REQUIRE(ncclAllGather(in, out, n, ncclInt32, nccl, comm) == ncclSuccess);
    CHECK(sim::watched_operations() == 1);
  };
  const auto fault_names = [](const char* item, const char* what) {
    CHECK_THAT(sim::device_fault_message(),
               Catch::Contains(item) && Catch::Contains(what) &&
                   Catch::Contains("not ordered after that operation"));
    sim::clear_device_fault();
  };

  SECTION("a kernel that overwrites the input without waiting for the collective: a fault") {
    gather();
    RA_LAUNCH(1, n, 0, compute, set_kernel)(in, n, 3);
    // The order the host synchronises in does not matter: compute's kernel is checked whenever
    // it runs while the all-gather is watched.
    SECTION("compute first") {
      CHECK(cudaStreamSynchronize(compute) == cudaErrorLaunchFailure);
    }
    SECTION("communication first") {
      REQUIRE(cudaStreamSynchronize(comm) == cudaSuccess);
      CHECK(cudaStreamSynchronize(compute) == cudaErrorLaunchFailure);
    }
    fault_names("kernel: changed 1024 bytes", "ncclAllGather (its input or output)");
  }
  SECTION("a write queued before the collective, which does not wait for it: a fault too") {
    REQUIRE(cudaMemsetAsync(in, 0, n * sizeof(int), compute) == cudaSuccess);
    gather();  // on a GPU it may read `in` before or after the memset
    CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
    fault_names("memset: changed", "ncclAllGather");
  }
  SECTION("writing the output, or freeing the input, concurrently: faults") {
    gather();
    SECTION("output") {
      REQUIRE(cudaMemsetAsync(out, 0, n * sizeof(int), compute) == cudaSuccess);
      CHECK(cudaStreamSynchronize(compute) == cudaErrorLaunchFailure);
      fault_names("memset: changed", "ncclAllGather");
    }
    SECTION("input freed") {
      REQUIRE(cudaFreeAsync(in, compute) == cudaSuccess);
      in = nullptr;
      CHECK(cudaStreamSynchronize(compute) == cudaErrorLaunchFailure);
      fault_names("free: freed 1024 bytes", "ncclAllGather");
    }
  }
  SECTION("ordered after the collective by an event, the same writes are fine") {
    gather();
    REQUIRE(cudaEventRecord(done, comm) == cudaSuccess);
    SECTION("but not those queued before the wait") {
      RA_LAUNCH(1, n, 0, compute, set_kernel)(out, n, 4);
      REQUIRE(cudaStreamWaitEvent(compute, done, 0) == cudaSuccess);
      CHECK(cudaStreamSynchronize(compute) == cudaErrorLaunchFailure);
      fault_names("kernel: changed", "ncclAllGather");
    }
    SECTION("after the wait") {
      REQUIRE(cudaStreamWaitEvent(compute, done, 0) == cudaSuccess);
      RA_LAUNCH(1, n, 0, compute, set_kernel)(in, n, 6);
      REQUIRE(cudaFreeAsync(out, compute) == cudaSuccess);
      out = nullptr;
      CHECK(cudaStreamSynchronize(compute) == cudaSuccess);
      CHECK(sim::watched_operations() == 0);
    }
  }
  SECTION("a later collective on the same stream does not stand for a host synchronisation") {
    int* in2 = device_alloc<int>(n);
    int* out2 = device_alloc<int>(n);
    gather();
    // Issuing it runs the communication stream up to it (the first gather included), but the
    // host would not have waited on a GPU: work queued after it is still concurrent with both.
    REQUIRE(ncclAllGather(in2, out2, n, ncclInt32, nccl, comm) == ncclSuccess);
    CHECK(sim::watched_operations() == 2);
    RA_LAUNCH(1, n, 0, compute, set_kernel)(in, n, 9);
    CHECK(cudaStreamSynchronize(compute) == cudaErrorLaunchFailure);
    fault_names("kernel: changed", "ncclAllGather");
    cudaFree(in2);
    cudaFree(out2);
  }
  SECTION("so are writes queued after the host waited for the collective") {
    gather();
    SECTION("stream") {
      REQUIRE(cudaStreamSynchronize(comm) == cudaSuccess);
    }
    SECTION("event") {
      REQUIRE(cudaEventRecord(done, comm) == cudaSuccess);
      REQUIRE(cudaEventSynchronize(done) == cudaSuccess);
    }
    RA_LAUNCH(1, n, 0, compute, set_kernel)(in, n, 7);
    CHECK(cudaStreamSynchronize(compute) == cudaSuccess);
    CHECK(sim::watched_operations() == 0);
  }
  SECTION("work that runs beside it and leaves its memory alone is fine") {
    int* other = device_alloc<int>(n);
    gather();
    RA_LAUNCH(1, n, 0, compute, set_kernel)(other, n, 8);
    // An ordered write first (a later collective's output, say), then concurrent work that does
    // not touch the memory: the ordered change is not blamed on it.
    REQUIRE(cudaMemsetAsync(out, 1, n * sizeof(int), comm) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(comm) == cudaSuccess);
    CHECK(sim::watched_operations() == 1);  // compute's kernel may still run beside it
    CHECK(cudaStreamSynchronize(compute) == cudaSuccess);
    CHECK(sim::watched_operations() == 0);
    cudaFree(other);
  }
  SECTION("a wait on an event that has completed already orders the stream all the same") {
    int* in2 = device_alloc<int>(n);
    int* out2 = device_alloc<int>(n);
    gather();
    REQUIRE(cudaEventRecord(done, comm) == cudaSuccess);
    // Issuing a second collective on `comm` runs the first one's item: `done` has completed.
    REQUIRE(ncclAllGather(in2, out2, n, ncclInt32, nccl, comm) == ncclSuccess);
    // (Asked from another thread, which does not count as the host waiting for it.)
    cudaError_t state = cudaErrorNotReady;
    std::thread([&] { state = cudaEventQuery(done); }).join();
    REQUIRE(state == cudaSuccess);
    REQUIRE(cudaStreamWaitEvent(compute, done, 0) == cudaSuccess);
    // The host waits for compute, so for the first gather: the legacy stream may write `in`.
    REQUIRE(cudaStreamSynchronize(compute) == cudaSuccess);
    REQUIRE(cudaMemset(in, 0, n * sizeof(int)) == cudaSuccess);
    CHECK(cudaStreamSynchronize(nullptr) == cudaSuccess);
    // Not `in2`: nothing orders the host after the second gather.
    REQUIRE(cudaMemset(in2, 0, n * sizeof(int)) == cudaSuccess);
    CHECK(cudaStreamSynchronize(nullptr) == cudaErrorLaunchFailure);
    fault_names("memset: changed", "ncclAllGather");
    cudaFree(in2);
    cudaFree(out2);
  }
  SECTION("a synchronous copy into the memory is checked like queued work") {
    int* pinned = nullptr;
    REQUIRE(cudaMallocHost(reinterpret_cast<void**>(&pinned), n * sizeof(int)) == cudaSuccess);
    std::fill(pinned, pinned + n, 5);
    gather();
    // The legacy stream does not order against the non-blocking communication stream.
    CHECK(cudaMemcpy(in, pinned, n * sizeof(int), cudaMemcpyHostToDevice) ==
          cudaErrorLaunchFailure);
    fault_names("copy: changed", "ncclAllGather");
    gather();
    REQUIRE(cudaStreamSynchronize(comm) == cudaSuccess);
    CHECK(cudaMemcpy(in, pinned, n * sizeof(int), cudaMemcpyHostToDevice) == cudaSuccess);
    REQUIRE(cudaFreeHost(pinned) == cudaSuccess);
  }
  SECTION("a send and a receive in one group: the send's input is watched too") {
    REQUIRE(ncclGroupStart() == ncclSuccess);
    REQUIRE(ncclSend(in, n, ncclInt32, 0, nccl, comm) == ncclSuccess);
    REQUIRE(ncclRecv(out, n, ncclInt32, 0, nccl, comm) == ncclSuccess);
    REQUIRE(ncclGroupEnd() == ncclSuccess);
    CHECK(sim::watched_operations() == 2);
    RA_LAUNCH(1, n, 0, compute, set_kernel)(in, n, 10);
    CHECK(cudaStreamSynchronize(compute) == cudaErrorLaunchFailure);
    fault_names("kernel: changed", "ncclSend");
  }
  SECTION("queued work may not call CUDA") {
    cudaHostFn_t sync_in_host_fn = [](void* s) {
      (void)cudaStreamSynchronize(static_cast<cudaStream_t>(s));
    };
    REQUIRE(cudaLaunchHostFunc(compute, sync_in_host_fn, comm) == cudaSuccess);
    CHECK(cudaStreamSynchronize(compute) == cudaErrorLaunchFailure);
    CHECK_THAT(sim::device_fault_message(),
               Catch::Contains("host function") && Catch::Contains("CUDA forbids it"));
    sim::clear_device_fault();
  }
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);  // no fault left behind
  cudaFree(in);
  cudaFree(out);
}

namespace {

// Reads n ints of device memory through a synchronous copy (the legacy stream).
std::vector<int> host_of(const int* p, int n) {
  std::vector<int> h(size_t(n), 0);
  REQUIRE(cudaMemcpy(h.data(), p, size_t(n) * sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess);
  return h;
}

bool all_equal(const std::vector<int>& v, int x) {
  return std::all_of(v.begin(), v.end(), [x](int e) { return e == x; });
}

}  // namespace

TEST_CASE("simulated NCCL: an output reads NaN until work ordered after its operation runs",
          "[cuda]") {
  if (test::skip_without_gpu()) return;
  constexpr int n = 256;
  constexpr int kPoison = -1;  // all ones, as a float NaN
  const NcclStreams streams;
  cudaStream_t comm = streams.comm, compute = streams.compute;
  cudaEvent_t done = streams.done;
  ncclComm_t nccl = streams.nccl;
  int* in = device_alloc<int>(n);
  int* out = device_alloc<int>(n);
  int* copy = device_alloc<int>(n);
  RA_LAUNCH(1, n, 0, nullptr, set_kernel)(in, n, 3);
  RA_LAUNCH(1, n, 0, nullptr, set_kernel)(out, n, 7);  // the old contents
  RA_LAUNCH(1, n, 0, nullptr, set_kernel)(copy, n, 0);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const size_t bytes = n * sizeof(int);
  const auto read_out_on_compute = [&] {
    REQUIRE(cudaMemcpyAsync(copy, out, bytes, cudaMemcpyDeviceToDevice, compute) == cudaSuccess);
  };

  SECTION("a reader that does not wait reads NaN, whichever stream the host waits for first") {
    REQUIRE(ncclAllGather(in, out, n, ncclInt32, nccl, comm) == ncclSuccess);
    read_out_on_compute();
    SECTION("compute first") {
      REQUIRE(cudaStreamSynchronize(compute) == cudaSuccess);
    }
    SECTION("communication first") {
      // The host knows the gather completed, but the copy was queued before it knew.
      REQUIRE(cudaStreamSynchronize(comm) == cudaSuccess);
      REQUIRE(cudaStreamSynchronize(compute) == cudaSuccess);
    }
    CHECK(host_of(copy, n)[0] == kPoison);
    CHECK(all_equal(host_of(copy, n), kPoison));
    REQUIRE(cudaStreamSynchronize(comm) == cudaSuccess);
    CHECK(all_equal(host_of(out, n), 3));  // queued after the host knew: the result
    CHECK(sim::watched_operations() == 0);
  }
  SECTION("a reader ordered after it by an event reads the result") {
    REQUIRE(ncclAllGather(in, out, n, ncclInt32, nccl, comm) == ncclSuccess);
    REQUIRE(cudaEventRecord(done, comm) == cudaSuccess);
    REQUIRE(cudaStreamWaitEvent(compute, done, 0) == cudaSuccess);
    read_out_on_compute();
    REQUIRE(cudaStreamSynchronize(compute) == cudaSuccess);
    CHECK(all_equal(host_of(copy, n), 3));
  }
  SECTION("so does the operation's own stream, and a later operation reading it as its input") {
    int* out2 = device_alloc<int>(n);
    REQUIRE(ncclAllGather(in, out, n, ncclInt32, nccl, comm) == ncclSuccess);
    REQUIRE(ncclAllGather(out, out2, n, ncclInt32, nccl, comm) == ncclSuccess);
    REQUIRE(cudaMemcpyAsync(copy, out, bytes, cudaMemcpyDeviceToDevice, comm) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(comm) == cudaSuccess);
    CHECK(all_equal(host_of(out2, n), 3));
    CHECK(all_equal(host_of(copy, n), 3));
    cudaFree(out2);
  }
  SECTION("a reader of the old contents that the operation does not wait for reads NaN too") {
    read_out_on_compute();
    SECTION("without an event") {
      REQUIRE(ncclAllGather(in, out, n, ncclInt32, nccl, comm) == ncclSuccess);
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      CHECK(all_equal(host_of(copy, n), kPoison));
    }
    SECTION("with one, it reads them") {
      REQUIRE(cudaEventRecord(done, compute) == cudaSuccess);
      REQUIRE(cudaStreamWaitEvent(comm, done, 0) == cudaSuccess);
      REQUIRE(ncclAllGather(in, out, n, ncclInt32, nccl, comm) == ncclSuccess);
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      CHECK(all_equal(host_of(copy, n), 7));
    }
    CHECK(all_equal(host_of(out, n), 3));
  }
  SECTION("an in-place all-gather or broadcast keeps what its root or rank already holds") {
    // One rank: this rank's slice is the whole output, so a reader beside it reads it unchanged.
    SECTION("all-gather") {
      REQUIRE(ncclAllGather(out, out, n, ncclInt32, nccl, comm) == ncclSuccess);
    }
    SECTION("broadcast") {
      REQUIRE(ncclBroadcast(out, out, n, ncclInt32, 0, nccl, comm) == ncclSuccess);
    }
    read_out_on_compute();
    REQUIRE(cudaStreamSynchronize(compute) == cudaSuccess);
    CHECK(all_equal(host_of(copy, n), 7));
    // Not an in-place all-reduce: its output is another value.
    REQUIRE(ncclAllReduce(out, out, n, ncclInt32, ncclSum, nccl, comm) == ncclSuccess);
    read_out_on_compute();
    REQUIRE(cudaStreamSynchronize(compute) == cudaSuccess);
    CHECK(all_equal(host_of(copy, n), kPoison));
  }
  SECTION("an output that is an earlier operation's input") {
    int* in2 = device_alloc<int>(n);
    RA_LAUNCH(1, n, 0, nullptr, set_kernel)(in2, n, 5);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    REQUIRE(ncclAllGather(in, out, n, ncclInt32, nccl, comm) == ncclSuccess);
    SECTION("on another stream, not ordered after it: a fault at the call") {
      REQUIRE(ncclAllGather(in2, in, n, ncclInt32, nccl, compute) == ncclSuccess);
      CHECK_THAT(sim::device_fault_message(),
                 Catch::Contains("ncclAllGather: changed 1024 bytes") &&
                     Catch::Contains("memory of ncclAllGather") &&
                     Catch::Contains("not ordered after that operation"));
      CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
      sim::clear_device_fault();
    }
    SECTION("ordered after it, no fault, then or for concurrent work later") {
      // A kernel beside the first gather runs (so its memory's hash is taken), then a gather
      // ordered after it overwrites its input at the call, then another kernel beside it runs:
      // the change is the ordered gather's, not the kernel's.
      int* other = device_alloc<int>(n);
      RA_LAUNCH(1, n, 0, compute, set_kernel)(other, n, 1);
      REQUIRE(cudaStreamSynchronize(compute) == cudaSuccess);
      REQUIRE(ncclAllGather(in2, in, n, ncclInt32, nccl, comm) == ncclSuccess);
      RA_LAUNCH(1, n, 0, compute, set_kernel)(other, n, 2);
      CHECK(cudaStreamSynchronize(compute) == cudaSuccess);
      REQUIRE(cudaStreamSynchronize(comm) == cudaSuccess);
      CHECK(all_equal(host_of(in, n), 5));
      CHECK(all_equal(host_of(out, n), 3));
      cudaFree(other);
    }
    cudaFree(in2);
  }
  SECTION("the host reads the result once it has synchronised, while other streams are busy") {
    // Unrelated work pending on compute keeps the watch alive: the copies to the host must land
    // the result themselves.
    int* other = device_alloc<int>(n);
    RA_LAUNCH(1, n, 0, compute, set_kernel)(other, n, 1);
    std::vector<int> h(bytes / sizeof(int), 0);
    SECTION("a copy to pageable memory on the operation's stream") {
      REQUIRE(ncclAllGather(in, out, n, ncclInt32, nccl, comm) == ncclSuccess);
      REQUIRE(cudaMemcpyAsync(h.data(), out, bytes, cudaMemcpyDeviceToHost, comm) == cudaSuccess);
    }
    SECTION("a synchronous copy after a stream synchronisation") {
      REQUIRE(ncclAllGather(in, out, n, ncclInt32, nccl, comm) == ncclSuccess);
      REQUIRE(cudaStreamSynchronize(comm) == cudaSuccess);
      REQUIRE(cudaMemcpy(h.data(), out, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
    }
    SECTION("a synchronous copy into pinned memory after an event synchronisation") {
      int* pinned = nullptr;
      REQUIRE(cudaMallocHost(reinterpret_cast<void**>(&pinned), bytes) == cudaSuccess);
      REQUIRE(ncclAllGather(in, out, n, ncclInt32, nccl, comm) == ncclSuccess);
      REQUIRE(cudaEventRecord(done, comm) == cudaSuccess);
      REQUIRE(cudaEventSynchronize(done) == cudaSuccess);
      REQUIRE(cudaMemcpy(pinned, out, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
      std::copy(pinned, pinned + n, h.begin());
      REQUIRE(cudaFreeHost(pinned) == cudaSuccess);
    }
    SECTION("a synchronous copy after polling the event") {
      REQUIRE(ncclAllGather(in, out, n, ncclInt32, nccl, comm) == ncclSuccess);
      REQUIRE(cudaEventRecord(done, comm) == cudaSuccess);
      while (cuda::query_event(done) == cudaErrorNotReady) {
      }
      REQUIRE(cudaMemcpy(h.data(), out, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
    }
    SECTION("a synchronous copy after an operation on a blocking stream (legacy ordering)") {
      cudaStream_t blocking = nullptr;
      REQUIRE(cudaStreamCreate(&blocking) == cudaSuccess);
      REQUIRE(ncclAllGather(in, out, n, ncclInt32, nccl, blocking) == ncclSuccess);
      REQUIRE(cudaMemcpy(h.data(), out, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
      cudaStreamDestroy(blocking);
    }
    CHECK(all_equal(h, 3));
    CHECK(sim::watched_operations() == 1);  // compute's kernel may still run beside it
    REQUIRE(cudaStreamSynchronize(compute) == cudaSuccess);
    cudaFree(other);
  }
  SECTION("a later operation on the same stream lands only the results it touches") {
    int* x = device_alloc<int>(n);
    int* y = device_alloc<int>(n);
    REQUIRE(ncclAllGather(in, out, n, ncclInt32, nccl, comm) == ncclSuccess);
    REQUIRE(ncclAllGather(x, y, n, ncclInt32, nccl, comm) == ncclSuccess);
    read_out_on_compute();  // without waiting for either
    REQUIRE(cudaStreamSynchronize(compute) == cudaSuccess);
    CHECK(all_equal(host_of(copy, n), kPoison));
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    cudaFree(x);
    cudaFree(y);
  }
  SECTION("an operation ordered after a result by a host synchronisation alone reads it") {
    cudaStream_t side = nullptr;
    REQUIRE(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking) == cudaSuccess);
    int* other = device_alloc<int>(n);
    int* y = device_alloc<int>(n);
    RA_LAUNCH(1, n, 0, compute, set_kernel)(other, n, 1);  // keeps the watch alive
    REQUIRE(ncclAllReduce(in, out, n, ncclInt32, ncclSum, nccl, comm) == ncclSuccess);
    REQUIRE(cudaStreamSynchronize(comm) == cudaSuccess);
    REQUIRE(ncclAllReduce(out, y, n, ncclInt32, ncclSum, nccl, side) == ncclSuccess);
    REQUIRE(cudaStreamSynchronize(side) == cudaSuccess);
    CHECK(all_equal(host_of(y, n), 3));
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    cudaFree(other);
    cudaFree(y);
    cudaStreamDestroy(side);
  }
  SECTION("two operations writing one output from streams not ordered: a fault at the second") {
    cudaStream_t side = nullptr;
    REQUIRE(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(ncclAllGather(in, out, n, ncclInt32, nccl, comm) == ncclSuccess);
    // (Both outputs hold the poison then: a hash would see no change.)
    REQUIRE(ncclAllGather(copy, out, n, ncclInt32, nccl, side) == ncclSuccess);
    CHECK_THAT(sim::device_fault_message(),
               Catch::Contains("ncclAllGather: its output, 1024 bytes") &&
                   Catch::Contains("overlaps memory of ncclAllGather") &&
                   Catch::Contains("not ordered after that operation"));
    CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
    sim::clear_device_fault();
    cudaStreamDestroy(side);
  }
  SECTION("every kind of operation's output is poisoned for a reader beside it") {
    SECTION("all-reduce") {
      REQUIRE(ncclAllReduce(in, out, n, ncclInt32, ncclSum, nccl, comm) == ncclSuccess);
    }
    SECTION("reduce-scatter") {
      REQUIRE(ncclReduceScatter(in, out, n, ncclInt32, ncclSum, nccl, comm) == ncclSuccess);
    }
    SECTION("broadcast") {
      REQUIRE(ncclBroadcast(in, out, n, ncclInt32, 0, nccl, comm) == ncclSuccess);
    }
    SECTION("a receive, grouped with its send") {
      REQUIRE(ncclGroupStart() == ncclSuccess);
      REQUIRE(ncclSend(in, n, ncclInt32, 0, nccl, comm) == ncclSuccess);
      REQUIRE(ncclRecv(out, n, ncclInt32, 0, nccl, comm) == ncclSuccess);
      REQUIRE(ncclGroupEnd() == ncclSuccess);
    }
    read_out_on_compute();
    REQUIRE(cudaStreamSynchronize(compute) == cudaSuccess);
    CHECK(all_equal(host_of(copy, n), kPoison));
    REQUIRE(cudaStreamSynchronize(comm) == cudaSuccess);
    CHECK(all_equal(host_of(out, n), 3));
  }
  SECTION("past the cap on watched operations, the oldest result lands at once, not never") {
    constexpr int kOps = 260;  // more than the simulation watches at once (256)
    std::vector<int*> outs;
    for (int i = 0; i < kOps; ++i) {
      outs.push_back(device_alloc<int>(n));
      REQUIRE(ncclAllGather(in, outs.back(), n, ncclInt32, nccl, comm) == ncclSuccess);
    }
    CHECK(sim::watched_operations() == 256);
    REQUIRE(cudaStreamSynchronize(comm) == cudaSuccess);
    for (int* o : outs) {
      CHECK(all_equal(host_of(o, n), 3));
      cudaFree(o);
    }
  }
  SECTION("a result lands even when nothing ordered after it runs") {
    REQUIRE(ncclAllGather(in, out, n, ncclInt32, nccl, comm) == ncclSuccess);
    REQUIRE(cudaStreamSynchronize(comm) == cudaSuccess);
    CHECK(sim::watched_operations() == 0);  // the watch ended; its result landed then
    std::vector<int> h(bytes / sizeof(int));
    std::memcpy(h.data(), out, bytes);  // (the simulated device's memory is the host's)
    CHECK(all_equal(h, 3));
  }
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);  // no fault left behind
  cudaFree(in);
  cudaFree(out);
  cudaFree(copy);
}

// On every rank (a [device] test: 1, 2 and 4 ranks), where an all-gather in place has slices of
// other ranks to poison and one of its own to keep.
TEST_CASE("simulated NCCL on several ranks: an in-place all-gather keeps this rank's slice",
          "[device]") {
  constexpr int n = 64;
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const NcclStreams streams(MPI_COMM_WORLD);
  cudaStream_t comm = streams.comm, compute = streams.compute;
  ncclComm_t nccl = streams.nccl;
  const int all = n * size;
  int* buf = device_alloc<int>(size_t(all));
  int* copy = device_alloc<int>(size_t(all));
  RA_LAUNCH(1, all, 0, nullptr, set_kernel)(buf, all, 7);
  RA_LAUNCH(1, n, 0, nullptr, set_kernel)(buf + rank * n, n, 100 + rank);  // this rank's input
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);

  REQUIRE(ncclAllGather(buf + rank * n, buf, n, ncclInt32, nccl, comm) == ncclSuccess);
  // A reader beside it: this rank's slice, then NaN (all ones) in every other rank's.
  REQUIRE(cudaMemcpyAsync(copy, buf, size_t(all) * sizeof(int), cudaMemcpyDeviceToDevice,
                          compute) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(compute) == cudaSuccess);
  const std::vector<int> beside = host_of(copy, all);
  REQUIRE(cudaStreamSynchronize(comm) == cudaSuccess);
  const std::vector<int> after = host_of(buf, all);
  for (int q = 0; q < size; ++q) {
    INFO("slice of rank " << q << " on rank " << rank);
    const auto slice = [&](const std::vector<int>& v) {
      return std::vector<int>(v.begin() + q * n, v.begin() + (q + 1) * n);
    };
    CHECK(all_equal(slice(beside), q == rank ? 100 + rank : -1));
    CHECK(all_equal(slice(after), 100 + q));
  }
  // An in-place broadcast from rank 0: the root keeps its buffer, the others' is poisoned.
  RA_LAUNCH(1, n, 0, nullptr, set_kernel)(buf, n, rank == 0 ? 11 : 12);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  REQUIRE(ncclBroadcast(buf, buf, n, ncclInt32, 0, nccl, comm) == ncclSuccess);
  REQUIRE(cudaMemcpyAsync(copy, buf, size_t(n) * sizeof(int), cudaMemcpyDeviceToDevice, compute) ==
          cudaSuccess);
  REQUIRE(cudaStreamSynchronize(compute) == cudaSuccess);
  CHECK(all_equal(host_of(copy, n), rank == 0 ? 11 : -1));
  REQUIRE(cudaStreamSynchronize(comm) == cudaSuccess);
  CHECK(all_equal(host_of(buf, n), 11));
  cudaFree(buf);
  cudaFree(copy);
}
