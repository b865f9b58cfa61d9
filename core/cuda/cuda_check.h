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

namespace ringattn::cuda {

// cudaEventQuery for polling: cudaSuccess when done, cudaErrorNotReady while pending, any other
// status is an error. "Not ready" is also left behind as the thread's last error, where the next
// CUDA_CHECK(cudaGetLastError()) after a kernel launch would report it as the launch's failure
// ("device not ready"); it is cleared here, and only when it is what the slot holds.
inline cudaError_t query_event(cudaEvent_t e) {
  const cudaError_t st = cudaEventQuery(e);
  if (st == cudaErrorNotReady && cudaPeekAtLastError() == cudaErrorNotReady)
    (void)cudaGetLastError();
  return st;
}

}  // namespace ringattn::cuda

#define CUBLAS_CHECK(call)                                                        \
  do {                                                                            \
    cublasStatus_t st_ = (call);                                                  \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                             \
      ::ringattn::throw_error(__FILE__, __LINE__,                                 \
                              fmt::format("cuBLAS error in {}: {} ({})", #call,   \
                                          cublasGetStatusString(st_), int(st_))); \
  } while (0)
