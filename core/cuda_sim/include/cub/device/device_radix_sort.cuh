// The simulated cub::DeviceRadixSort (RINGATTN_CUDA=SIM): SortPairs as a stable sort on the host,
// with cub's two-call protocol (a null temp_storage asks for the temporary bytes). Only what
// core/cuda/cuda_layers.cu uses: int32 keys over all 32 bits, in ascending numeric order (cub
// flips the sign bit of signed keys, which orders them as numbers), and int32 values. Every array
// must be device memory, and the temporary storage as large as the first call said. The sort is
// queued on `stream` (core/cuda_sim/sim_streams.h), as a GPU's would be.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "core/cuda_sim/sim_memory.h"
#include "core/cuda_sim/sim_streams.h"

namespace cub {

struct DeviceRadixSort {
  static cudaError_t SortPairs(void* temp_storage, size_t& temp_bytes, const int32_t* keys_in,
                               int32_t* keys_out, const int32_t* values_in, int32_t* values_out,
                               int n, int begin_bit = 0, int end_bit = 32,
                               cudaStream_t stream = nullptr) {
    if (begin_bit != 0 || end_bit != 32) return cudaErrorInvalidValue;  // not simulated
    if (!temp_storage) {
      temp_bytes = size_t(std::max(n, 1)) * 8;  // what a real sort might ask for
      return cudaSuccess;
    }
    const size_t bytes = size_t(std::max(n, 0)) * sizeof(int32_t);
    using ringattn::sim::device_memory;
    if (!device_memory(keys_in, bytes) || !device_memory(keys_out, bytes) ||
        !device_memory(values_in, bytes) || !device_memory(values_out, bytes) ||
        !device_memory(temp_storage, temp_bytes) || temp_bytes < size_t(std::max(n, 1)) * 8)
      return cudaErrorInvalidValue;  // what would fault on a GPU
    ringattn::sim::enqueue(stream, "cub radix sort", [=] {
      std::vector<int> order(size_t(std::max(n, 0)));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int a, int b) { return keys_in[a] < keys_in[b]; });
      std::vector<int32_t> keys(order.size()), values(order.size());
      for (size_t i = 0; i < order.size(); ++i) {
        keys[i] = keys_in[order[i]];
        values[i] = values_in[order[i]];
      }
      std::copy(keys.begin(), keys.end(), keys_out);
      std::copy(values.begin(), values.end(), values_out);
    });
    return cudaSuccess;
  }
};

}  // namespace cub
