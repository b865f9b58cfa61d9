// Deterministic random fills for tests, benchmarks and the check tool's generated inputs.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace ringattn {

// Fills a host F32/BF16/F16 tensor with N(mean, stddev) values from a seeded generator: the same
// seed gives the same values on every machine (a SplitMix64 stream and Box-Muller, no std
// distributions whose output differs between standard libraries).
void fill_normal(Tensor& t, uint64_t seed, float mean = 0.0f, float stddev = 1.0f);

// Fills a host I32 tensor with uniform integers in [lo, hi].
void fill_uniform_int(Tensor& t, uint64_t seed, int32_t lo, int32_t hi);

}  // namespace ringattn
