// The simulated GPU's streams (RINGATTN_CUDA=SIM; core/cuda_sim/streams.cpp): device work is
// queued, not run, and runs only when something waits for it. This is the interface the simulated
// runtime, cuBLAS and fused kernels queue their work through, and what the tests of the simulation
// inspect.
//
// Why deferred: on a GPU a kernel, a copy or a stream-ordered free runs some time after the call
// that queued it, while the host goes on. Code that reads a result without waiting for it, fills
// a pinned buffer a queued copy has not read yet, or orders two streams without an event, works
// by luck on a GPU (the device is usually fast enough) and every time on a simulation that runs
// each call at once. Here queued work runs as late as CUDA allows: when the host synchronises (a
// stream, an event, the device, a synchronous copy to the host), when a stream reaches a
// cudaStreamWaitEvent on it, or when a stream's queue grows past kMaxQueued (a GPU runs ahead
// too). So such a bug reads stale data (fresh device memory is all NaN) or freed memory (an error
// under AddressSanitizer) every time, and the tests' comparisons fail.
//
// Faults: work that fails while it runs (a kernel's divergent barrier, a batched GEMM's operand
// outside device memory) is a sticky fault, as on a GPU: the message goes to stderr, queued work
// after it is dropped (frees still happen), and every synchronising call and cudaGetLastError
// return cudaErrorLaunchFailure from then on.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <string>

namespace ringattn::sim {

// Most items one stream holds before its oldest run on their own.
inline constexpr size_t kMaxQueued = 4096;

// Queues `work` on stream s (null: the legacy default stream, which waits for every blocking
// stream and they for it). `what` names it in a fault's message; a string literal.
void enqueue(cudaStream_t s, const char* what, std::function<void()> work);
// Queues a free: it runs in stream order even after a fault, so no memory is lost.
void enqueue_release(cudaStream_t s, std::function<void()> release);

// Runs everything queued on s so far, and what it waits for.
void run_stream(cudaStream_t s);
// Runs everything queued on every stream.
void run_device();

// cudaSuccess, or cudaErrorLaunchFailure after a fault.
cudaError_t device_fault();

// For the tests of the simulation: the fault's message ("" without one), clearing it (a GPU would
// need a new process), and how many items are queued on all streams.
std::string device_fault_message();
void clear_device_fault();
size_t queued_work();

}  // namespace ringattn::sim
