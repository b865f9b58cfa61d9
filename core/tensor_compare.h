// How far apart two float tensors of one shape are, for `ringattn attention --compare` (and its
// tests): the largest absolute difference, against the largest magnitude of either, with the
// elements where the two disagree about being finite counted apart. Symmetric: the order of the
// two tensors changes nothing.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace ringattn {

struct TensorDiff {
  double max_abs = 0.0;  // over the elements finite in both
  double max_ref = 0.0;  // the largest |value| of either tensor, over the same elements
  // Elements that are not finite in one or both and are not the same infinity in both: a NaN
  // anywhere, or an infinity against a finite value or the other infinity. (The same infinity
  // in both is agreement: a fully masked row's LSE is -inf in any correct result.)
  int64_t nonfinite = 0;

  // No non-finite disagreement, and max_abs <= tolerance * max(1, max_ref): absolute for values
  // up to 1, relative beyond.
  bool within(double tolerance) const;
  double relative() const;  // max_abs / max_ref (0 when both are 0)
};

// Both host float32 tensors of one shape (the caller checks the shapes).
TensorDiff compare_tensors(const Tensor& a, const Tensor& b);

}  // namespace ringattn
