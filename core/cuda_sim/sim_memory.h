// What the simulated CUDA runtime knows about its device memory, for the simulated cuBLAS
// (core/cuda_sim/cublas.cpp) and the tests of the simulation.
#pragma once

#include <cstddef>

namespace ringattn::sim {

// True when [p, p + bytes) lies inside one live device allocation (or bytes == 0 and p == null).
bool device_memory(const void* p, size_t bytes);

}  // namespace ringattn::sim
