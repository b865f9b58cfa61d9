// What the simulated CUDA runtime knows about its device memory, for the simulated cuBLAS
// (core/cuda_sim/cublas.cpp) and the tests of the simulation.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ringattn::sim {

// True when [p, p + bytes) lies inside one live device allocation (or bytes == 0 and p == null).
bool device_memory(const void* p, size_t bytes);
// The number of the live device allocation that holds [p, p + bytes) (allocations are numbered
// from 1 as they are made, so a later one at the same address has another), or 0 without one.
uint64_t device_allocation(const void* p, size_t bytes);
// Sets how many bytes the simulated device holds (an H100's 80 GiB at first) and returns the
// previous figure; an allocation beyond it fails with cudaErrorMemoryAllocation, as a full GPU's
// does. Memory whose cudaFreeAsync is still queued counts until the stream runs the free.
size_t set_device_capacity(size_t bytes);

}  // namespace ringattn::sim
