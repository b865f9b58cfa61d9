// An exclusive lock on a run directory, held by rank 0 of a training job for the whole run: a
// second job on the same run_dir (a Slurm requeue while the old job still runs, one command
// started twice) would otherwise remove the first one's save in progress as "left by an
// interrupted save" and interleave their checkpoints. flock(2) on <run_dir>/.lock: the kernel
// releases it when the process ends, however it ends (SIGKILL, a crash), so a stale lock cannot
// block a resume. Where the file system has no flock (Lustre mounted noflock, NFS without a lock
// manager) the run goes on unprotected, with a warning; where its flock is node-local (NFS with
// local_lock=flock, Lustre localflock) it protects against jobs on the same node only.
#pragma once

#include <string>

namespace ringattn {

class RunDirLock {
 public:
  // Creates run_dir if needed and takes the lock; an Error naming the process that holds it
  // (pid and host, as it wrote them) when another one does.
  explicit RunDirLock(const std::string& run_dir);
  ~RunDirLock();
  RunDirLock(RunDirLock&& other) noexcept;
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;
  RunDirLock& operator=(RunDirLock&&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace ringattn
