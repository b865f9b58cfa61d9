// The fused bf16 attention kernels: core/cuda/fused_attention_body.h's blocks on the GPU, with
// DeviceBlock mapping its Block contract onto CUDA (128 threads, __syncthreads, wmma bf16
// fragments with float32 accumulators on the tensor cores, dynamic shared memory).
#include "core/cuda/fused_attention.h"

#include <cuda_bf16.h>
#include <mma.h>

#include <algorithm>
#include <climits>
#include <mutex>
#include <set>
#include <utility>

#include "core/cuda/cuda_check.h"
#include "core/error.h"

namespace ringattn::cuda {

namespace {

namespace wmma = nvcuda::wmma;

struct DeviceBlock {
  using A = wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
  using ACol = wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::col_major>;
  using BRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
  using BCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major>;
  using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

  // One T per warp: each thread holds its own warp's (registers).
  template <typename T>
  struct PerWarp {
    T v;
    __device__ T& at(int) { return v; }
  };

  __device__ void* smem() {
    extern __shared__ __align__(fused::kSmemAlign) unsigned char dynamic_smem[];
    return dynamic_smem;
  }
  template <typename F>
  __device__ void each_thread(F&& f) {
    f(int(threadIdx.x));
  }
  template <typename F>
  __device__ void each_warp(F&& f) {
    f(int(threadIdx.x) / 32);
  }
  __device__ void sync() { __syncthreads(); }

  static __device__ void fill(Acc& c, float x) { wmma::fill_fragment(c, x); }
  // bf16 operands come from shared memory only (the body's contract). wmma::load_matrix_sync
  // compiles them to generic-address loads (four LD.E and, for a transposed layout, MOVMs per
  // fragment in the SASS, nvcc 13.0), so they are loaded with wmma.load's .shared form, which
  // becomes one ldmatrix (LDSM) per fragment. Same instruction, same fragment registers: the
  // fragments stay those of wmma::mma_sync.
  static __device__ void load(A& f, const uint16_t* p, int ld) { load_shared<0>(f, p, ld); }
  static __device__ void load(ACol& f, const uint16_t* p, int ld) { load_shared<1>(f, p, ld); }
  static __device__ void load(BRow& f, const uint16_t* p, int ld) { load_shared<2>(f, p, ld); }
  static __device__ void load(BCol& f, const uint16_t* p, int ld) { load_shared<3>(f, p, ld); }
  static __device__ void load(Acc& f, const float* p, int ld) {
    wmma::load_matrix_sync(f, p, unsigned(ld), wmma::mem_row_major);
  }
  static __device__ void store(float* p, const Acc& f, int ld) {
    wmma::store_matrix_sync(p, f, unsigned(ld), wmma::mem_row_major);
  }
  template <typename FA, typename FB>
  static __device__ void mma(Acc& c, const FA& a, const FB& b) {
    wmma::mma_sync(c, a, b, c);
  }

 private:
  // Kind: 0 A row-major, 1 A column-major, 2 B row-major, 3 B column-major. A bf16 16x16x16
  // fragment is four 32-bit registers (two elements each). volatile and "memory": the load must
  // stay between the __syncthreads that fence the shared memory it reads.
  template <int Kind, typename Frag>
  static __device__ void load_shared(Frag& f, const uint16_t* p, int ld) {
    static_assert(sizeof(f.x) == 4 * sizeof(uint32_t), "a bf16 fragment is four registers");
    uint32_t* r = reinterpret_cast<uint32_t*>(&f.x[0]);
    const uint32_t at = uint32_t(__cvta_generic_to_shared(p));
#define RA_WMMA_LOAD_SHARED(ab_layout)                                                  \
  asm volatile("wmma.load." ab_layout ".m16n16k16.shared.bf16 {%0,%1,%2,%3}, [%4], %5;" \
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                         \
               : "r"(at), "r"(ld)                                                       \
               : "memory")
    if constexpr (Kind == 0) {
      RA_WMMA_LOAD_SHARED("a.sync.aligned.row");
    } else if constexpr (Kind == 1) {
      RA_WMMA_LOAD_SHARED("a.sync.aligned.col");
    } else if constexpr (Kind == 2) {
      RA_WMMA_LOAD_SHARED("b.sync.aligned.row");
    } else {
      RA_WMMA_LOAD_SHARED("b.sync.aligned.col");
    }
#undef RA_WMMA_LOAD_SHARED
  }
};

// Blocks go to the multiprocessors roughly in order of blockIdx.x (then y), so each kernel numbers
// its tiles heaviest first and the last wave is made of light blocks, not of the longest ones.
// Under a causal mask a query tile's work grows with its position (forward and dQ count the tiles
// down) and a key tile's shrinks (dK/dV count them up); without a mask the order is immaterial.
//
// MaxD: the largest head dim the kernel takes (fused::with_max_head_dim picks it). The blocks per
// multiprocessor that shared memory allows (fused::blocks_per_sm_target) are asked of the register
// allocator too, so that registers never become the limit.
template <int MaxD>
__global__ void __launch_bounds__(fused::kThreads, fused::blocks_per_sm_target(MaxD))
    forward_kernel(fused::Args a) {
  DeviceBlock blk;
  fused::forward_block<MaxD>(blk, a, gridDim.x - 1 - blockIdx.x, blockIdx.y);
}

template <int MaxD>
__global__ void __launch_bounds__(fused::kThreads, fused::blocks_per_sm_target(MaxD))
    backward_dkdv_kernel(fused::Args a) {
  DeviceBlock blk;
  fused::backward_dkdv_block<MaxD>(blk, a, blockIdx.x, blockIdx.y);
}

template <int MaxD>
__global__ void __launch_bounds__(fused::kThreads, fused::blocks_per_sm_target(MaxD))
    backward_dq_kernel(fused::Args a) {
  DeviceBlock blk;
  fused::backward_dq_block<MaxD>(blk, a, gridDim.x - 1 - blockIdx.x, blockIdx.y);
}

// Kernels with more than 48 KiB of dynamic shared memory must say so first, on each device; the
// largest size any call needs (head_dim kMaxHeadDim) is set once per kernel and device, after
// checking that the device has it.
void allow_smem(const void* kernel, size_t bytes) {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  int optin = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  RA_CHECK(bytes <= size_t(optin),
           "fused attention needs {} bytes of shared memory per block; GPU {} allows {} (use "
           "attention.kernel = tiles, or a smaller head dimension)",
           bytes, device, optin);
  static std::mutex mu;
  static std::set<std::pair<const void*, int>> done;
  const std::lock_guard<std::mutex> lock(mu);
  if (done.count({kernel, device})) return;
  const size_t most = std::max({fused::ForwardSmem(nullptr, fused::kMaxHeadDim).bytes,
                                fused::BackwardSmem(nullptr, fused::kMaxHeadDim).bytes,
                                fused::DqSmem(nullptr, fused::kMaxHeadDim).bytes});
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(std::min(most, size_t(optin)))));
  // Shared memory is what limits how many blocks share a multiprocessor (two dK/dV blocks of
  // 106.5 KiB at head_dim 128 need 215 KiB, more than the next smaller carveout's 196), L1
  // matters little here: ask for the largest carveout rather than leave it to the driver.
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                  int(cudaSharedmemCarveoutMaxShared)));
  done.insert({kernel, device});  // only once it is set
}

