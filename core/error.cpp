#include "core/error.h"

#include <cstring>

namespace ringattn {

std::string Error::describe() const {
  // Show the path from the project's top folder, not the build machine's absolute path.
  std::string f = file_ ? file_ : "?";
  for (const char* top : {"/core/", "/comm/", "/model/", "/apps/", "/test/"}) {
    auto pos = f.rfind(top);
    if (pos != std::string::npos) {
      f = f.substr(pos + 1);
      break;
    }
  }
  return fmt::format("{} (at {}:{})", what(), f, line_);
}

void throw_error(const char* file, int line, std::string message) {
  throw Error(std::move(message), file, line);
}

}  // namespace ringattn
