#include "core/regular_file.h"

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ringattn {

int open_regular_file(const std::string& path, int64_t* size, std::string* why) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    *why = std::string("cannot open: ") + std::strerror(errno);
    return -1;
  }
  struct stat st {};
  const bool stat_ok = ::fstat(fd, &st) == 0;
  const int err = errno;
  if (!stat_ok || !S_ISREG(st.st_mode)) {
    ::close(fd);
    *why = !stat_ok              ? std::string("cannot stat: ") + std::strerror(err)
           : S_ISDIR(st.st_mode) ? std::string("is a directory, not a file")
                                 : std::string("not a regular file");
    return -1;
  }
  if (const int flags = ::fcntl(fd, F_GETFL); flags >= 0)
    (void)::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  *size = int64_t(st.st_size);
  return fd;
}

bool read_regular_file(const std::string& path, std::string* text, std::string* why) {
  int64_t size = 0;
  const int fd = open_regular_file(path, &size, why);
  if (fd < 0) return false;
  text->clear();
  text->reserve(size_t(size));
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      text->append(buf, size_t(n));
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      *why = std::string("read error: ") + std::strerror(errno);
      ::close(fd);
      return false;
    }
  }
  ::close(fd);
  return true;
}

}  // namespace ringattn
