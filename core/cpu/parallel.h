// How many OpenMP threads an elementwise CPU operation uses.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/backend.h"

namespace ringattn::cpu {

// Below this many elements a call runs on one thread: waking a team costs a few microseconds,
// about what one thread needs for this much elementwise work.
inline constexpr int64_t kParallelMin = 1 << 15;

inline int threads_for(int64_t elements) {
  if (elements < kParallelMin) return 1;
  return std::max(1, cpu_threads());
}

}  // namespace ringattn::cpu
