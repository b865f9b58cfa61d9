#include "comm/watchdog.h"

#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/log.h"

namespace ringattn {

namespace {

using Clock = std::chrono::steady_clock;

struct Open {
  std::string op, group;
  int peer = -1;
  Clock::time_point since;
};

// One process-wide table: scopes come from the main thread, FSDP's helper thread and the rings'
// progress threads alike.
struct State {
  std::mutex mu;
  std::condition_variable cv;
  std::map<long long, Open> open;        // guarded by mu
  long long next_id = 0;                 // guarded by mu
  bool stop = false;                     // guarded by mu
  double timeout_s = 0;                  // guarded by mu
  std::vector<WatchdogSource*> sources;  // guarded by mu
  Watchdog::HangHandler handler;         // guarded by mu; empty: end_job
  bool polling = false;                  // guarded by mu: sources are being polled
  bool handling = false;                 // guarded by mu: the handler is running
  std::condition_variable idle;          // polling and handling ended
  std::thread thread;
};

std::atomic<bool> g_armed{false};

State& state() {
  static State* s = new State;  // never destroyed: scopes may close during static destruction
  return *s;
}

std::string describe(const Open& o, double blocked_s) {
  std::string s = fmt::format("{} blocked for {:.1f} s", o.op, blocked_s);
  if (o.peer >= 0) s += fmt::format(", waiting for rank {}", o.peer);
  if (!o.group.empty()) s += fmt::format(" ({})", o.group);
  return s;
}

[[noreturn]] void end_job(const std::vector<std::string>& what, double timeout_s) {
  int rank = 0, size = 1, initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  const bool mpi_up = initialized && !finalized;
  if (mpi_up) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  for (const std::string& w : what)
    log::rank_error(
        "comm watchdog: rank {} of {}: {}; comm.timeout_s = {} s (a rank died, was stopped, or "
        "is far behind); ending the job",
        rank, size, w, timeout_s);
  spdlog::default_logger()->flush();
  // MPI_Abort from this thread while another thread is inside MPI may never return if the
  // library holds a lock: a detached thread calls it, and this one exits the process regardless
  // a little later (mpirun and srun end the job when a rank exits without finalizing).
  if (mpi_up) std::thread([] { MPI_Abort(MPI_COMM_WORLD, kWatchdogExitCode); }).detach();
  std::this_thread::sleep_for(std::chrono::seconds(mpi_up ? 5 : 0));
  std::_Exit(kWatchdogExitCode);
}

void watch_loop() {
  State& s = state();
  std::unique_lock<std::mutex> lock(s.mu);
  while (!s.stop) {
    // Checking ten times per timeout bounds the overshoot to 10% (and at most a second).
    const double period = std::clamp(s.timeout_s / 10.0, 0.05, 1.0);
    s.cv.wait_for(lock, std::chrono::duration<double>(period));
    if (s.stop) break;
    const auto now = Clock::now();
    std::vector<std::string> late;
    for (const auto& [id, o] : s.open) {
      const double blocked = std::chrono::duration<double>(now - o.since).count();
      if (blocked > s.timeout_s) late.push_back(describe(o, blocked));
    }
    // Sources are polled without the lock: a slow device query must not hold up the threads
    // opening and closing scopes. remove_source() waits for the poll to end instead.
    const std::vector<WatchdogSource*> sources = s.sources;
    const double t = s.timeout_s;
    s.polling = true;
    lock.unlock();
    for (WatchdogSource* source : sources) {
      try {
        const std::vector<std::string> lines = source->overdue(t);
        late.insert(late.end(), lines.begin(), lines.end());
      } catch (...) {
        // A failed query is not a hang; the thread that uses the failing device raises it.
        static std::once_flag warned;
        std::call_once(warned, [] {
          log::rank_warn("comm watchdog: querying the device's queued operations failed");
        });
      }
    }
    lock.lock();
    s.polling = false;
    if (!late.empty()) {
      Watchdog::HangHandler handler = s.handler;
      if (!handler) {
        lock.unlock();
        end_job(late, t);
      }
      s.handling = true;
      lock.unlock();
      try {
        handler(late, t);
      } catch (...) {
      }
      lock.lock();
      s.handling = false;
    }
    s.idle.notify_all();
  }
}

}  // namespace

void Watchdog::arm(double timeout_s) {
  RA_CHECK(timeout_s > 0, "comm.timeout_s must be > 0, got {}", timeout_s);
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.timeout_s = timeout_s;
  if (!s.thread.joinable()) {
    s.stop = false;
    s.thread = std::thread(watch_loop);
  }
  g_armed.store(true, std::memory_order_release);
}

void Watchdog::disarm() {
  State& s = state();
  g_armed.store(false, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.stop = true;
  }
  s.cv.notify_all();
  if (s.thread.joinable()) s.thread.join();
  std::lock_guard<std::mutex> lock(s.mu);
  s.open.clear();
}

bool Watchdog::armed() {
  return g_armed.load(std::memory_order_acquire);
}

double Watchdog::timeout_s() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.timeout_s;
}

void Watchdog::add_source(WatchdogSource* source) {
  RA_CHECK(source, "Watchdog::add_source: null source");
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.sources.push_back(source);
}

void Watchdog::remove_source(WatchdogSource* source) {
  State& s = state();
  std::unique_lock<std::mutex> lock(s.mu);
  s.sources.erase(std::remove(s.sources.begin(), s.sources.end(), source), s.sources.end());
  s.idle.wait(lock, [&] { return !s.polling; });  // a poll in progress may still hold it
}

void Watchdog::set_hang_handler(HangHandler handler) {
  State& s = state();
  std::unique_lock<std::mutex> lock(s.mu);
  s.idle.wait(lock, [&] { return !s.handling; });  // the old one may be running
  s.handler = std::move(handler);
}

WatchdogScope::WatchdogScope(const char* op, int peer, const char* group) {
  if (!g_armed.load(std::memory_order_relaxed)) return;
  open(op, peer, group ? group : "");
}

WatchdogScope::WatchdogScope(std::string op, int peer, std::string group) {
  if (!g_armed.load(std::memory_order_relaxed)) return;
  open(std::move(op), peer, std::move(group));
}

void WatchdogScope::open(std::string op, int peer, std::string group) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  id_ = s.next_id++;
  s.open.emplace(id_, Open{std::move(op), std::move(group), peer, Clock::now()});
}

WatchdogScope::~WatchdogScope() {
  if (id_ < 0) return;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.open.erase(id_);
}

}  // namespace ringattn
