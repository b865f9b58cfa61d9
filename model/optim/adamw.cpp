#include "model/optim/adamw.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace ringattn {

std::vector<IndexRange> normalize_ranges(std::vector<IndexRange> ranges) {
  for (const IndexRange& r : ranges)
    RA_CHECK(r.begin >= 0 && r.end >= r.begin, "bad index range [{}, {})", r.begin, r.end);
  std::erase_if(ranges, [](const IndexRange& r) { return r.begin == r.end; });
  std::sort(ranges.begin(), ranges.end(),
            [](const IndexRange& a, const IndexRange& b) { return a.begin < b.begin; });
  std::vector<IndexRange> out;
  for (const IndexRange& r : ranges) {
    if (!out.empty() && r.begin <= out.back().end)
      out.back().end = std::max(out.back().end, r.end);
    else
      out.push_back(r);
  }
  return out;
}

std::vector<IndexRange> localize_ranges(std::span<const IndexRange> full_ranges,
                                        int64_t shard_begin, int64_t shard_len) {
  RA_CHECK(shard_begin >= 0 && shard_len >= 0, "bad shard [{}, +{})", shard_begin, shard_len);
  std::vector<IndexRange> local;
  const int64_t shard_end = shard_begin + shard_len;
  for (const IndexRange& r : full_ranges) {
    RA_CHECK(r.begin >= 0 && r.end >= r.begin, "bad index range [{}, {})", r.begin, r.end);
    const int64_t b = std::max(r.begin, shard_begin), e = std::min(r.end, shard_end);
    if (b < e) local.push_back({b - shard_begin, e - shard_begin});
  }
  return normalize_ranges(std::move(local));
}

void AdamWConfig::validate() const {
  RA_CHECK(beta1 >= 0 && beta1 < 1, "adamw: beta1 must be in [0, 1), got {}", beta1);
  RA_CHECK(beta2 >= 0 && beta2 < 1, "adamw: beta2 must be in [0, 1), got {}", beta2);
  RA_CHECK(eps > 0, "adamw: eps must be > 0, got {}", eps);
  RA_CHECK(weight_decay >= 0, "adamw: weight_decay must be >= 0, got {}", weight_decay);
}

namespace {

// The per-call constants, computed once in float64.
struct StepConstants {
  double b1, b2, one_minus_b1, one_minus_b2, bc1, bc2, eps, lr;
};

// Elements [begin, end) with one decay factor. Every element goes through exactly the same
// operations whatever range it falls in or where the range starts, which is what makes a sharded
// step bitwise equal to an unsharded one.
void update_range(const StepConstants& k, double decay, float* p, const float* g, float* m,
                  float* v, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const double gi = g[i];
    const double mi = k.b1 * double(m[i]) + k.one_minus_b1 * gi;
    const double vi = k.b2 * double(v[i]) + k.one_minus_b2 * (gi * gi);
    m[i] = float(mi);
    v[i] = float(vi);
    const double m_hat = mi / k.bc1, v_hat = vi / k.bc2;
    p[i] = float(double(p[i]) * decay - k.lr * m_hat / (std::sqrt(v_hat) + k.eps));
  }
}

void check_host_f32(const Tensor& t, int64_t n, const char* what) {
  RA_CHECK(t.defined(), "adamw_step: {} is undefined", what);
  RA_CHECK(t.dtype() == DType::F32 && t.device() == Device::CPU && t.is_contiguous(),
           "adamw_step: {} must be a contiguous F32 host tensor, got {}", what, t.str());
  RA_CHECK(t.numel() == n, "adamw_step: {} has {} elements, params have {}", what, t.numel(), n);
}

}  // namespace

void adamw_step(const AdamWConfig& cfg, float* params, const float* grads, float* m, float* v,
                int64_t n, int64_t step, double lr, std::span<const IndexRange> no_decay) {
  cfg.validate();
  RA_CHECK(step >= 1, "adamw_step: the step index counts from 1, got {}", step);
  RA_CHECK(n >= 0, "adamw_step: negative length {}", n);
  RA_CHECK(std::isfinite(lr) && lr >= 0,
           "adamw_step: learning rate must be finite and >= 0, got {}", lr);
  if (n == 0) return;
  RA_CHECK(params && grads && m && v, "adamw_step: null buffer");

  StepConstants k;
  k.b1 = cfg.beta1;
  k.b2 = cfg.beta2;
  k.one_minus_b1 = 1.0 - cfg.beta1;
  k.one_minus_b2 = 1.0 - cfg.beta2;
  k.bc1 = 1.0 - std::pow(cfg.beta1, double(step));
  k.bc2 = 1.0 - std::pow(cfg.beta2, double(step));
  k.eps = cfg.eps;
  k.lr = lr;
  const double decay = 1.0 - lr * cfg.weight_decay;

  // Walk the buffer in order: decayed gaps between the (normalized, clipped) no-decay ranges.
  const std::vector<IndexRange> skip =
      normalize_ranges(std::vector<IndexRange>(no_decay.begin(), no_decay.end()));
  int64_t pos = 0;
  for (const IndexRange& r : skip) {
    if (r.begin >= n) break;
    const int64_t e = std::min(r.end, n);
    update_range(k, decay, params, grads, m, v, pos, r.begin);
    update_range(k, 1.0, params, grads, m, v, r.begin, e);
    pos = e;
  }
  update_range(k, decay, params, grads, m, v, pos, n);
}

AdamWState AdamWState::zeros(int64_t n, Device device) {
  RA_CHECK(n >= 0, "AdamWState: negative length {}", n);
  AdamWState s;
  s.m = Tensor::zeros({n}, DType::F32, device, "adamw m");
  s.v = Tensor::zeros({n}, DType::F32, device, "adamw v");
  return s;
}

void adamw_step(const AdamWConfig& cfg, Tensor& params, const Tensor& grads, AdamWState& state,
                int64_t step, double lr, std::span<const IndexRange> no_decay) {
  const int64_t n = params.numel();
  check_host_f32(params, n, "params");
  check_host_f32(grads, n, "grads");
  check_host_f32(state.m, n, "state.m");
  check_host_f32(state.v, n, "state.v");
  adamw_step(cfg, params.data<float>(), grads.data<float>(), state.m.data<float>(),
             state.v.data<float>(), n, step, lr, no_decay);
}

}  // namespace ringattn
