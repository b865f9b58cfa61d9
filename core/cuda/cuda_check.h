// Error checks with file and line for CUDA runtime and cuBLAS calls.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/error.h"

#define CUDA_CHECK(call)                                                                         \
  do {                                                                                           \
    cudaError_t err_ = (call);                                                                   \
    if (err_ != cudaSuccess)                                                                     \
      ::ringattn::throw_error(                                                                   \
          __FILE__, __LINE__,                                                                    \
          fmt::format("CUDA error in {}: {} ({})", #call, cudaGetErrorString(err_), int(err_))); \
  } while (0)

#define CUBLAS_CHECK(call)                                                        \
  do {                                                                            \
    cublasStatus_t st_ = (call);                                                  \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                             \
      ::ringattn::throw_error(__FILE__, __LINE__,                                 \
                              fmt::format("cuBLAS error in {}: {} ({})", #call,   \
                                          cublasGetStatusString(st_), int(st_))); \
  } while (0)
