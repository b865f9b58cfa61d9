#include "core/backend.h"

#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace ringattn {

double Backend::cross_entropy(const float* logits, const int32_t* targets, const float* weights,
                              int64_t rows, int64_t vocab, float grad_scale, float* dlogits,
                              uint8_t* correct) {
  RA_CHECK(vocab > 0 || rows == 0, "cross entropy: empty vocabulary");
  if (rows <= 0) return 0.0;
  std::vector<int32_t> t(static_cast<size_t>(rows));
  copy_to_host(t.data(), targets, t.size() * sizeof(int32_t));
  for (int64_t r = 0; r < rows; ++r)
    RA_CHECK(t[size_t(r)] >= -1 && t[size_t(r)] < vocab,
             "cross entropy target: token {} at row {} is outside the vocabulary [0, {})",
             t[size_t(r)], r, vocab);
  // float64 row losses in this backend's memory (bytes: the tensors have no float64 type).
  Tensor losses = Tensor::empty({rows * int64_t(sizeof(double))}, DType::U8, device(),
                                "cross entropy row losses");
  cross_entropy_rows(logits, targets, weights, rows, vocab, grad_scale, dlogits, correct,
                     reinterpret_cast<double*>(losses.raw()));
  std::vector<double> host(static_cast<size_t>(rows));
  copy_to_host(host.data(), losses.raw(), host.size() * sizeof(double));
  double total = 0;
  for (double l : host) total += l;
  return total;
}

}  // namespace ringattn
