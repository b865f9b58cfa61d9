#include "core/random.h"

#include <cmath>
#include <vector>

namespace ringattn {

namespace {

struct SplitMix64 {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in (0, 1]: never 0, so log() below is finite.
  double uniform() { return (double(next() >> 11) + 1.0) * (1.0 / 9007199254740992.0); }
};

}  // namespace

void fill_normal(Tensor& t, uint64_t seed, float mean, float stddev) {
  RA_CHECK(t.device() == Device::CPU && is_floating(t.dtype()) && t.is_contiguous(),
           "fill_normal: needs a contiguous host float tensor, got {}", t.str());
  SplitMix64 rng{seed};
  const size_t n = size_t(t.numel());
  std::vector<float> vals(n);
  for (size_t i = 0; i < n; i += 2) {
    const double r = std::sqrt(-2.0 * std::log(rng.uniform()));
    const double a = 2.0 * M_PI * rng.uniform();
    vals[i] = float(mean + stddev * r * std::cos(a));
    if (i + 1 < n) vals[i + 1] = float(mean + stddev * r * std::sin(a));
  }
  convert_floats(vals.data(), DType::F32, t.raw(), t.dtype(), n);
}

void fill_uniform_int(Tensor& t, uint64_t seed, int32_t lo, int32_t hi) {
  RA_CHECK(t.device() == Device::CPU && t.dtype() == DType::I32 && t.is_contiguous() && hi >= lo,
           "fill_uniform_int: needs a contiguous host I32 tensor and lo <= hi, got {}", t.str());
  SplitMix64 rng{seed};
  const uint64_t span = uint64_t(int64_t(hi) - lo + 1);
  int32_t* p = t.data<int32_t>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = int32_t(lo + int64_t(rng.next() % span));
}

}  // namespace ringattn
