// A recording hang handler for the comm watchdog's tests (instead of ending the job).
#pragma once

#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "comm/watchdog.h"

namespace ringattn::test {

// Installs a recording hang handler for its lifetime (and restores the default).
class HangRecorder {
 public:
  HangRecorder() {
    Watchdog::set_hang_handler([this](const std::vector<std::string>& what, double) {
      std::lock_guard<std::mutex> lock(mu_);
      for (const std::string& w : what) lines_.push_back(w);
    });
  }
  ~HangRecorder() { Watchdog::set_hang_handler({}); }
  std::vector<std::string> lines() {
    std::lock_guard<std::mutex> lock(mu_);
    return lines_;
  }
  bool saw(const std::string& part) {
    for (const std::string& l : lines())
      if (l.find(part) != std::string::npos) return true;
    return false;
  }
  // Waits up to `limit_s` for a line containing `part`.
  bool wait_for(const std::string& part, double limit_s) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(limit_s);
    while (std::chrono::steady_clock::now() < end) {
      if (saw(part)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return saw(part);
  }

 private:
  std::mutex mu_;
  std::vector<std::string> lines_;
};

}  // namespace ringattn::test
