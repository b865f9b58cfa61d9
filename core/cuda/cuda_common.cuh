// Helpers shared by the CUDA kernel files (core/cuda/cuda_layers.cu, core/cuda/cuda_attention.cu):
// device scratch memory from the counting allocator, launch sizes, host copies of arguments that
// may live on either side, and block-wide reductions. Included only from .cu files.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/allocator.h"
#include "core/cuda/cuda_check.h"

namespace ringattn::cuda {

// kernel<<<grid, block, smem, stream>>>(args...), written RA_LAUNCH(grid, block, smem, stream,
// kernel)(args...): the same launch under nvcc; in the simulated build (RINGATTN_CUDA=SIM,
// core/cuda_sim/include/cuda_runtime.h), where the sources are C++, a call that runs the kernel's
// threads on the host. A kernel template names its arguments (kernel<T>): the simulation cannot
// deduce them from the call.
#ifdef RINGATTN_CUDA_SIM
#define RA_LAUNCH(grid, block, smem, stream, ...) \
  ::ringattn::sim::Launch((grid), (block), (smem), (stream), &__VA_ARGS__)
#else
#define RA_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
#endif

// Threads per block for every kernel. A power of two: block_reduce halves it. Simulated, two warps
// (every barrier still spans warps): the simulation's cost is threads x barriers, 5x less.
#ifdef RINGATTN_CUDA_SIM
inline constexpr int kThreads = 64;
#else
inline constexpr int kThreads = 256;
#endif
// Warps per block: rows per block for the kernels that give each row a warp.
inline constexpr int kWarps = kThreads / 32;

// The most blocks grid_for and grid_for_rows give. The simulation (RINGATTN_CUDA=SIM) runs the
// threads of a grid one after another, so there they are small: the grid-stride loops then take
// several turns at the tests' sizes, instead of only past 65535 rows (minutes of simulation).
#ifdef RINGATTN_CUDA_SIM
inline constexpr int64_t kMaxGridBlocks = 64, kMaxRowBlocks = 4;
#else
inline constexpr int64_t kMaxGridBlocks = 4096, kMaxRowBlocks = 65535;
#endif

// Blocks for a grid-stride loop over n items: enough to fill an H100 several times over, never
// more than the grid allows.
inline unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return unsigned(std::clamp<int64_t>(blocks, 1, kMaxGridBlocks));
}

// Blocks for kernels that give each block one row, or each warp one row when called with the
// number of row groups (grid-stride over rows).
inline unsigned grid_for_rows(int64_t rows) {
  return unsigned(std::clamp<int64_t>(rows, 1, kMaxRowBlocks));
}

// core/dtype.h's f32_to_bf16 on the device, on the bits: round to nearest even, NaN kept (quiet).
__device__ inline uint16_t round_to_bf16(float x) {
  uint32_t u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// Device memory for one call, from the CUDA allocator (so it shows in the peak bytes). Both the
// allocation and the free are ordered on the compute stream (cudaMallocAsync / cudaFreeAsync on
// the stream the backend attached to its allocator), so the destructor does not wait: kernels
// queued before it on that stream still see the memory, and later work reuses it after them.
// Only kernels of the backend's own stream may use it (the constructor takes the stream to say
// so at every call site).
class DeviceScratch {
 public:
  DeviceScratch(cudaStream_t /*stream: the backend's*/, size_t bytes, const char* what)
      : bytes_(bytes) {
    data_ = allocator_for(Device::CUDA).allocate(bytes, what);  // null when bytes == 0
  }
  ~DeviceScratch() {
    if (data_) allocator_for(Device::CUDA).deallocate(data_, bytes_);
  }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;

  template <typename T>
  T* at(size_t byte_offset = 0) const {
    return reinterpret_cast<T*>(static_cast<char*>(data_) + byte_offset);
  }

 private:
  size_t bytes_;
  void* data_ = nullptr;
};

// Byte offsets of the sections of one staging buffer, each 16-byte aligned.
class Layout {
 public:
  size_t add(size_t bytes) {
    const size_t at = size_;
    size_ += (bytes + 15) / 16 * 16;
    return at;
  }
  size_t bytes() const { return size_; }

 private:
  size_t size_ = 0;
};

// True when p is device (or managed) memory; false for ordinary host memory, pinned or not.
inline bool is_device_memory(const void* p) {
  cudaPointerAttributes attr{};
  const cudaError_t st = cudaPointerGetAttributes(&attr, p);
  if (st == cudaErrorInvalidValue) {
    (void)cudaGetLastError();  // older drivers report unregistered host memory so
    return false;
  }
  if (st != cudaSuccess) (void)cudaGetLastError();  // reported here, not again later
  CUDA_CHECK(st);  // a sticky fault is not "host memory": memcpy from the device would crash
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

// A host copy of n elements that may be in host or device memory (device: synchronises).
template <typename T>
std::vector<T> host_copy(cudaStream_t stream, const T* src, int64_t n) {
  std::vector<T> out(size_t(std::max<int64_t>(n, 0)));
  if (out.empty()) return out;
  if (is_device_memory(src)) {
    CUDA_CHECK(
        cudaMemcpyAsync(out.data(), src, out.size() * sizeof(T), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
  } else {
    std::memcpy(out.data(), src, out.size() * sizeof(T));
  }
  return out;
}

template <typename T>
struct MaxOp {
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};
// The larger of two floats, ignoring NaN (fmaxf): unlike MaxOp, the same for (a, b) and (b, a).
struct FmaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
template <typename T>
struct SumOp {
  __device__ T operator()(T a, T b) const { return a + b; }
};

// Reduces v over the block (blockDim.x == kThreads) with op; every thread gets the result.
// shared holds kThreads values. Ends with a barrier, so shared may be reused right away. Every
// thread of the block must call it (it contains __syncthreads).
template <typename T, typename Op>
__device__ T block_reduce(T v, T* shared, Op op) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s)
      shared[threadIdx.x] = op(shared[threadIdx.x], shared[threadIdx.x + s]);
    __syncthreads();
  }
  const T r = shared[0];
  __syncthreads();
  return r;
}

// Reduces v over the warp's 32 lanes with op, by a butterfly of shuffles: every lane gets the
// result, the same bits on every lane and every run, when op is commutative (each level combines
// the same pair on both of its lanes): SumOp, FmaxOp; not MaxOp once NaN is possible. All 32
// lanes of the warp must call it. No barrier: shuffles do not order memory between lanes.
template <typename T, typename Op>
__device__ T warp_reduce(T v, Op op) {
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Index of this thread in a 1-D grid-stride loop, and the stride, as 64-bit values.
__device__ inline int64_t global_thread() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline int64_t grid_stride() {
  return int64_t(gridDim.x) * blockDim.x;
}

}  // namespace ringattn::cuda
