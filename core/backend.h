// The backend interface: a small table of operations that the model and the ring code call
// without knowing which device runs them (the ggml idea). The CPU backend (OpenBLAS) always
// exists; the CUDA backend (cuBLAS + kernels) exists when compiled in and a GPU is present.
//
// Conventions: matrices are row-major float32 unless stated; pointers are device pointers of the
// backend's device; every call is ordered on the backend's compute stream (CPU: synchronous).
#pragma once

#include <memory>
#include <string>

#include "core/allocator.h"
#include "core/attention_tile.h"
#include "core/device.h"

namespace ringattn {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;  // "cpu (OpenBLAS 0.3.21, 1 thread)", "cuda:0 (H100)"
  Allocator& allocator() { return allocator_for(device()); }

  // C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C. Row-major; lda/ldb/ldc are row strides.
  virtual void gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a,
                    int lda, const float* b, int ldb, float beta, float* c, int ldc) = 0;

  // Copies between host and this backend's device (or within one). Synchronous.
  virtual void copy_to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy_from_host(void* dst, const void* host_src, size_t bytes) = 0;
  // Waits for everything queued on this backend.
  virtual void synchronize() = 0;

  // --- attention (see core/attention_tile.h) ---------------------------------------------------
  // Sets m = kMaskedScore, l = 0, acc = 0 for a shard of `batch x sq` queries.
  virtual void attention_forward_init(const AttentionForwardState& st, int64_t batch, int64_t sq,
                                      int heads, int head_dim) = 0;
  // Folds one key/value block into the running state. Workspace comes from the allocator, so a
  // whole-shard tile (vanilla) shows its S x S scores in the peak bytes.
  virtual void attention_forward_block(const AttentionTileProblem& p,
                                       const AttentionForwardState& st,
                                       AttentionTileStats* stats = nullptr) = 0;
  // o = acc / l, lse = m + log(l); a row that saw no unmasked key gets o = 0 and lse = -inf.
  virtual void attention_forward_finish(const AttentionForwardState& st, float* o, float* lse,
                                        int64_t batch, int64_t sq, int heads, int head_dim) = 0;
  // delta[b,h,i] = sum_d dout[b,i,h,d] * o[b,i,h,d].
  virtual void attention_backward_delta(const float* dout, const float* o, float* delta,
                                        int64_t batch, int64_t sq, int heads, int head_dim) = 0;
  // Accumulates this block's contributions to dq, dk, dv (P recomputed from q, k and lse).
  virtual void attention_backward_block(const AttentionTileProblem& p,
                                        const AttentionBackwardArgs& a,
                                        AttentionTileStats* stats = nullptr) = 0;
};

// The CPU backend. set_cpu_threads sets the OpenBLAS and OpenMP thread counts (0 leaves them).
Backend& cpu_backend();
void set_cpu_threads(int threads);
int cpu_threads();

// True when the CUDA backend is compiled into this build.
bool cuda_compiled();
// True when NCCL is compiled into this build.
bool nccl_compiled();
// Number of usable GPUs; 0 when CUDA is not compiled in or no driver/device is present
// (never an error: "CUDA driver version is insufficient" means no device).
int cuda_device_count();
// The CUDA backend on the given device; raises an Error when no GPU can be used.
Backend& cuda_backend(int device_index);

}  // namespace ringattn