dim3 grid(int64_t rows, int64_t groups) {
  const int64_t tiles = (rows + fused::kTile - 1) / fused::kTile;
  RA_CHECK(tiles <= INT_MAX && groups <= 65535,
           "fused attention: {} tiles x {} (batch x heads) exceeds the grid", tiles, groups);
  return dim3(unsigned(tiles), unsigned(groups));
}

int blocks_per_sm(const void* kernel, size_t smem) {
  allow_smem(kernel, smem);
  int blocks = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, fused::kThreads, smem));
  return blocks;
}

}  // namespace

std::string fused_occupancy(int head_dim) {
  check_fused_head_dim(head_dim);
  const size_t fwd = fused::ForwardSmem(nullptr, head_dim).bytes;
  const size_t dkdv = fused::BackwardSmem(nullptr, head_dim).bytes;
  const size_t dq = fused::DqSmem(nullptr, head_dim).bytes;
  std::string out;
  fused::with_max_head_dim(head_dim, [&](auto max_d) {
    constexpr int kMaxD = decltype(max_d)::value;
    out = fmt::format(
        "forward {}, dK/dV {}, dQ {} blocks of {} threads per SM (shared memory {:.1f} / {:.1f} / "
        "{:.1f} KiB; kernels for head dims up to {})",
        blocks_per_sm(reinterpret_cast<const void*>(&forward_kernel<kMaxD>), fwd),
        blocks_per_sm(reinterpret_cast<const void*>(&backward_dkdv_kernel<kMaxD>), dkdv),
        blocks_per_sm(reinterpret_cast<const void*>(&backward_dq_kernel<kMaxD>), dq),
        fused::kThreads, fwd / 1024.0, dkdv / 1024.0, dq / 1024.0, kMaxD);
  });
  return out;
}

void launch_fused_forward(cudaStream_t stream, const fused::Args& a) {
  check_fused_args(a);
  if (a.p.batch == 0 || a.p.sq == 0 || a.p.sk == 0) return;
  const size_t smem = fused::ForwardSmem(nullptr, a.p.head_dim).bytes;
  fused::with_max_head_dim(a.p.head_dim, [&](auto max_d) {
    const auto kernel = &forward_kernel<decltype(max_d)::value>;
    allow_smem(reinterpret_cast<const void*>(kernel), smem);
    kernel<<<grid(a.p.sq, a.p.batch * a.p.heads), fused::kThreads, smem, stream>>>(a);
    CUDA_CHECK(cudaGetLastError());
  });
}

void launch_fused_backward(cudaStream_t stream, const fused::Args& a) {
  check_fused_args(a);
  if (a.p.batch == 0 || a.p.sq == 0 || a.p.sk == 0) return;
  const size_t dkdv_smem = fused::BackwardSmem(nullptr, a.p.head_dim).bytes;
  const size_t dq_smem = fused::DqSmem(nullptr, a.p.head_dim).bytes;
  fused::with_max_head_dim(a.p.head_dim, [&](auto max_d) {
    const auto dkdv = &backward_dkdv_kernel<decltype(max_d)::value>;
    const auto dq = &backward_dq_kernel<decltype(max_d)::value>;
    allow_smem(reinterpret_cast<const void*>(dkdv), dkdv_smem);
    allow_smem(reinterpret_cast<const void*>(dq), dq_smem);
    dkdv<<<grid(a.p.sk, a.p.batch * a.p.kv_heads), fused::kThreads, dkdv_smem, stream>>>(a);
    CUDA_CHECK(cudaGetLastError());
    dq<<<grid(a.p.sq, a.p.batch * a.p.heads), fused::kThreads, dq_smem, stream>>>(a);
    CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace ringattn::cuda
