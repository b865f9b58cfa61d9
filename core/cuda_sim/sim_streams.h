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
#include <vector>

namespace ringattn::sim {

// Most items one stream holds before its oldest run on their own.
inline constexpr size_t kMaxQueued = 4096;

// Queues `work` on stream s (null: the legacy default stream, which waits for every blocking
// stream and they for it). `what` names it in a fault's message; a string literal.
void enqueue(cudaStream_t s, const char* what, std::function<void()> work);
// Queues a free: it runs in stream order even after a fault, so no memory is lost.
void enqueue_release(cudaStream_t s, std::function<void()> release);

// A memory range an operation reads or writes.
struct Range {
  const void* p;
  size_t bytes;
};

// An operation for enqueue_watched (the simulated NCCL's).
struct WatchedOperation {
  const char* item = "";          // its item's name, in faults (a string literal)
  std::string name;               // its name in faults, e.g. "ncclAllGather (...)"
  std::vector<Range> memory;      // device memory it reads or writes
  Range output{nullptr, 0};       // where `result` writes
  std::function<void()> at_call;  // its effect at the call (may be empty)
  std::function<void()> result;   // its effect on completion (may be empty)
};

// Queues `op` on s, reading or writing `op.memory` at some time before it completes, and watches
// it: for work on other streams that is not ordered after it and changes that memory (on a GPU
// the two may run at the same time), and for work that reads its result without being ordered
// after it.
//
// The simulated NCCL needs this because it reads an operation's inputs when it is called (its
// data moves over MPI then), not when its stream reaches it: a kernel that overwrites an input
// (or a cudaFreeAsync that frees it) on the compute stream without waiting for the communication
// stream's event would, on a GPU, race with the transfer; here it would come too late to matter.
// So while the operation is watched, every item that runs on a stream not ordered after it (no
// chain of event waits and host synchronisations from the operation's completion to the item)
// has the memory hashed before and after it, and a change, or a range freed, is a fault naming
// both. Ordered work may change it freely. "Ordered after" is tracked per watched operation: the
// first item of each stream that an event wait (or the legacy stream's implicit one) or a host
// synchronisation placed after it.
//
// `op.result` lands as late as CUDA allows, not when the operation's item runs: just before the
// first item ordered after the operation runs (any item: a kernel's memory is not known), before
// a later watched operation ordered after it that touches `op.output` (or land_into for its
// inputs), or when the watch ends. Until then the output holds what the operation left at the
// call: `op.at_call` runs at once as part of the operation (the simulated NCCL poisons its output
// with NaN), checked as an item of s would be (it may change the memory of earlier watched
// operations only if it is ordered after them). So a reader that is not ordered after the
// operation reads the poison whichever order the simulation runs the streams in, as long as no
// other item ordered after the operation has run first (a GPU would have the old contents, the
// result or a mix there). The host reads device memory only through items (copies to the host
// are items too), so it sees the result once it has synchronised with the operation. Without
// anything to watch (no range in device memory), `op.result` is the item's work.
//
// Precondition: everything the operation is ordered after has run (call it after run_stream(s)),
// so that any item that runs later is either ordered after the operation or concurrent with it.
void enqueue_watched(cudaStream_t s, WatchedOperation op);
// Before the simulated NCCL reads an operation's inputs on s (after run_stream(s, false)): the
// results that write into `ranges` of the watched operations that s's next item is ordered after,
// or that the host knows completed, land.
void land_into(cudaStream_t s, const std::vector<Range>& ranges);
// How many operations are watched now (for the tests of the simulation).
size_t watched_operations();

// Runs everything queued on s so far, and what it waits for. `host_waits`: the call stands for a
// host synchronisation with s (what follows on the host is ordered after it); false for the
// simulated NCCL, which runs a stream to read an operation's inputs, where a GPU would not make
// the host wait.
void run_stream(cudaStream_t s, bool host_waits = true);
// Runs everything queued on every stream.
void run_device();

// cudaSuccess, or cudaErrorLaunchFailure after a fault.
cudaError_t device_fault();

// For the tests of the simulation: the fault's message ("" without one), clearing it (a GPU would
// need a new process), and how many items are queued on all streams.
std::string device_fault_message();
void clear_device_fault();
size_t queued_work();
// How many items (kernels, copies, cuBLAS calls; frees left out) were ever queued: a GPU's launch
// count, for tests that bound the launches of an operation.
size_t work_queued_so_far();

}  // namespace ringattn::sim
