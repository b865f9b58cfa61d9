// Errors with file and line. Every failure the user can cause (bad config, bad file, memory limit)
// is reported by throwing ringattn::Error; apps catch it at the top, print one clear message and
// exit non-zero. Programming errors use the same path so nothing ever aborts silently.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace ringattn {

class Error : public std::runtime_error {
 public:
  Error(std::string message, const char* file, int line)
      : std::runtime_error(std::move(message)), file_(file), line_(line) {}
  const char* file() const { return file_; }
  int line() const { return line_; }
  // "message (at core/tensor.cpp:42)": what apps print.
  std::string describe() const;

 private:
  const char* file_;
  int line_;
};

// An error every rank of the job raised at the same point (comm/agreed_error.h): no rank waits
// in a collective for another, so the program ends normally (no MPI_Abort) and says each distinct
// message once. `own`: this rank's own failure; otherwise a pointer at another rank's.
class AgreedError : public Error {
 public:
  AgreedError(const Error& e, bool own) : Error(e.what(), e.file(), e.line()), own_(own) {}
  bool own() const { return own_; }

 private:
  bool own_;
};

[[noreturn]] void throw_error(const char* file, int line, std::string message);

}  // namespace ringattn

// RA_CHECK(cond, "format {}", args...): throws ringattn::Error with file and line when !cond.
#define RA_CHECK(cond, ...)                                                             \
  do {                                                                                  \
    if (!(cond)) ::ringattn::throw_error(__FILE__, __LINE__, fmt::format(__VA_ARGS__)); \
  } while (0)

#define RA_FAIL(...) ::ringattn::throw_error(__FILE__, __LINE__, fmt::format(__VA_ARGS__))
