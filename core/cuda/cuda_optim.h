// CUDA versions of the backend's memory, precision and optimizer operations (core/backend.h),
// queued on the backend's compute stream. The AdamW kernel does its float64 arithmetic with
// explicitly rounded intrinsics (no fused multiply-adds), so its results are bitwise those of
// core/cpu/cpu_optim.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/backend.h"

namespace ringattn::cuda {

void copy(cudaStream_t stream, void* dst, const void* src, size_t bytes);
// The conversions of core/dtype.h, bit for bit (the same integer rounding on the device).
void to_bf16(cudaStream_t stream, const float* src, uint16_t* dst, int64_t n);
void from_bf16(cudaStream_t stream, const uint16_t* src, float* dst, int64_t n);
// Synchronises the stream (the result is returned to the host).
double sum_squares(cudaStream_t stream, const float* x, int64_t n);
void scale_f64(cudaStream_t stream, float* x, int64_t n, double s);
void adamw_update(cudaStream_t stream, const AdamWConstants& k, float* params, const float* grads,
                  float* m, float* v, int64_t n);

}  // namespace ringattn::cuda
