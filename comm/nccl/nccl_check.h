// NCCL error check with file and line; the message includes NCCL's own description of the last
// failure (ncclGetLastError), which usually names the real cause (e.g. a duplicate GPU).
#pragma once

#include <nccl.h>

#include "core/error.h"

#define NCCL_CHECK(call)                                                                    \
  do {                                                                                      \
    ncclResult_t nccl_st_ = (call);                                                         \
    if (nccl_st_ != ncclSuccess)                                                            \
      ::ringattn::throw_error(                                                              \
          __FILE__, __LINE__,                                                               \
          fmt::format("NCCL error in {}: {} ({}): {}", #call, ncclGetErrorString(nccl_st_), \
                      int(nccl_st_), ncclGetLastError(nullptr)));                           \
  } while (0)
