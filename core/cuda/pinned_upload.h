// Host-to-device uploads of small tables built on the host for one call (attention tile plans,
// RoPE positions and frequencies) that do not block the host.
//
// cudaMemcpyAsync from pageable memory may synchronise with the host, and the pageable source
// must outlive the copy; the tile calls used to wait for their stream before returning for that
// reason. Here each upload is copied into one of a few pinned buffers and queued from there; a
// buffer is reused once the copy that last used it has run (an event per buffer), so the caller's
// source may be freed as soon as upload_async returns, and the host only waits when it is several
// uploads ahead of the device. The pinned buffers grow to the largest upload and are kept for the
// process (page-locked host memory, not counted by the device allocator).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace ringattn::cuda {

// Queues a copy of `bytes` at host address `src` to device address `dst` on `stream` (of the
// current device). Thread-safe.
void upload_async(cudaStream_t stream, void* dst, const void* src, size_t bytes);

}  // namespace ringattn::cuda
