#include "core/tensor_compare.h"

#include <algorithm>
#include <cmath>

namespace ringattn {

bool TensorDiff::within(double tolerance) const {
  return nonfinite == 0 && max_abs <= tolerance * std::max(1.0, max_ref);
}

double TensorDiff::relative() const {
  return max_ref > 0.0 ? max_abs / max_ref : 0.0;
}

TensorDiff compare_tensors(const Tensor& a, const Tensor& b) {
  RA_CHECK(a.shape() == b.shape() && a.dtype() == DType::F32 && b.dtype() == DType::F32 &&
               a.device() == Device::CPU && b.device() == Device::CPU,
           "compare_tensors: two host float32 tensors of one shape, got {} and {}",
           shape_str(a.shape()), shape_str(b.shape()));
  const Tensor x = a.contiguous(), y = b.contiguous();
  const float* u = x.data<float>();
  const float* w = y.data<float>();
  TensorDiff d;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double p = u[i], q = w[i];
    if (!std::isfinite(p) || !std::isfinite(q)) {
      if (!(std::isinf(p) && p == q)) ++d.nonfinite;
      continue;
    }
    d.max_abs = std::max(d.max_abs, std::abs(p - q));
    d.max_ref = std::max({d.max_ref, std::abs(p), std::abs(q)});
  }
  return d;
}

}  // namespace ringattn
