#include "model/progress.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace ringattn {

Progress::Progress(int64_t first_step, int64_t last_step)
    : first_(first_step), last_(last_step), start_(std::chrono::steady_clock::now()) {}

void Progress::step_done(int64_t step) {
  done_ = std::max<int64_t>(done_, step - first_);
}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

double Progress::eta_seconds(int64_t step) const {
  if (done_ <= 0) return -1;
  return elapsed_seconds() / double(done_) * double(std::max<int64_t>(0, last_ - step));
}

std::string Progress::percent(int64_t step) const {
  const double f = last_ > 0 ? double(step) / double(last_) : 1.0;
  return fmt::format("[{:3.0f}%]", std::floor(100.0 * std::clamp(f, 0.0, 1.0)));
}

std::string Progress::timing(int64_t step) const {
  const double eta = eta_seconds(step);
  return fmt::format("elapsed {} eta {}", format_duration(elapsed_seconds()),
                     eta < 0 ? std::string("?") : format_duration(eta));
}

std::string format_duration(double seconds) {
  const int64_t s = int64_t(std::llround(std::max(0.0, seconds)));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

}  // namespace ringattn
