// Learning-rate schedule: linear warm-up, then cosine decay to a floor.
//
// Steps are numbered from 1, as in AdamW's bias correction (model/optim/adamw.h): t is the
// 1-based index of the optimizer update about to be applied, and the trainer passes the same t
// to lr_at() and to adamw_step(). With W = warmup_steps, T = total_steps, lr = peak lr and
// lr_min = min_lr (all in float64):
//
//   t <= 0           : 0                                                  (no update yet)
//   1 <= t <= W      : lr * t / W                                         (linear warm-up)
//   W < t <= T       : lr_min + (lr - lr_min) * 0.5 * (1 + cos(pi * (t - W) / (T - W)))
//   t > T            : lr_min                                             (stays at the floor)
//
// So the warm-up is the straight line from 0 at t = 0 to lr at t = W (the first update already
// moves: lr / W, not 0), lr_at(W) == lr exactly, the cosine starts at lr just after W and
// reaches lr_at(T) == lr_min exactly (cos(pi) = -1). W = 0 means no warm-up (lr_at(1) is the
// first cosine value). W == T means warm-up only: lr_at(T) == lr, then lr_min. W > T (a short
// run of a longer schedule) stays in warm-up for the whole run.
#pragma once

#include <cstdint>

namespace ringattn {

struct LrSchedule {
  double lr = 3e-4;      // peak learning rate, reached at t = warmup_steps
  double min_lr = 3e-5;  // floor reached at t = total_steps
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;

  // Raises an Error naming the bad field: lr > 0 and finite, 0 <= min_lr <= lr,
  // warmup_steps >= 0, total_steps >= 1 (warmup_steps may exceed total_steps).
  void validate() const;
  // The learning rate for the 1-based step t (see the formula above). Does not validate.
  double lr_at(int64_t t) const;
};

}  // namespace ringattn
