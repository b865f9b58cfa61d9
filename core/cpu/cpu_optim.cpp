#include "core/cpu/cpu_optim.h"

#include <cblas.h>

#include <cmath>
#include <cstring>

#include "core/cpu/parallel.h"
#include "core/dtype.h"
#include "core/tensor.h"

namespace ringattn::cpu {

void copy(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}

double sum_squares(const float* x, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += double(x[i]) * double(x[i]);
  return sum;
}

void scale_f64(float* x, int64_t n, double s) {
  const int threads = threads_for(n);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < n; ++i) x[i] = float(double(x[i]) * s);
}

void to_bf16(const float* src, uint16_t* dst, int64_t n) {
  convert_floats(src, DType::F32, dst, DType::BF16, size_t(n));
}

void from_bf16(const uint16_t* src, float* dst, int64_t n) {
  convert_floats(src, DType::BF16, dst, DType::F32, size_t(n));
}

namespace {
// The rows x cols (row stride ld) bf16 matrix widened into a packed float32 one.
Tensor widen(const uint16_t* x, int rows, int cols, int ld, const char* what) {
  Tensor t = Tensor::empty({rows, cols}, DType::F32, Device::CPU, what);
  float* out = t.data<float>();
  for (int r = 0; r < rows; ++r) from_bf16(x + int64_t(r) * ld, out + int64_t(r) * cols, cols);
  return t;
}
}  // namespace

void gemm_bf16(bool ta, bool tb, int m, int n, int k, float alpha, const uint16_t* a, int lda,
               const uint16_t* b, int ldb, float beta, float* c, int ldc) {
  if (m == 0 || n == 0) return;
  // Stored shapes: A is [m, k] (or [k, m] when transposed), B is [k, n] (or [n, k]).
  const Tensor a32 = widen(a, ta ? k : m, ta ? m : k, lda, "bf16 gemm A");
  const Tensor b32 = widen(b, tb ? n : k, tb ? k : n, ldb, "bf16 gemm B");
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, alpha, a32.data<float>(), ta ? m : k, b32.data<float>(), tb ? k : n, beta, c, ldc);
}

void adamw_update(const AdamWConstants& k, float* p, const float* g, float* m, float* v,
                  int64_t n) {
  // Every element goes through exactly the same operations wherever it sits, which is what
  // makes a sharded step bitwise equal to an unsharded one (and the CUDA kernel to this loop),
  // and lets threads split the elements.
  const int threads = threads_for(n);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < n; ++i) {
    const double gi = g[i];
    const double mi = k.b1 * double(m[i]) + k.one_minus_b1 * gi;
    const double vi = k.b2 * double(v[i]) + k.one_minus_b2 * (gi * gi);
    m[i] = float(mi);
    v[i] = float(vi);
    const double m_hat = mi / k.bc1, v_hat = vi / k.bc2;
    p[i] = float(double(p[i]) * k.decay - k.lr * m_hat / (std::sqrt(v_hat) + k.eps));
  }
}

}  // namespace ringattn::cpu
