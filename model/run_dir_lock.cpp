#include "model/run_dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "core/error.h"
#include "core/log.h"

namespace ringattn {

namespace fs = std::filesystem;

RunDirLock::RunDirLock(const std::string& run_dir) {
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  RA_CHECK(!ec && fs::is_directory(run_dir), "run_dir: cannot create the run directory '{}': {}",
           run_dir, ec ? ec.message() : "a file of that name is in the way");
  const std::string path = (fs::path(run_dir) / ".lock").string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  RA_CHECK(fd_ >= 0, "run_dir: cannot open the lock file '{}': {}", path, std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    if (err == ENOSYS || err == EOPNOTSUPP || err == ENOLCK || err == EINVAL) {
      log::warn(
          "run_dir '{}': this file system cannot lock '{}' ({}): nothing keeps a second "
          "job from using the run directory at the same time",
          run_dir, path, std::strerror(err));
      return;
    }
    std::ifstream f(path);
    std::stringstream holder;
    holder << f.rdbuf();
    std::string who = holder.str();
    while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
    RA_CHECK(err != EWOULDBLOCK,
             "run_dir '{}' is in use by another training job ({}); wait for it to end, or set "
             "another run_dir",
             run_dir, who.empty() ? "its lock file names no process" : who);
    RA_FAIL("run_dir: cannot lock '{}': {}", path, std::strerror(err));
  }
  // Who holds it, for the message of the next one that tries.
  char host[256] = {};
  (void)::gethostname(host, sizeof(host) - 1);
  const std::string text = "pid " + std::to_string(::getpid()) + " on " + host + "\n";
  if (::ftruncate(fd_, 0) == 0) (void)!::pwrite(fd_, text.data(), text.size(), 0);
}

RunDirLock::RunDirLock(RunDirLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the lock; the file stays (removing it races)
}

}  // namespace ringattn
