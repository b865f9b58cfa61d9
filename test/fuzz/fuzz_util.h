// Shared by the fuzz targets: the readers under test take paths, so each input is written to an
// in-memory file (memfd) and read back through /proc/self/fd, with no disk I/O per run.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace ringattn::fuzz {

// The path of a memfd holding exactly `data`.
inline const std::string& as_file(const uint8_t* data, size_t size) {
  static const int fd = memfd_create("ringattn-fuzz", 0);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (fd < 0 || ftruncate(fd, 0) != 0 ||
      (size > 0 && pwrite(fd, data, size, 0) != static_cast<ssize_t>(size))) {
    std::perror("fuzz: memfd");
    std::abort();
  }
  return path;
}

}  // namespace ringattn::fuzz
