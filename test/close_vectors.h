// Test inputs and the element-wise closeness check shared by the attention tile tests
// (test_attention_tiles.cpp against the float64 reference, test_fused_attention.cpp against the
// CPU's bf16 tiles).
#pragma once

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace ringattn::test {

// n values ~ N(0, 1), fixed by `seed`.
inline std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(n);
  for (float& e : x) e = dist(gen);
  return x;
}

// start, start + 1, ..., start + n - 1 (positions, key indices).
inline std::vector<int64_t> iota(int64_t n, int64_t start = 0) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), start);
  return v;
}

// Every element within tol * (1 + |want|); -inf must match exactly; never NaN.
template <typename W>
void check_close(const std::vector<float>& got, const std::vector<W>& want, double tol,
                 const char* what) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  size_t worst_at = 0, bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = double(want[i]);
    if (std::isinf(w) || std::isinf(g) || std::isnan(g)) {
      if (!(std::isinf(w) && g == w)) ++bad;
      continue;
    }
    const double ratio = std::abs(g - w) / (tol + tol * std::abs(w));
    if (ratio > worst) worst = ratio, worst_at = i;
  }
  INFO(what << ": worst error " << worst << " x tolerance " << tol << " at " << worst_at << " (got "
            << (got.empty() ? 0.0 : got[worst_at]) << ", want "
            << (want.empty() ? 0.0 : double(want[worst_at])) << "), " << bad
            << " inf/NaN mismatches");
  CHECK(bad == 0);
  CHECK(worst <= 1.0);
}

}  // namespace ringattn::test
