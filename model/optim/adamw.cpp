#include "model/optim/adamw.h"

#include <algorithm>
#include <cmath>

#include "core/backend.h"
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

void check_f32(const Tensor& t, Device device, int64_t n, const char* what) {
  RA_CHECK(t.defined(), "adamw_step: {} is undefined", what);
  RA_CHECK(t.dtype() == DType::F32 && t.device() == device && t.is_contiguous(),
           "adamw_step: {} must be a contiguous F32 {} tensor, got {}", what, device_name(device),
           t.str());
  RA_CHECK(t.numel() == n, "adamw_step: {} has {} elements, params have {}", what, t.numel(), n);
}

// The update on `be` (whose memory the buffers are in).
void adamw_on(Backend& be, const AdamWConfig& cfg, float* params, const float* grads, float* m,
              float* v, int64_t n, int64_t step, double lr, std::span<const IndexRange> no_decay) {
  cfg.validate();
  RA_CHECK(step >= 1, "adamw_step: the step index counts from 1, got {}", step);
  RA_CHECK(n >= 0, "adamw_step: negative length {}", n);
  RA_CHECK(std::isfinite(lr) && lr >= 0,
           "adamw_step: learning rate must be finite and >= 0, got {}", lr);
  if (n == 0) return;
  RA_CHECK(params && grads && m && v, "adamw_step: null buffer");
  // The per-call constants, once, in float64.
  AdamWConstants k;
  k.b1 = cfg.beta1;
  k.b2 = cfg.beta2;
  k.one_minus_b1 = 1.0 - cfg.beta1;
  k.one_minus_b2 = 1.0 - cfg.beta2;
  k.bc1 = 1.0 - std::pow(cfg.beta1, double(step));
  k.bc2 = 1.0 - std::pow(cfg.beta2, double(step));
  k.eps = cfg.eps;
  k.lr = lr;
  AdamWConstants no_wd = k;
  k.decay = 1.0 - lr * cfg.weight_decay;
  no_wd.decay = 1.0;
  // Walk the buffer in order: decayed gaps between the (normalized, clipped) no-decay ranges.
  // Every element goes through the same operations whichever range it falls in, so a sharded
  // step is bitwise an unsharded one.
  auto update = [&](const AdamWConstants& c, int64_t begin, int64_t end) {
    if (end > begin)
      be.adamw_update(c, params + begin, grads + begin, m + begin, v + begin, end - begin);
  };
  const std::vector<IndexRange> skip =
      normalize_ranges(std::vector<IndexRange>(no_decay.begin(), no_decay.end()));
  int64_t pos = 0;
  for (const IndexRange& r : skip) {
    if (r.begin >= n) break;
    const int64_t e = std::min(r.end, n);
    update(k, pos, r.begin);
    update(no_wd, r.begin, e);
    pos = e;
  }
  update(k, pos, n);
}

}  // namespace

void adamw_step(const AdamWConfig& cfg, float* params, const float* grads, float* m, float* v,
                int64_t n, int64_t step, double lr, std::span<const IndexRange> no_decay) {
  adamw_on(cpu_backend(), cfg, params, grads, m, v, n, step, lr, no_decay);
}

AdamWState AdamWState::zeros(int64_t n, Device device) {
  RA_CHECK(n >= 0, "AdamWState: negative length {}", n);
  AdamWState s;
  s.m = Tensor::zeros({n}, DType::F32, device, "adamw m");
  s.v = Tensor::zeros({n}, DType::F32, device, "adamw v");
  return s;
}

void adamw_step(Backend& be, const AdamWConfig& cfg, Tensor& params, const Tensor& grads,
                AdamWState& state, int64_t step, double lr, std::span<const IndexRange> no_decay) {
  const int64_t n = params.numel();
  check_f32(params, be.device(), n, "params");
  check_f32(grads, be.device(), n, "grads");
  check_f32(state.m, be.device(), n, "state.m");
  check_f32(state.v, be.device(), n, "state.v");
  adamw_on(be, cfg, params.data<float>(), grads.data<float>(), state.m.data<float>(),
           state.v.data<float>(), n, step, lr, no_decay);
}

void adamw_step(const AdamWConfig& cfg, Tensor& params, const Tensor& grads, AdamWState& state,
                int64_t step, double lr, std::span<const IndexRange> no_decay) {
  adamw_step(cpu_backend(), cfg, params, grads, state, step, lr, no_decay);
}

}  // namespace ringattn
