// An emulated device for testing device-generic code on machines without a GPU.
//
// The model, the ring and FSDP are written once for every backend; on the CPU backend, code that
// reads device memory directly from the host (a memcpy, a loop over data<float>()) works by
// accident, so CPU tests cannot catch it. The emulated device can: it is Device::CUDA to the
// code under test, its allocator hands out TAGGED pointers (a host address plus 2^62, a
// non-canonical x86-64 address), and its backend strips the tag before running the CPU kernels.
// Any host access to "device" memory outside the backend and the allocator's copies therefore
// faults at once (SIGSEGV), while everything done through the interfaces computes exactly what
// the CPU backend computes: a device run must equal the CPU run bit for bit.
//
// Installed as the Device::CUDA allocator only when no real CUDA device is usable; on a GPU
// machine device_under_test() returns the real CUDA backend instead, and the same tests compare
// the GPU against the CPU within their stated tolerance.
#pragma once

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
bool is_tagged(const void* p);
template <typename T>
T* untag(T* p) {
  constexpr uintptr_t kTag = uintptr_t(1) << 62;
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  return (v & kTag) ? reinterpret_cast<T*>(v - kTag) : p;
}

}  // namespace ringattn::test
