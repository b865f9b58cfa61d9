// Global gradient-norm clipping over sharded gradients.
//
// Which ranks to sum over: each rank of the fsdp x sp group (Mesh::fsdp_sp()) holds a distinct
// shard of every layer's reduced gradient, and the dp replicas of that group hold the same
// shards again (after the dp all-reduce). The global norm is therefore the sum of the local
// squared norms over the fsdp x sp group only: summing over dp as well would count every element
// dp times. Pass mesh.fsdp_sp() (or nullptr when the gradients are not sharded at all).
//
// Formulas (float64 throughout):
//   local_sq = sum over this rank's buffers, in order, of (sum over the buffer's elements, in
//              order, of g * g)                               (Backend::sum_squares per buffer)
//   norm     = sqrt(sum over the group's ranks, in rank order, of local_sq)
//   scale    = min(1, max_norm / (norm + 1e-6))      when max_norm > 0 and norm is finite
//   g       <- float32(g * scale)                      only when scale < 1
// The per-rank partial sums are all-gathered and added in rank order on every rank (not
// all-reduced), so every rank computes bitwise the same norm and scale, whatever reduction
// algorithm MPI picks: every dp replica and every shard makes the same skip/clip decision.
#pragma once

#include <span>

#include "comm/communicator.h"

namespace ringattn {

struct GradNormResult {
  double norm = 0;     // global L2 norm before clipping; +inf or NaN when some gradient was
  bool finite = true;  // std::isfinite(norm): false means the step must be skipped or aborted
  double scale = 1;    // factor the gradients were multiplied by (1: untouched)
  bool clipped() const { return scale < 1; }
};

// Sum of squares of the elements of `buffers` in float64: each buffer's sum (elements in order),
// the buffers' sums added in order.
double local_sq_norm(std::span<const std::span<float>> buffers);

// sqrt of the sum of every rank's `local_sq` over `group` (rank order; see above). Collective
// over `group`; nullptr means this rank alone. The group's buffers must be host memory (an MPI
// communicator): raises an Error for a device communicator.
double global_norm_from_sq(double local_sq, Communicator* group);

// Computes the global norm of the gradient shards `grads` (this rank's; host float32) over
// `group` and, when max_norm > 0 and the norm is finite, scales them in place by
// min(1, max_norm / (norm + 1e-6)). max_norm <= 0 disables the scaling but the norm is still
// computed and returned. A non-finite norm (an inf or NaN anywhere on any rank) leaves the
// gradients untouched and returns finite == false on every rank, so the trainer can apply its
// on_nonfinite policy (skip the update, or abort) identically everywhere. Collective over
// `group`: every rank calls it, also ranks whose shards are empty.
GradNormResult clip_grad_norm(std::span<const std::span<float>> grads, double max_norm,
                              Communicator* group);

}  // namespace ringattn
