// CUDA backend: cuBLAS for GEMMs, a compute stream per process, and a counting device allocator.
// Compiles and links without a GPU; cuda_device_count() returns 0 when no driver/device is usable.
#include <fmt/format.h>

#include <map>
#include <memory>
#include <mutex>

#include "core/backend.h"
#include "core/cuda/cuda_check.h"

namespace ringattn {

namespace {

class CudaAllocator final : public Allocator {
 public:
  explicit CudaAllocator(int device) : Allocator(Device::CUDA, fmt::format("cuda:{}", device)) {}

 protected:
  void* raw_allocate(size_t bytes) override {
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      (void)cudaGetLastError();  // clear the sticky-free error so later calls are not poisoned
      return nullptr;
    }
    return p;
  }
  void raw_free(void* ptr) override { CUDA_CHECK(cudaFree(ptr)); }
};

[[noreturn]] void refuse_attention() {
  RA_FAIL("attention on the CUDA backend needs its tile kernels (issue 5); use the CPU backend");
}

[[noreturn]] void refuse_layers(const char* op) {
  RA_FAIL("{} on the CUDA backend needs its layer kernels (issue 5); use the CPU backend", op);
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device), allocator_(device) {
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&cublas_));
    CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
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

  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda,
            const float* b, int ldb, float beta, float* c, int ldc) override {
    if (m == 0 || n == 0) return;
    CUBLAS_CHECK(cublasSgemm(cublas_, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                             ta ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, b, ldb, a, lda, &beta,
                             c, ldc));
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

  // The attention tile kernels on CUDA belong to the CUDA backend issue (#5); until they land the
  // CUDA backend refuses attention with a clear message instead of computing something wrong.
  void attention_forward_init(const AttentionForwardState&, int64_t, int64_t, int, int) override {
    refuse_attention();
  }
  void attention_forward_block(const AttentionTileProblem&, const AttentionForwardState&,
                               AttentionTileStats*) override {
    refuse_attention();
  }
  void attention_forward_finish(const AttentionForwardState&, float*, float*, int64_t, int64_t, int,
                                int) override {
    refuse_attention();
  }
  void attention_backward_delta(const float*, const float*, float*, int64_t, int64_t, int,
                                int) override {
    refuse_attention();
  }
  void attention_backward_block(const AttentionTileProblem&, const AttentionBackwardArgs&,
                                AttentionTileStats*) override {
    refuse_attention();
  }

  // The layer kernels (embedding, RMSNorm, RoPE, SwiGLU, cross-entropy, elementwise) are also
  // part of issue 5; refusing keeps a model on this backend from running half on the wrong device.
  void embedding_forward(const int32_t*, int64_t, const float*, int64_t, int64_t, float*) override {
    refuse_layers("embedding_forward");
  }
  void embedding_backward(const int32_t*, int64_t, const float*, int64_t, int64_t,
                          float*) override {
    refuse_layers("embedding_backward");
  }
  void rmsnorm_forward(const float*, const float*, int64_t, int64_t, float, float*,
                       float*) override {
    refuse_layers("rmsnorm_forward");
  }
  void rmsnorm_backward(const float*, const float*, const float*, const float*, int64_t, int64_t,
                        float*, float*) override {
    refuse_layers("rmsnorm_backward");
  }
  void rope_forward(float*, int64_t, int64_t, int, int, const int64_t*, float) override {
    refuse_layers("rope_forward");
  }
  void rope_backward(float*, int64_t, int64_t, int, int, const int64_t*, float) override {
    refuse_layers("rope_backward");
  }
  void swiglu_forward(const float*, const float*, int64_t, float*) override {
    refuse_layers("swiglu_forward");
  }
  void swiglu_backward(const float*, const float*, const float*, int64_t, float*, float*) override {
    refuse_layers("swiglu_backward");
  }
  double cross_entropy(const float*, const int32_t*, const float*, int64_t, int64_t, float, float*,
                       uint8_t*) override {
    refuse_layers("cross_entropy");
  }
  void axpy(int64_t, float, const float*, float*) override { refuse_layers("axpy"); }
  void scale(float*, int64_t, float) override { refuse_layers("scale"); }
  void fill(float*, int64_t, float) override { refuse_layers("fill"); }

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
bool nccl_compiled() {
  return true;
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
  static std::map<int, std::unique_ptr<CudaBackend>> backends;
  std::lock_guard<std::mutex> lock(mu);
  const int n = cuda_device_count();
  RA_CHECK(n > 0, "no usable CUDA device (no GPU, or the driver is missing or too old)");
  RA_CHECK(device_index >= 0 && device_index < n, "CUDA device {} requested, {} present",
           device_index, n);
  auto& b = backends[device_index];
  if (!b) b = std::make_unique<CudaBackend>(device_index);
  return *b;
}

}  // namespace ringattn
