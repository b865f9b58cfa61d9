#include "core/cpu/cpu_optim.h"

#include <cmath>
#include <cstring>

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
  for (int64_t i = 0; i < n; ++i) x[i] = float(double(x[i]) * s);
}

void adamw_update(const AdamWConstants& k, float* p, const float* g, float* m, float* v,
                  int64_t n) {
  // Every element goes through exactly the same operations wherever it sits, which is what
  // makes a sharded step bitwise equal to an unsharded one (and the CUDA kernel to this loop).
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
