#include "model/stop_signal.h"

#include <atomic>
#include <csignal>

namespace ringattn {

namespace {

// Written by the handler: a lock-free atomic is async-signal-safe.
std::atomic<int> g_signal{0};
std::atomic<bool> g_requested{false};
static_assert(std::atomic<int>::is_always_lock_free && std::atomic<bool>::is_always_lock_free);

extern "C" void on_stop_signal(int sig) {
  g_signal.store(sig, std::memory_order_relaxed);
  g_requested.store(true, std::memory_order_relaxed);
}

}  // namespace

void install_stop_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  // Interrupted system calls resume (a checkpoint write must not fail with EINTR); the handler
  // resets to the default action, so the next signal of this kind ends the process.
  sa.sa_flags = SA_RESTART | SA_RESETHAND;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
}

bool stop_requested() {
  return g_requested.load(std::memory_order_relaxed);
}

int stop_signal() {
  return g_signal.load(std::memory_order_relaxed);
}

void request_stop() {
  g_requested.store(true, std::memory_order_relaxed);
}

void clear_stop_request() {
  g_requested.store(false, std::memory_order_relaxed);
  g_signal.store(0, std::memory_order_relaxed);
}

}  // namespace ringattn
