#include "model/optim/clip.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "core/backend.h"
#include "core/error.h"

namespace ringattn {

double local_sq_norm(std::span<const std::span<float>> buffers) {
  // The same arithmetic as the sharded path (FlatShard's clip_grad_norm on any backend): one
  // float64 sum per buffer, the buffers' sums added in order.
  double sum = 0;
  for (const std::span<float>& b : buffers)
    sum += cpu_backend().sum_squares(b.data(), int64_t(b.size()));
  return sum;
}

double global_norm_from_sq(double local_sq, Communicator* group) {
  if (!group || group->size() == 1) return std::sqrt(local_sq);
  RA_CHECK(group->accepts_host_buffers(),
           "gradient norm: the group communicator '{}' works on {} memory only; the norm is "
           "reduced through host memory (an MPI or host-staged communicator)",
           group->name(), device_name(group->device()));
  // There is no float64 dtype on the wire, so the partial sums travel as bytes. Gathering them
  // and adding in rank order (instead of an all-reduce) makes the result bitwise identical on
  // every rank.
  std::vector<double> parts(size_t(group->size()));
  group->all_gather(&local_sq, parts.data(), sizeof(double), DType::U8);
  double sum = 0;
  for (double p : parts) sum += p;
  return std::sqrt(sum);
}

GradNormResult clip_grad_norm(std::span<const std::span<float>> grads, double max_norm,
                              Communicator* group) {
  GradNormResult r;
  r.norm = global_norm_from_sq(local_sq_norm(grads), group);
  r.finite = std::isfinite(r.norm);
  if (!r.finite || max_norm <= 0) return r;
  const double scale = max_norm / (r.norm + 1e-6);
  if (scale >= 1) return r;
  r.scale = scale;
  for (const std::span<float>& b : grads)
    cpu_backend().scale_f64(b.data(), int64_t(b.size()), scale);
  return r;
}

}  // namespace ringattn
