// The communication watchdog: a job must not hang forever when a rank dies or stops answering.
//
// Blocking MPI calls cannot be interrupted, so a rank whose peer was killed (SIGKILL) or stopped
// (SIGSTOP) would wait inside MPI_Allreduce or MPI_Waitall for ever. Every place that blocks on
// other ranks (the collectives of the MPI communicator, the ring's KV wait, FSDP's gather and
// reduce-scatter waits) opens a WatchdogScope naming the operation and, when known, the peer. A
// watchdog thread looks at the open scopes a few times a second; when one has been open longer
// than comm.timeout_s it logs, on this rank, which rank it is, the operation(s) blocked and for
// how long, and ends the whole job with MPI_Abort (under mpirun that tears down every rank; a
// rank that is stopped is killed too). Should MPI_Abort itself hang (the MPI library may hold a
// lock the blocked call owns), the process exits on its own a few seconds later, which mpirun
// and srun also treat as the end of the job.
//
// The timeout counts time blocked, not time computing: a rank whose peers are slow (for
// example rank 0 writing a large checkpoint while the others wait in a barrier) looks the same
// as one whose peer died, so comm.timeout_s must exceed the longest wait a healthy job has.
//
// Work that no host thread blocks in is watched through sources: a collective queued on a GPU's
// communication stream (the NCCL transport) keeps the device waiting, not the host, and the host
// blocks later, somewhere unrelated (reading the loss back). A WatchdogSource registered with the
// watchdog reports such work when it has *run* for longer than the timeout; work still queued
// behind computation is not counted (comm/stream_watch.h).
//
// Disarmed (the default, and in the unit tests) a scope costs one relaxed atomic load.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace ringattn {

// Exit code of a job ended by the watchdog (what mpirun reports).
inline constexpr int kWatchdogExitCode = 14;

// Something that runs operations without a thread blocked in them. The watchdog thread calls
// overdue() a few times per timeout while it is armed, without holding its lock (so scopes open
// and close meanwhile); it must not block: it queries, it does not wait. An exception from it is
// logged once and counts as nothing late.
class WatchdogSource {
 public:
  virtual ~WatchdogSource() = default;
  // One line per operation that has run for longer than `timeout_s` or has failed, naming it and
  // its group; empty when all is well.
  virtual std::vector<std::string> overdue(double timeout_s) = 0;
};

class Watchdog {
 public:
  // Starts the watchdog thread with `timeout_s` (> 0); a second call changes the timeout.
  static void arm(double timeout_s);
  // Stops the thread (waits for it). Scopes opened afterwards are not watched.
  static void disarm();
  static bool armed();
  // The timeout of the last arm(), kept after disarm() (0 when never armed).
  static double timeout_s();

  // Registers a source (idle while disarmed). remove_source returns only once no overdue() call
  // on it is running, so the source may be destroyed right after.
  static void add_source(WatchdogSource* source);
  static void remove_source(WatchdogSource* source);

  // What the watchdog does with what it found (one line per late scope or overdue operation).
  // The default ends the job (log, MPI_Abort, exit kWatchdogExitCode); tests install a recorder.
  // An empty function restores the default. Setting waits for a running handler to return, so
  // the old one may be destroyed afterwards; a handler must not set one itself.
  using HangHandler = std::function<void(const std::vector<std::string>& what, double timeout_s)>;
  static void set_hang_handler(HangHandler handler);
};

// RAII: arms the watchdog for a scope (a command's run) and disarms it at the end.
class WatchdogArm {
 public:
  explicit WatchdogArm(double timeout_s) { Watchdog::arm(timeout_s); }
  ~WatchdogArm() { Watchdog::disarm(); }
  WatchdogArm(const WatchdogArm&) = delete;
  WatchdogArm& operator=(const WatchdogArm&) = delete;
};

// RAII: "this thread is now blocked in `op`". `peer` is a world rank this operation waits for,
// or -1 when it is a collective over a group (`group` then describes the group).
class WatchdogScope {
 public:
  explicit WatchdogScope(const char* op, int peer = -1, const char* group = nullptr);
  WatchdogScope(std::string op, int peer, std::string group);
  ~WatchdogScope();
  WatchdogScope(const WatchdogScope&) = delete;
  WatchdogScope& operator=(const WatchdogScope&) = delete;

 private:
  void open(std::string op, int peer, std::string group);
  long long id_ = -1;  // -1: not registered (watchdog disarmed)
};

}  // namespace ringattn
