// Adds the seconds from construction to destruction to a counter (FsdpGroup::WaitTimes): how long
// a rank waited for a collective, for `ringattn bench train`'s communication share.
#pragma once

#include <chrono>

namespace ringattn {

class WaitTimer {
 public:
  explicit WaitTimer(double& sink) : sink_(sink), t0_(std::chrono::steady_clock::now()) {}
  ~WaitTimer() {
    sink_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }
  WaitTimer(const WaitTimer&) = delete;
  WaitTimer& operator=(const WaitTimer&) = delete;

 private:
  double& sink_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace ringattn
