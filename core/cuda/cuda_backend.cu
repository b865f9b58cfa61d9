// CUDA backend: cuBLAS for GEMMs, a compute stream per process, and a counting device allocator;
// the attention and layer operations dispatch to core/cuda/cuda_attention.cu and
// core/cuda/cuda_layers.cu, which queue everything on this backend's stream.
// Compiles and links without a GPU; cuda_device_count() returns 0 when no driver/device is usable.
#include <fmt/format.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>

#include "core/backend.h"
#include "core/cuda/cuda_attention.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/cuda_layers.h"
#include "core/cuda/cuda_optim.h"
#include "core/cuda/fused_attention.h"
#include "core/log.h"

namespace ringattn {

namespace {

class CudaAllocator final : public Allocator {
 public:
  explicit CudaAllocator(int device)
      : Allocator(Device::CUDA, fmt::format("cuda:{}", device)), device_(device) {}

  // Synchronous byte copies for device-agnostic code. They may come from any thread (the FSDP
  // helper thread stages collectives through them), so each selects the device first, and each
  // waits for the whole device (every stream) so that it sees what queued kernels wrote.
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override {
    copy(host_dst, src, bytes);
  }
  void copy_from_host(void* dst, const void* host_src, size_t bytes) override {
    copy(dst, host_src, bytes);
  }
  void copy_within(void* dst, const void* src, size_t bytes) override { copy(dst, src, bytes); }
  // Queued on the compute stream, no host wait (core/allocator.h): Tensor::zeros in the
  // backward's layer loop would otherwise wait for every queued kernel and collective.
  void zero(void* dst, size_t bytes) override {
    if (!bytes) return;
    CUDA_CHECK(cudaSetDevice(device_));
    CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream_));
  }

 protected:
  // Stream-ordered allocation from the device's memory pool (cudaMallocAsync): the model
  // allocates and frees many activations per layer, and cudaFree would synchronise the whole
  // device each time, serialising compute and communication. The pool keeps freed memory for
  // reuse (its release threshold is set to "never" below); the counting above still reports
  // what the program asked for. Allocation and free are ordered on the compute stream; memory
  // used by another stream (NCCL's) is freed only after the compute stream waited for that
  // stream's event (RingExchange::wait, StreamPoint::order for the FSDP collectives) or the host
  // waited for it (the blocking collectives).
  //
  // A request the pool cannot meet is tried once more after the device is idle and the pool has
  // handed back every block it keeps unused: memory freed in stream order but not yet free (a
  // free queued behind work, or one another stream must reach first) becomes free, and whole
  // unused blocks return to the driver so that a larger block can be mapped in their place. Only
  // an out-of-memory path pays for that wait; the usual request never waits.
  void* raw_allocate(size_t bytes) override {
    CUDA_CHECK(cudaSetDevice(device_));  // the caller may be a helper thread
    void* p = try_allocate(bytes);
    if (!p) {
      release_cached();
      p = try_allocate(bytes);
      // Said once: a run that only fits this way waits for the device at its peaks.
      if (p && !retry_said_.exchange(true))
        log::rank_warn(
            "cuda:{}: a request of {} was met only after waiting for the device and trimming the "
            "memory pool: this run is close to the GPU's memory (further such waits not logged)",
            device_, format_bytes(bytes));
    }
    return p;  // null: the allocator raises "out of memory", naming the request
  }
  // The driver's own figures: other processes, the CUDA context, cuBLAS and NCCL hold memory
  // outside this allocator's count.
  std::string out_of_memory_detail() const override {
    size_t free = 0, total = 0;
    if (cudaSetDevice(device_) != cudaSuccess || cudaMemGetInfo(&free, &total) != cudaSuccess) {
      (void)cudaGetLastError();
      return {};
    }
    return fmt::format(
        "the GPU has {} free of {} (the rest is held by this process's pool, the "
        "CUDA context, cuBLAS, NCCL or other processes)",
        format_bytes(free), format_bytes(total));
  }
  // Called from destructors (Storage, scratch buffers), so it never throws: after a device fault
  // every call fails, and the fault is reported by the next checked call, not as a terminate here.
  void raw_free(void* ptr) noexcept override {
    cudaError_t st = cudaSetDevice(device_);
    if (st == cudaSuccess) st = cudaFreeAsync(ptr, stream_);
    if (st != cudaSuccess && !free_failed_.exchange(true)) {
      try {
        log::rank_error("cuda:{}: freeing device memory failed: {} (further failures not logged)",
                        device_, cudaGetErrorString(st));
      } catch (...) {
      }
    }
  }

