// Opening an input file that must be a regular file, without ever waiting on a FIFO.
//
// A named pipe given as a data, weights or config file would make open() (and then read()) wait
// for a writer for ever: the job hangs before its first step, where no watchdog looks. The file is
// opened with O_NONBLOCK, checked with fstat, and put back in blocking mode once it is known to be
// regular (some network and FUSE file systems honour O_NONBLOCK on regular files too).
#pragma once

#include <cstdint>
#include <string>

namespace ringattn {

// A read-only descriptor of `path` in blocking mode, and its size in bytes; -1 when the file
// cannot be opened or is not a regular file, and `why` then says so in a few words that the
// caller puts after its own naming of the file: "cannot open: No such file or directory",
// "is a directory, not a file", "not a regular file", "cannot stat: ...".
int open_regular_file(const std::string& path, int64_t* size, std::string* why);

// The whole content of a regular file; false with `why` set (as above, or "read error: ...").
bool read_regular_file(const std::string& path, std::string* text, std::string* why);

}  // namespace ringattn
