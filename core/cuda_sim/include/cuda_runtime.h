// The simulated CUDA runtime (RINGATTN_CUDA=SIM): the part of <cuda_runtime.h> that ringattn uses,
// on the host, so that the CUDA backend's own sources (core/cuda/*.cu, compiled as C++) run on a
// machine without a GPU: their kernels, launch sizes, scratch layouts, copies and cuBLAS calls.
//
// What it is:
// - Device memory is host memory handed out by cudaMalloc / cudaMallocAsync and registered, so that
//   cudaPointerGetAttributes tells it from host memory, copies check their direction (kind) and
//   that each range lies inside one allocation, and frees of unknown pointers are errors.
// - Streams are queues: kernels, cuBLAS calls, asynchronous copies, memsets and stream-ordered
//   frees run only when something waits for them (a synchronisation, a synchronous copy to the
//   host, a cudaStreamWaitEvent reached by another stream), as late as CUDA allows
//   (core/cuda_sim/sim_streams.h). So a missing wait reads stale data every time instead of
//   rarely. Copies follow CUDA's rules on what each kind waits for: one from pageable host memory
//   takes its source at the call, one from pinned memory when it runs, one to pageable host
//   memory waits for its stream. A fault while queued work runs is sticky, as on a GPU.
// - Kernels run block after block; the threads of a block are fibers on the calling thread
//   (core/cuda_sim/simt.cpp): __syncthreads is a real barrier over the block's threads (and an
//   error when some threads of the block exited or wait elsewhere), warp shuffles exchange values
//   among the warp's 32 lanes. Kernel arguments are copied per launch as the GPU does.
// - Arithmetic is the host's: float32 and float64 as IEEE, no fused multiply-add contraction
//   (nvcc contracts by default), transcendentals from the C library. So results are close to the
//   GPU's, not bitwise; the [cuda] tests compare against the CPU backend within their tolerances.
//
// Device-side language: __global__, __device__, __host__, __forceinline__, __launch_bounds__ and
// __restrict__ mean nothing here; __shared__ is `static` (one block runs at a time, and queued
// work runs one item at a time); threadIdx, blockIdx, blockDim, gridDim are set per fiber by the
// scheduler.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#define RINGATTN_CUDA_SIM_RUNTIME 1

// ---- device-side language ----------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// Shared arrays are statics in a section of their own, which the scheduler fills with ones (NaN)
// before every block: shared memory starts undefined on a GPU, never with the last block's data.
#define __shared__ [[gnu::section("ringattn_sim_shared")]] static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct alignas(8) int2 {
  int x, y;
};
inline int2 make_int2(int x, int y) {
  return int2{x, y};
}
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

// Set by the scheduler for the fiber that runs (core/cuda_sim/simt.cpp).
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

namespace ringattn::sim {
void block_barrier();  // __syncthreads
// This thread's v out, and back the v of the lane (lane ^ lane_mask) of its segment of `width`
// lanes; lanes are the thread's linear index in the block modulo 32, as on a GPU.
uint64_t warp_exchange(uint64_t v, int lane_mask, int width);
}  // namespace ringattn::sim

inline void __syncthreads() {
  ::ringattn::sim::block_barrier();
}

// Every lane of the warp must take part (the mask ringattn passes is always the full warp).
template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "a shuffled value is at most 64 bits");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = ::ringattn::sim::warp_exchange(bits, lane_mask, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// Every lane of the warp waits for the others (an exchange whose value is dropped).
inline void __syncwarp(unsigned /*mask*/ = 0xffffffffu) {
  (void)::ringattn::sim::warp_exchange(0, 0, 32);
}

inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
inline float __uint_as_float(unsigned u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}
// Correctly rounded float64 operations: what the host's IEEE arithmetic does when nothing is
// contracted (the simulated sources are compiled with -ffp-contract=off).
inline double __dadd_rn(double a, double b) {
  return a + b;
}
inline double __dsub_rn(double a, double b) {
  return a - b;
}
inline double __dmul_rn(double a, double b) {
  return a * b;
}
inline double __ddiv_rn(double a, double b) {
  return a / b;
}
inline double __dsqrt_rn(double a) {
  return sqrt(a);
}

// ---- runtime API -------------------------------------------------------------------------------

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaMemoryType {
  cudaMemoryTypeUnregistered = 0,
  cudaMemoryTypeHost = 1,
  cudaMemoryTypeDevice = 2,
  cudaMemoryTypeManaged = 3,
};

struct cudaPointerAttributes {
  cudaMemoryType type = cudaMemoryTypeUnregistered;
  int device = 0;
  void* devicePointer = nullptr;
  void* hostPointer = nullptr;
};

struct cudaDeviceProp {
  char name[256] = {};
  size_t totalGlobalMem = 0;
  size_t sharedMemPerBlockOptin = 0;
  int multiProcessorCount = 0;
  int major = 0, minor = 0;
};

enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};
enum cudaSharedCarveout {
  cudaSharedmemCarveoutDefault = -1,
  cudaSharedmemCarveoutMaxShared = 100,
  cudaSharedmemCarveoutMaxL1 = 0,
};
enum cudaMemPoolAttr {
  cudaMemPoolAttrReleaseThreshold = 4,
};

