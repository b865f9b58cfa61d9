#include "model/optim/schedule.h"

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace ringattn {

void LrSchedule::validate() const {
  // lr = 0 (with min_lr = 0) is allowed, as optim.lr's range says: a run that measures or
  // evaluates without moving the weights.
  RA_CHECK(std::isfinite(lr) && lr >= 0, "lr schedule: lr must be finite and >= 0, got {}", lr);
  RA_CHECK(std::isfinite(min_lr) && min_lr >= 0 && min_lr <= lr,
           "lr schedule: min_lr must be in [0, lr = {}], got {}", lr, min_lr);
  RA_CHECK(total_steps >= 1, "lr schedule: total_steps must be >= 1, got {}", total_steps);
  // warmup_steps > total_steps is allowed (a short run of a preset): the run stays in warm-up, as
  // docs/config.md promises for train.warmup_steps.
  RA_CHECK(warmup_steps >= 0, "lr schedule: warmup_steps must be >= 0, got {}", warmup_steps);
}

double LrSchedule::lr_at(int64_t t) const {
  if (t <= 0) return 0.0;
  // t / W first: it is exactly 1 at t = W, so lr_at(W) == lr exactly.
  if (t <= warmup_steps) return lr * (double(t) / double(warmup_steps));
  // Exactly min_lr at T (and after), rather than whatever cos(pi) rounds to.
  if (t >= total_steps) return min_lr;
  const double progress = double(t - warmup_steps) / double(total_steps - warmup_steps);
  return min_lr + (lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

}  // namespace ringattn
