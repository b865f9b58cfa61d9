// CPU implementations of the backend's memory, precision and optimizer operations
// (core/backend.h): the device copy, bfloat16 conversions and GEMM, the float64 sum of squares
// and scaling of gradient clipping, and the AdamW update.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/backend.h"

namespace ringattn::cpu {

void copy(void* dst, const void* src, size_t bytes);
// Sequential, in index order: the value the float64 reference computes.
double sum_squares(const float* x, int64_t n);
void scale_f64(float* x, int64_t n, double s);
// bfloat16 <-> float32 (core/dtype.h's conversions) and the bf16-input GEMM: A and B widened to
// float32 in allocator-counted scratch (exact), then sgemm.
void to_bf16(const float* src, uint16_t* dst, int64_t n);
void from_bf16(const uint16_t* src, float* dst, int64_t n);
void gemm_bf16(bool ta, bool tb, int m, int n, int k, float alpha, const uint16_t* a, int lda,
               const uint16_t* b, int ldb, float beta, float* c, int ldc);
void adamw_update(const AdamWConstants& k, float* params, const float* grads, float* m, float* v,
                  int64_t n);

}  // namespace ringattn::cpu
