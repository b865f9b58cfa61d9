// Row kernels of the CPU attention tiles: the elementwise work between the GEMMs (row max, exp and
// row sum, softmax gradient). They run over every score of every tile, so they are vectorised by
// hand (AVX-512 or AVX2+FMA, chosen once at run time) with a portable fallback.
#pragma once

#include <cstdint>

namespace ringattn::cpu {

// exp(x) to about 2e-7 relative error. Returns exactly 0 for x < -86 (so masked scores such as
// kMaskedScore - m give 0, and no denormal ever reaches a GEMM); NaN stays NaN.
float fast_exp(float x);

struct RowKernels {
  // max(x[0..n)); -inf when n == 0.
  float (*row_max)(const float* x, int64_t n);
  // x[j] = fast_exp(x[j] - bias) for j < n; returns the sum of the new values.
  float (*exp_sum)(float* x, int64_t n, float bias);
  // dp[j] = p[j] * (dp[j] - delta) for j < n.
  void (*softmax_grad)(float* dp, const float* p, int64_t n, float delta);
  const char* isa;  // "avx512", "avx2" or "portable"
};

// The fastest kernels this CPU runs (decided once).
const RowKernels& row_kernels();
// The portable kernels, for tests that compare implementations.
const RowKernels& portable_row_kernels();

}  // namespace ringattn::cpu