struct CUstream_st;
struct CUevent_st;
struct CUmemPoolHandle_st;
using cudaStream_t = CUstream_st*;
using cudaEvent_t = CUevent_st*;
using cudaMemPool_t = CUmemPoolHandle_st*;

inline constexpr unsigned cudaStreamDefault = 0, cudaStreamNonBlocking = 1;
inline constexpr unsigned cudaEventDefault = 0, cudaEventDisableTiming = 2;

const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();

cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaMemGetInfo(size_t* free, size_t* total);

cudaError_t cudaMalloc(void** p, size_t bytes);
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t stream);
cudaError_t cudaFreeAsync(void* p, cudaStream_t stream);
cudaError_t cudaMallocHost(void** p, size_t bytes);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device);
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value);
cudaError_t cudaMemPoolTrimTo(cudaMemPool_t pool, size_t min_bytes_to_keep);
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* p);
// The runtime header's typed forms (T** for void**).
template <typename T>
cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
template <typename T>
cudaError_t cudaMallocAsync(T** p, size_t bytes, cudaStream_t stream) {
  return cudaMallocAsync(reinterpret_cast<void**>(p), bytes, stream);
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* dst, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream = nullptr);

cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamGetDevice(cudaStream_t s, int* device);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventSynchronize(cudaEvent_t e);

using cudaHostFn_t = void (*)(void* data);
cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* data);

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void* func,
                                                          int block_size, size_t smem);

// ---- kernel launches ---------------------------------------------------------------------------

namespace ringattn::sim {

// Queues a launch on `stream` that runs `thread` once per thread of every block
// (core/cuda_sim/simt.cpp); checks the launch configuration at once, as the driver does
// (cudaErrorInvalidConfiguration, left as the last error, nothing queued).
void run_kernel(dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t stream,
                void (*thread)(const void* closure), std::shared_ptr<const void> closure);

// kernel<<<grid, block, smem, stream>>>(args...) is RA_LAUNCH(grid, block, smem, stream,
// kernel)(args...) in the sources (core/cuda/cuda_common.cuh); here it is a Launch: the arguments
// are converted to the kernel's parameter types once, and every thread calls the kernel on them.
template <typename... Params>
class Launch {
 public:
  Launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, void (*kernel)(Params...))
      : grid_(grid), block_(block), smem_(smem), stream_(stream), kernel_(kernel) {}

  template <typename... Args>
  void operator()(Args&&... args) const {
    struct Closure {
      void (*kernel)(Params...);
      std::tuple<std::decay_t<Params>...> args;
    };
    // Kept until the queued launch has run (the arguments are taken at the launch, as on a GPU).
    auto closure = std::make_shared<const Closure>(
        Closure{kernel_, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)});
    run_kernel(grid_, block_, smem_, stream_, &call<Closure>, closure);
  }

 private:
  template <typename Closure>
  static void call(const void* p) {
    const auto* c = static_cast<const Closure*>(p);
    std::apply(c->kernel, c->args);  // each thread gets its own copies of the parameters
  }

  dim3 grid_, block_;
  size_t smem_;
  cudaStream_t stream_;
  void (*kernel_)(Params...);
};

}  // namespace ringattn::sim
