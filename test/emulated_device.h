// An emulated device for testing device-generic code on machines without a GPU.
//
// The model, the ring and FSDP are written once for every backend; on the CPU backend, code that
// reads device memory directly from the host (a memcpy, a loop over data<float>()) works by
// accident, so CPU tests cannot catch it. The emulated device can: it is Device::CUDA to the
// code under test, its allocator hands out TAGGED pointers (a host address plus 2^62, a
// non-canonical x86-64 address), and its backend strips the tag before running the CPU kernels.
// Any host access to "device" memory outside the backend and the allocator's copies therefore
// faults at once (SIGSEGV), while everything done through the interfaces computes exactly what
// the CPU backend computes: a device run must equal the CPU run bit for bit. The one exception is
// AttentionTileProblem::fused, which runs the CUDA fused kernels' own body
// (core/cuda_sim/host_block.h) as the GPU would: the same function, a bf16 tolerance away from the
// CPU's tiles.
//
// The emulated device is also asynchronous, in the strictest way: its backend's operations queue
// on an emulated stream and run only when something synchronises with the device (synchronize(),
// the allocator's copies, a result returned to the host). Frees are queued on the stream too, as
// cudaFreeAsync orders them. So a transfer that reads a buffer before the queued operations
// writing it have run sees stale data, and the tests see the difference, as a GPU could.
//
// Installed as the Device::CUDA allocator only when no real CUDA device is usable; on a GPU
// machine device_under_test() returns the real CUDA backend instead, and the same tests compare
// the GPU against the CPU within their stated tolerance.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "comm/communicator.h"
#include "core/backend.h"

namespace ringattn::test {

struct DeviceUnderTest {
  Backend* backend = nullptr;
  bool emulated = true;  // results must then equal the CPU's bitwise
};

// The CUDA backend on GPU 0 when one is usable, else the emulated device (installing its
// allocator on first use).
DeviceUnderTest device_under_test();

// The emulated device's pointer tagging, exposed for the tests of the emulation itself.
inline bool is_tagged(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & (uintptr_t(1) << 62)) != 0;
}
template <typename T>
T* untag(T* p) {
  constexpr uintptr_t kTag = uintptr_t(1) << 62;
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  return (v & kTag) ? reinterpret_cast<T*>(v - kTag) : p;
}

// The emulated stream: operations queued and not yet run, and running them (what a transport's
// ordering against the compute stream amounts to here).
size_t emulated_pending_operations();
void emulated_synchronize();
// How many times the host has waited for the emulated stream so far (synchronize(), synchronous
// copies, results returned to the host); a ring's ordering before a transfer is not counted, as
// it is an event on a GPU.
size_t emulated_host_waits();

// A transport with NCCL's semantics for the emulated device, over a host communicator: device
// buffers go to it directly (no staging) and collectives do not wait for the emulated stream, so
// code that forgets to synchronise before a collective reads stale data, as it would on NCCL.
// Rings made with the compute backend run the stream before each transfer (the NCCL ring's
// event). Stream-ordered collectives hold their output back until their point is ordered, and
// refuse an input changed before then (DeferredPoint in the .cpp): what a GPU running the
// collective beside the compute stream could show. `host` must outlive the result. Emulated
// device only.
std::unique_ptr<Communicator> make_emulated_direct_communicator(Communicator& host);

}  // namespace ringattn::test
