// NCCL error check with file and line; the message includes NCCL's own description of the last
// failure (ncclGetLastError), which usually names the real cause (e.g. a duplicate GPU).
#pragma once

#include <nccl.h>

#include "core/error.h"

#define NCCL_CHECK(call) NCCL_CHECK_RESULT(call, #call)

// A result obtained earlier (a group closed before its operations' results are checked), with
// `what` naming the call in the message.
#define NCCL_CHECK_RESULT(result, what)                                                    \
  do {                                                                                     \
    ncclResult_t nccl_st_ = (result);                                                      \
    if (nccl_st_ != ncclSuccess)                                                           \
      ::ringattn::throw_error(                                                             \
          __FILE__, __LINE__,                                                              \
          fmt::format("NCCL error in {}: {} ({}): {}", what, ncclGetErrorString(nccl_st_), \
                      int(nccl_st_), ncclGetLastError(nullptr)));                          \
  } while (0)
