#include "core/cpu/attention_kernels.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RINGATTN_X86_KERNELS 1
#endif

namespace ringattn::cpu {

namespace {

// exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln(2)/2; ln 2 split in two (Cody-Waite) so
// that r is exact. Degree-6 Taylor on |r| <= 0.347 leaves r^7/7! < 1.2e-7.
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;  // few significant bits: n * kLn2Hi is exact
constexpr float kLn2Lo = -2.12194440e-4f;
// Below -86 the result would be < 4.5e-38, near the denormal range (slow in GEMMs on x86, and
// the 2^n bit trick needs a normal exponent); such weights cannot matter next to the row maximum
// (weight 1), so they are flushed to 0.
constexpr float kExpLow = -86.0f;
constexpr float kExpHigh = 88.0f;
constexpr float kC2 = 1.0f / 2, kC3 = 1.0f / 6, kC4 = 1.0f / 24, kC5 = 1.0f / 120, kC6 = 1.0f / 720;

float portable_row_max(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

float portable_exp_sum(float* x, int64_t n, float bias) {
  float sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    x[j] = fast_exp(x[j] - bias);
    sum += x[j];
  }
  return sum;
}

void portable_softmax_grad(float* dp, const float* p, int64_t n, float delta) {
  for (int64_t j = 0; j < n; ++j) dp[j] = p[j] * (dp[j] - delta);
}

#ifdef RINGATTN_X86_KERNELS

// ---- AVX-512 ------------------------------------------------------------------------------------

// GCC 12 reports the deliberately undefined pass-through operand inside its own AVX-512 intrinsics
// (_mm512_undefined_ps) as uninitialized once they are inlined here (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#if !defined(__clang__)  // a GCC-only warning group (clang, building the fuzz targets, has none)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

__attribute__((target("avx512f"))) inline __m512 exp16(__m512 x) {
  // NLT_UQ is true for NaN, so NaN flows through the polynomial and comes out NaN.
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpLow), _CMP_NLT_UQ);
  x = _mm512_min_ps(_mm512_set1_ps(kExpHigh), x);  // operand order keeps NaN
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(kC6), r, _mm512_set1_ps(kC5));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(p, n));
}

__attribute__((target("avx512f"))) inline __mmask16 tail_mask16(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
}

__attribute__((target("avx512f"))) float avx512_row_max(const float* x, int64_t n) {
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 m0 = neg_inf, m1 = neg_inf;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + j));
    m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + j + 16));
  }
  for (; j < n; j += 16)
    m0 = _mm512_max_ps(m0, _mm512_mask_loadu_ps(neg_inf, tail_mask16(n - j), x + j));
  return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

__attribute__((target("avx512f"))) float avx512_exp_sum(float* x, int64_t n, float bias) {
  const __m512 b = _mm512_set1_ps(bias);
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512 e0 = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j), b));
    const __m512 e1 = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j + 16), b));
    _mm512_storeu_ps(x + j, e0);
    _mm512_storeu_ps(x + j + 16, e1);
    s0 = _mm512_add_ps(s0, e0);
    s1 = _mm512_add_ps(s1, e1);
  }
  for (; j < n; j += 16) {
    const __mmask16 k = tail_mask16(n - j);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), b));
    _mm512_mask_storeu_ps(x + j, k, e);
    s0 = _mm512_add_ps(s0, _mm512_maskz_mov_ps(k, e));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

__attribute__((target("avx512f"))) void avx512_softmax_grad(float* dp, const float* p, int64_t n,
                                                            float delta) {
  const __m512 d = _mm512_set1_ps(delta);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = tail_mask16(n - j);
    const __m512 g = _mm512_maskz_loadu_ps(k, dp + j);
    _mm512_mask_storeu_ps(dp + j, k,
                          _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p + j), _mm512_sub_ps(g, d)));
  }
}

#pragma GCC diagnostic pop

// ---- AVX2 + FMA ---------------------------------------------------------------------------------

__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
  const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(kExpLow), _CMP_NLT_UQ);
  x = _mm256_min_ps(_mm256_set1_ps(kExpHigh), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kC6), r, _mm256_set1_ps(kC5));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  // n is in [-124, 127] here, so 2^n is a normal float built directly in the exponent field.
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(keep, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

__attribute__((target("avx2,fma"))) float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) float avx2_row_max(const float* x, int64_t n) {
  __m256 m0 = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), m1 = m0;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + j));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + j + 8));
  }
  m0 = _mm256_max_ps(m0, m1);
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(m0), _mm256_extractf128_ps(m0, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  float r = _mm_cvtss_f32(m);
  for (; j < n; ++j) r = std::max(r, x[j]);
  return r;
}

__attribute__((target("avx2,fma"))) float avx2_exp_sum(float* x, int64_t n, float bias) {
  const __m256 b = _mm256_set1_ps(bias);
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), b));
    const __m256 e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), b));
    _mm256_storeu_ps(x + j, e0);
    _mm256_storeu_ps(x + j + 8, e1);
    s0 = _mm256_add_ps(s0, e0);
    s1 = _mm256_add_ps(s1, e1);
  }
  float sum = hsum8(_mm256_add_ps(s0, s1));
  for (; j < n; ++j) {
    x[j] = fast_exp(x[j] - bias);
    sum += x[j];
  }
  return sum;
}

__attribute__((target("avx2,fma"))) void avx2_softmax_grad(float* dp, const float* p, int64_t n,
                                                           float delta) {
  const __m256 d = _mm256_set1_ps(delta);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(
        dp + j, _mm256_mul_ps(_mm256_loadu_ps(p + j), _mm256_sub_ps(_mm256_loadu_ps(dp + j), d)));
  for (; j < n; ++j) dp[j] = p[j] * (dp[j] - delta);
}

#endif  // RINGATTN_X86_KERNELS

const RowKernels kPortable{portable_row_max, portable_exp_sum, portable_softmax_grad, "portable"};

RowKernels pick_kernels() {
#ifdef RINGATTN_X86_KERNELS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f"))
    return {avx512_row_max, avx512_exp_sum, avx512_softmax_grad, "avx512"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {avx2_row_max, avx2_exp_sum, avx2_softmax_grad, "avx2"};
#endif
  return kPortable;
}

}  // namespace

float fast_exp(float x) {
  if (!(x >= kExpLow)) return x < kExpLow ? 0.0f : x;  // the second case is NaN
  x = std::min(x, kExpHigh);
  const float n = std::floor(x * kLog2e + 0.5f);
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = kC6 * r + kC5;
  p = p * r + kC4;
  p = p * r + kC3;
  p = p * r + kC2;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * std::bit_cast<float>((int32_t(n) + 127) << 23);
}

const RowKernels& row_kernels() {
  static const RowKernels kernels = pick_kernels();
  return kernels;
}

const RowKernels& portable_row_kernels() {
  return kPortable;
}

}  // namespace ringattn::cpu