 public:
  // The pool's unused blocks back to the driver, once the device is idle (so that memory freed in
  // stream order is free).
  void release_cached() override {
    CUDA_CHECK(cudaSetDevice(device_));
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemPoolTrimTo(pool_, 0));
  }
  // The compute stream allocations are ordered on, and the pool kept from shrinking.
  void attach(cudaStream_t stream) {
    stream_ = stream;
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool_, device_));
    uint64_t keep = UINT64_MAX;
    CUDA_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &keep));
  }

 private:
  // Null when the device has no room (the error cleared: it is not sticky); any other failure
  // (an earlier kernel's sticky fault) is raised as itself.
  void* try_allocate(size_t bytes) {
    void* p = nullptr;
    const cudaError_t st = cudaMallocAsync(&p, bytes, stream_);
    (void)cudaGetLastError();  // a non-sticky error must not surface again at an unrelated check
    if (st == cudaErrorMemoryAllocation) return nullptr;
    CUDA_CHECK(st);
    return p;
  }

  void copy(void* dst, const void* src, size_t bytes) {
    if (!bytes) return;
    CUDA_CHECK(cudaSetDevice(device_));
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
    CUDA_CHECK(cudaDeviceSynchronize());  // device-to-device copies return before they finish
  }

  int device_;
  cudaStream_t stream_ = nullptr;
  cudaMemPool_t pool_ = nullptr;
  std::atomic<bool> free_failed_{false};
  std::atomic<bool> retry_said_{false};
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device), allocator_(device) {
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&cublas_));
    CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    allocator_.attach(stream_);
    register_allocator(Device::CUDA, &allocator_);
  }
  ~CudaBackend() override {
    cublasDestroy(cublas_);
    cudaStreamDestroy(stream_);
  }

  Device device() const override { return Device::CUDA; }
  std::string name() const override {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, device_) != cudaSuccess)
      return fmt::format("cuda:{}", device_);
    return fmt::format("cuda:{} ({})", device_, prop.name);
  }
  std::string fused_attention_occupancy(int head_dim) override {
    bind_thread();
    return cuda::fused_occupancy(head_dim);
  }

  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda,
            const float* b, int ldb, float beta, float* c, int ldc) override {
    if (m == 0 || n == 0) return;
    CUBLAS_CHECK(cublasSgemm(cublas_, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                             ta ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, b, ldb, a, lda, &beta,
                             c, ldc));
  }

  // bf16 inputs, float32 accumulation and output (CUBLAS_COMPUTE_32F), operands swapped as above.
  void gemm_bf16(bool ta, bool tb, int m, int n, int k, float alpha, const uint16_t* a, int lda,
                 const uint16_t* b, int ldb, float beta, float* c, int ldc) override {
    if (m == 0 || n == 0) return;
    CUBLAS_CHECK(cublasGemmEx(cublas_, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                              ta ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, b, CUDA_R_16BF, ldb,
                              a, CUDA_R_16BF, lda, &beta, c, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
  }
  void to_bf16(const float* src, uint16_t* dst, int64_t n) override {
    cuda::to_bf16(stream_, src, dst, n);
  }
  void from_bf16(const uint16_t* src, float* dst, int64_t n) override {
    cuda::from_bf16(stream_, src, dst, n);
  }

  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void copy_from_host(void* dst, const void* src, size_t bytes) override {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void synchronize() override { CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  void* native_stream() override { return stream_; }
  void bind_thread() override { CUDA_CHECK(cudaSetDevice(device_)); }
  size_t device_memory_used() override {
    size_t free = 0, total = 0;
    CUDA_CHECK(cudaSetDevice(device_));
    CUDA_CHECK(cudaMemGetInfo(&free, &total));
    return total - free;
  }
  size_t device_memory_total() override {
    size_t free = 0, total = 0;
    CUDA_CHECK(cudaSetDevice(device_));
    CUDA_CHECK(cudaMemGetInfo(&free, &total));
    return total;
  }

  // Attention tiles: core/cuda/cuda_attention.cu (cuBLAS on this stream plus softmax kernels).
  void attention_forward_init(const AttentionForwardState& st, int64_t batch, int64_t sq, int heads,
                              int head_dim) override {
    cuda::attention_forward_init(stream_, st, batch, sq, heads, head_dim);
  }
  void attention_forward_block(const AttentionTileProblem& p, const AttentionForwardState& st,
                               AttentionTileStats* stats) override {
    cuda::attention_forward_block(stream_, cublas_, p, st, stats);
  }
  void attention_forward_finish(const AttentionForwardState& st, float* o, float* lse,
                                int64_t batch, int64_t sq, int heads, int head_dim) override {
    cuda::attention_forward_finish(stream_, st, o, lse, batch, sq, heads, head_dim);
  }
  void attention_backward_delta(const float* dout, const float* o, float* delta, int64_t batch,
                                int64_t sq, int heads, int head_dim) override {
    cuda::attention_backward_delta(stream_, dout, o, delta, batch, sq, heads, head_dim);
  }
  void attention_backward_block(const AttentionTileProblem& p, const AttentionBackwardArgs& a,
                                AttentionTileStats* stats) override {
    cuda::attention_backward_block(stream_, cublas_, p, a, stats);
  }

  // Transformer-layer kernels: core/cuda/cuda_layers.cu.
  void embedding_forward(const int32_t* tokens, int64_t n, const float* table, int64_t vocab,
                         int64_t dim, float* out) override {
    cuda::embedding_forward(stream_, tokens, n, table, vocab, dim, out);
  }
  void embedding_forward_bf16(const int32_t* tokens, int64_t n, const uint16_t* table,
                              int64_t vocab, int64_t dim, float* out) override {
    cuda::embedding_forward_bf16(stream_, tokens, n, table, vocab, dim, out);
  }
  void embedding_backward(const int32_t* tokens, int64_t n, const float* dout, int64_t vocab,
                          int64_t dim, float* dtable) override {
    cuda::embedding_backward(stream_, tokens, n, dout, vocab, dim, dtable);
  }
  void rmsnorm_forward(const float* x, const float* w, int64_t rows, int64_t dim, float eps,
                       float* y, float* inv_rms) override {
    cuda::rmsnorm_forward(stream_, x, w, rows, dim, eps, y, inv_rms);
  }
  void rmsnorm_backward(const float* x, const float* w, const float* inv_rms, const float* dy,
                        int64_t rows, int64_t dim, float* dx, float* dw) override {
    cuda::rmsnorm_backward(stream_, x, w, inv_rms, dy, rows, dim, dx, dw);
  }
  void rope_forward(float* x, int64_t batch, int64_t seq, int heads, int head_dim,
                    const int64_t* positions, float theta) override {
    cuda::rope_forward(stream_, x, batch, seq, heads, head_dim, positions, theta);
  }
  void rope_backward(float* dx, int64_t batch, int64_t seq, int heads, int head_dim,
                     const int64_t* positions, float theta) override {
    cuda::rope_backward(stream_, dx, batch, seq, heads, head_dim, positions, theta);
  }
  void swiglu_forward(const float* gate, const float* up, int64_t n, float* out) override {
    cuda::swiglu_forward(stream_, gate, up, n, out);
  }
  void swiglu_backward(const float* gate, const float* up, const float* dout, int64_t n,
                       float* dgate, float* dup) override {
    cuda::swiglu_backward(stream_, gate, up, dout, n, dgate, dup);
  }
  void cross_entropy_rows(const float* logits, const int32_t* targets, const float* weights,
                          int64_t rows, int64_t vocab, float grad_scale, float* dlogits,
                          uint8_t* correct, double* row_loss) override {
    cuda::cross_entropy_rows(stream_, logits, targets, weights, rows, vocab, grad_scale, dlogits,
                             correct, row_loss);
  }
  void axpy(int64_t n, float alpha, const float* x, float* y) override {
    cuda::axpy(stream_, n, alpha, x, y);
  }
  void scale(float* x, int64_t n, float alpha) override { cuda::scale(stream_, x, n, alpha); }
  void fill(float* x, int64_t n, float value) override { cuda::fill(stream_, x, n, value); }

  // Memory and optimizer: core/cuda/cuda_optim.cu.
  void copy(void* dst, const void* src, size_t bytes) override {
    cuda::copy(stream_, dst, src, bytes);
  }
  double sum_squares(const float* x, int64_t n) override {
    return cuda::sum_squares(stream_, x, n);
  }
  void scale_f64(float* x, int64_t n, double s) override { cuda::scale_f64(stream_, x, n, s); }
  void adamw_update(const AdamWConstants& k, float* params, const float* grads, float* m, float* v,
                    int64_t n) override {
    cuda::adamw_update(stream_, k, params, grads, m, v, n);
  }

 private:
  int device_;
  CudaAllocator allocator_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
};

}  // namespace

bool cuda_compiled() {
  return true;
}
// The simulated build has a simulated NCCL over MPI (comm/nccl_sim).
bool nccl_compiled() {
  return true;
}

bool cuda_simulated() {
#ifdef RINGATTN_CUDA_SIM
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

Backend& cuda_backend(int device_index) {
  static std::mutex mu;
  // Never destroyed (like the CPU allocator): a CUDA tensor owned by a static may be freed during
  // static destruction, after a destroyed backend's allocator and stream would be gone. The
  // driver releases everything at exit.
  static auto* backends = new std::map<int, CudaBackend*>;
  std::lock_guard<std::mutex> lock(mu);
  const int n = cuda_device_count();
  RA_CHECK(n > 0, "no usable CUDA device (no GPU, or the driver is missing or too old)");
  RA_CHECK(device_index >= 0 && device_index < n, "CUDA device {} requested, {} present",
           device_index, n);
  CudaBackend*& b = (*backends)[device_index];
  if (!b) b = new CudaBackend(device_index);
  return *b;
}

}  // namespace ringattn
