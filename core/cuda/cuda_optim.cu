#include "core/cuda/cuda_common.cuh"
#include "core/cuda/cuda_optim.h"

namespace ringattn::cuda {

namespace {

// Each block reduces its grid-stride slice into one float64 partial sum; the host adds the
// partial sums in block order (a fixed order: the same result on every run).
__global__ void sum_squares_kernel(const float* x, int64_t n, double* partial) {
  __shared__ double shared[kThreads];
  double s = 0;
  for (int64_t i = global_thread(); i < n; i += grid_stride()) {
    const double xi = x[i];
    s = __dadd_rn(s, __dmul_rn(xi, xi));
  }
  const double total = block_reduce(s, shared, SumOp<double>());
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void to_bf16_kernel(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_stride()) dst[i] = round_to_bf16(src[i]);
}

__global__ void from_bf16_kernel(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_stride())
    dst[i] = __uint_as_float(uint32_t(src[i]) << 16);
}

__global__ void scale_f64_kernel(float* x, int64_t n, double s) {
  for (int64_t i = global_thread(); i < n; i += grid_stride())
    x[i] = float(__dmul_rn(double(x[i]), s));
}

// The CPU loop of core/cpu/cpu_optim.cpp, operation for operation: every product and sum is
// rounded on its own (__dmul_rn, __dadd_rn cannot be contracted into an FMA), and float64
// division and square root are correctly rounded on both sides.
__global__ void adamw_kernel(AdamWConstants k, float* p, const float* g, float* m, float* v,
                             int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_stride()) {
    const double gi = g[i];
    const double mi = __dadd_rn(__dmul_rn(k.b1, double(m[i])), __dmul_rn(k.one_minus_b1, gi));
    const double vi =
        __dadd_rn(__dmul_rn(k.b2, double(v[i])), __dmul_rn(k.one_minus_b2, __dmul_rn(gi, gi)));
    m[i] = float(mi);
    v[i] = float(vi);
    const double m_hat = __ddiv_rn(mi, k.bc1), v_hat = __ddiv_rn(vi, k.bc2);
    const double step = __ddiv_rn(__dmul_rn(k.lr, m_hat), __dadd_rn(__dsqrt_rn(v_hat), k.eps));
    p[i] = float(__dsub_rn(__dmul_rn(double(p[i]), k.decay), step));
  }
}

}  // namespace

void copy(cudaStream_t stream, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
}

void to_bf16(cudaStream_t stream, const float* src, uint16_t* dst, int64_t n) {
  if (n <= 0) return;
  RA_LAUNCH(grid_for(n), kThreads, 0, stream, to_bf16_kernel)(src, dst, n);
  CUDA_CHECK(cudaGetLastError());
}

void from_bf16(cudaStream_t stream, const uint16_t* src, float* dst, int64_t n) {
  if (n <= 0) return;
  RA_LAUNCH(grid_for(n), kThreads, 0, stream, from_bf16_kernel)(src, dst, n);
  CUDA_CHECK(cudaGetLastError());
}

double sum_squares(cudaStream_t stream, const float* x, int64_t n) {
  if (n <= 0) return 0.0;
  const unsigned blocks = grid_for(n);
  DeviceScratch partial(stream, blocks * sizeof(double), "sum of squares partials");
  RA_LAUNCH(blocks, kThreads, 0, stream, sum_squares_kernel)(x, n, partial.at<double>());
  CUDA_CHECK(cudaGetLastError());
  const std::vector<double> parts = host_copy(stream, partial.at<double>(), int64_t(blocks));
  double sum = 0;
  for (double p : parts) sum += p;
  return sum;
}

void scale_f64(cudaStream_t stream, float* x, int64_t n, double s) {
  if (n <= 0) return;
  RA_LAUNCH(grid_for(n), kThreads, 0, stream, scale_f64_kernel)(x, n, s);
  CUDA_CHECK(cudaGetLastError());
}

void adamw_update(cudaStream_t stream, const AdamWConstants& k, float* params, const float* grads,
                  float* m, float* v, int64_t n) {
  if (n <= 0) return;
  RA_LAUNCH(grid_for(n), kThreads, 0, stream, adamw_kernel)(k, params, grads, m, v, n);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ringattn::cuda
