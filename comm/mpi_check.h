// MPI error check with file and line. The world communicator is set to MPI_ERRORS_RETURN at
// start-up so failures come back here as codes and become ringattn::Error.
#pragma once

#include <mpi.h>

#include "core/error.h"

namespace ringattn {
std::string mpi_error_string(int code);
}

#define MPI_CHECK(call)                                                                  \
  do {                                                                                   \
    int rc_ = (call);                                                                    \
    if (rc_ != MPI_SUCCESS)                                                              \
      ::ringattn::throw_error(                                                           \
          __FILE__, __LINE__,                                                            \
          fmt::format("MPI error in {}: {}", #call, ::ringattn::mpi_error_string(rc_))); \
  } while (0)
