#include "comm/stream_watch.h"

#include <fmt/format.h>

namespace ringattn {

StreamWatch::StreamWatch(std::string group, std::function<std::string()> async_error)
    : group_(std::move(group)), async_error_(std::move(async_error)) {
  Watchdog::add_source(this);
}

StreamWatch::~StreamWatch() {
  Watchdog::remove_source(this);  // no overdue() runs past this line
  std::lock_guard<std::mutex> lock(mu_);
  for (Op& op : ops_)
    if (op.probe.release) op.probe.release();
  ops_.clear();
}

void StreamWatch::add(std::string what, Probe probe) {
  std::lock_guard<std::mutex> lock(mu_);
  reap_locked();
  ops_.push_back(Op{std::move(what), std::move(probe), std::nullopt});
}

size_t StreamWatch::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ops_.size();
}

void StreamWatch::reap_locked() {
  while (!ops_.empty() && ops_.front().probe.finished()) {
    if (ops_.front().probe.release) ops_.front().probe.release();
    ops_.pop_front();
  }
}

std::vector<std::string> StreamWatch::overdue(double timeout_s) {
  std::vector<std::string> late;
  if (async_error_) {
    std::string e = async_error_();
    if (!e.empty()) late.push_back(fmt::format("{} ({})", e, group_));
  }
  std::lock_guard<std::mutex> lock(mu_);
  reap_locked();
  const Clock::time_point now = Clock::now();
  for (Op& op : ops_) {
    if (!op.started_at) {
      if (!op.probe.started()) break;  // queued behind this one: not started either
      op.started_at = now;
    }
    const double running = std::chrono::duration<double>(now - *op.started_at).count();
    if (running > timeout_s)
      late.push_back(fmt::format("{} running on the device for {:.1f} s without finishing ({})",
                                 op.what, running, group_));
  }
  return late;
}

}  // namespace ringattn
