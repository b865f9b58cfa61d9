// Progress of a training run for its log lines: percent done, elapsed time, and an estimate of
// the time left, so a long run says when it will end. The estimate is the mean wall time per step
// over the steps run since this process started (eval and checkpoints included, as they recur);
// a resumed run starts counting afresh, so time spent before the restart does not skew it.
//
//   Progress p(first_step, last_step);
//   ... after each step: p.step_done(step);  log p.prefix(step) + p.suffix(step)
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace ringattn {

class Progress {
 public:
  Progress(int64_t first_step, int64_t last_step);
  // Records that `step` (1-based) just finished.
  void step_done(int64_t step);
  // "[ 37%]": done fraction of the whole run (resumed steps count as done).
  std::string percent(int64_t step) const;
  // "elapsed 1m05s eta 3m12s" (eta "?" before the first step finishes).
  std::string timing(int64_t step) const;
  // Seconds left at the current mean pace; < 0 when unknown.
  double eta_seconds(int64_t step) const;
  double elapsed_seconds() const;

 private:
  int64_t first_, last_;
  int64_t done_ = 0;
  std::chrono::steady_clock::time_point start_;
};

// "45s", "3m07s", "2h05m": short durations for log lines.
std::string format_duration(double seconds);

}  // namespace ringattn
