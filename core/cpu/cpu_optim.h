// CPU implementations of the backend's memory and optimizer operations (core/backend.h): the
// device copy, the float64 sum of squares and scaling of gradient clipping, and the AdamW update.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/backend.h"

namespace ringattn::cpu {

void copy(void* dst, const void* src, size_t bytes);
// Sequential, in index order: the value the float64 reference computes.
double sum_squares(const float* x, int64_t n);
void scale_f64(float* x, int64_t n, double s);
void adamw_update(const AdamWConstants& k, float* params, const float* grads, float* m, float* v,
                  int64_t n);

}  // namespace ringattn::cpu
