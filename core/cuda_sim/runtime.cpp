// The simulated CUDA runtime's memory, copies and errors (RINGATTN_CUDA=SIM;
// core/cuda_sim/include/cuda_runtime.h says what the simulation is and is not; streams and
// events are core/cuda_sim/streams.cpp).
//
// Device memory: every allocation starts as all ones (NaN), and is registered with its exact size
// (so AddressSanitizer, in the sanitizer build, also sees a kernel read or write past it). A copy,
// a memset or a cuBLAS operand must lie inside one allocation, and a copy's kind must match where
// its pointers are: otherwise the call fails with cudaErrorInvalidValue and says why on stderr, as
// a GPU would fault. Freed device memory is set to all ones before it goes, so queued work that
// still reads it reads NaN (and AddressSanitizer reports it).
//
// Copies, memsets and stream-ordered frees are queued on their stream, and what each waits for is
// what CUDA documents for its kind ("API synchronization behavior"): from pageable host memory the
// source is taken at the call (staged), then the device write is queued; from pinned memory the
// source is read when the copy runs; to pageable host memory the call queues the copy and runs
// its stream, so the copy is done on return; to pinned memory it is queued. The synchronous
// cudaMemcpy is the same on the legacy default stream, except that a copy to the host, or from
// pinned memory, completes before it returns. Host to host copies run at once.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/cuda_sim/sim_asan.h"
#include "core/cuda_sim/sim_memory.h"
#include "core/cuda_sim/sim_streams.h"
#include "cuda_runtime.h"

#ifdef RINGATTN_SIM_ASAN
#include <sanitizer/asan_interface.h>
// Quarantined device memory is poisoned: a kernel touching it is a use after free to ASan.
#define RINGATTN_SIM_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define RINGATTN_SIM_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define RINGATTN_SIM_POISON(p, n) ((void)(p), (void)(n))
#define RINGATTN_SIM_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

struct CUmemPoolHandle_st {};

namespace ringattn::sim {

namespace {

constexpr size_t kAlign = 256;                    // cudaMalloc's alignment
constexpr size_t kTotalBytes = size_t(80) << 30;  // an H100's memory, for cudaMemGetInfo

// Freed device memory is held back (all ones) before it returns to the host's heap, so that a
// later allocation does not get the same address at once: queued work that still names freed
// memory then finds it unregistered (a fault), not someone else's live allocation.
constexpr size_t kQuarantineBytes = size_t(256) << 20;

struct Registry {
  std::mutex mu;
  std::map<uintptr_t, size_t> device;  // start -> bytes
  std::map<uintptr_t, size_t> pinned;
  std::set<uintptr_t> free_queued;       // device allocations with a cudaFreeAsync not yet run
  std::map<uintptr_t, uint64_t> serial;  // device allocation start -> its number (from 1)
  uint64_t allocations = 0;
  std::deque<std::pair<void*, size_t>> quarantine;
  size_t quarantine_bytes = 0;
  size_t device_bytes = 0;
  size_t capacity = kTotalBytes;  // what the device holds (set_device_capacity, for tests)
};

// Never destroyed: device memory may be freed during static destruction.
Registry& registry() {
  static auto* r = new Registry;
  return *r;
}

thread_local cudaError_t last_error = cudaSuccess;
thread_local int current_device = 0;

cudaError_t fail(cudaError_t e, const char* what, const void* p, size_t bytes) {
  std::fprintf(stderr, "[cuda sim] %s (pointer %p, %zu bytes)\n", what, p, bytes);
  last_error = e;
  return e;
}

// The allocation in `m` that holds p, or m.end().
std::map<uintptr_t, size_t>::const_iterator find(const std::map<uintptr_t, size_t>& m,
                                                 const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = m.upper_bound(a);
  if (it == m.begin()) return m.end();
  --it;
  return a < it->first + std::max<size_t>(it->second, 1) ? it : m.end();
}

cudaError_t allocate(void** p, size_t bytes) {
  if (!p) return fail(cudaErrorInvalidValue, "allocation without a result pointer", p, bytes);
  *p = nullptr;
  if (bytes == 0) return cudaSuccess;
  {
    // Full: as on a GPU, a non-sticky error without a message (the caller decides what to say).
    Registry& r = registry();
    const std::lock_guard<std::mutex> lock(r.mu);
    if (bytes > r.capacity - std::min(r.capacity, r.device_bytes)) {
      last_error = cudaErrorMemoryAllocation;
      return cudaErrorMemoryAllocation;
    }
  }
  void* q = ::operator new(bytes, std::align_val_t(kAlign), std::nothrow);
  if (!q) return fail(cudaErrorMemoryAllocation, "out of (host) memory", nullptr, bytes);
  // Fresh device memory holds what the pool last held on a GPU, never zeros to rely on: here all
  // bits set, a NaN in every float and double, so a kernel reading what nobody wrote shows.
  std::memset(q, 0xff, bytes);
  Registry& r = registry();
  const std::lock_guard<std::mutex> lock(r.mu);
  r.device[reinterpret_cast<uintptr_t>(q)] = bytes;
  r.serial[reinterpret_cast<uintptr_t>(q)] = ++r.allocations;
  r.device_bytes += bytes;
  *p = q;
  return cudaSuccess;
}

// `queued`: the free queued by cudaFreeAsync (its pointer is then among free_queued).
cudaError_t release(void* p, bool queued = false) {
  if (!p) return cudaSuccess;
  Registry& r = registry();
  std::vector<std::pair<void*, size_t>> to_delete;
  {
    const std::lock_guard<std::mutex> lock(r.mu);
    const auto key = reinterpret_cast<uintptr_t>(p);
    const auto it = r.device.find(key);
    if (it == r.device.end())
      return fail(cudaErrorInvalidValue, "cudaFree of a pointer that cudaMalloc did not return", p,
                  0);
    if (!queued && r.free_queued.count(key))
      return fail(cudaErrorInvalidValue, "cudaFree of memory whose cudaFreeAsync is still queued",
                  p, 0);
    r.free_queued.erase(key);
    r.serial.erase(key);
    r.device_bytes -= it->second;
    std::memset(p, 0xff, it->second);
    RINGATTN_SIM_POISON(p, it->second);
    r.quarantine.emplace_back(p, it->second);
    r.quarantine_bytes += it->second;
    r.device.erase(it);
    while (r.quarantine_bytes > kQuarantineBytes) {
      to_delete.push_back(r.quarantine.front());
      r.quarantine_bytes -= r.quarantine.front().second;
      r.quarantine.pop_front();
    }
  }
  for (const auto& [q, bytes] : to_delete) {
    RINGATTN_SIM_UNPOISON(q, bytes);
    ::operator delete(q, std::align_val_t(kAlign));
  }
  return cudaSuccess;
}

// cudaFreeAsync: the pointer is checked at the call (a second free of it while the first is
// queued is refused there), the memory goes when the stream reaches it.
cudaError_t release_async(void* p, cudaStream_t stream) {
  if (!p) return cudaSuccess;
  {
    Registry& r = registry();
    const std::lock_guard<std::mutex> lock(r.mu);
    const auto key = reinterpret_cast<uintptr_t>(p);
    if (r.device.find(key) == r.device.end())
      return fail(cudaErrorInvalidValue,
                  "cudaFreeAsync of a pointer that cudaMalloc did not return", p, 0);
    if (!r.free_queued.insert(key).second)
      return fail(cudaErrorInvalidValue, "cudaFreeAsync of memory whose cudaFreeAsync is queued", p,
                  0);
  }
  enqueue_release(stream, [p] {
    if (release(p, /*queued=*/true) != cudaSuccess)
      throw std::runtime_error("a queued cudaFreeAsync found its memory already freed");
  });
  return cudaSuccess;
}

// [p, p + bytes) inside one device allocation; the caller holds the registry's lock.
bool device_range(const void* p, size_t bytes) {
  const auto& m = registry().device;
  const auto it = find(m, p);
  if (it == m.end()) return bytes == 0 && p == nullptr;
  return reinterpret_cast<uintptr_t>(p) + bytes <= it->first + it->second;
}

// Checks one side of a copy: `device` says which memory the kind expects (-1: either).
cudaError_t check_side(const void* p, size_t bytes, int device, const char* side) {
  const auto& m = registry().device;
  const auto it = find(m, p);
  const bool is_device = it != m.end();
  if (device >= 0 && is_device != (device == 1)) {
    const std::string what =
        std::string("copy: ") + side +
        (is_device ? " is device memory, the kind says host" : " is not device memory");
    return fail(cudaErrorInvalidValue, what.c_str(), p, bytes);
  }
  if (is_device && reinterpret_cast<uintptr_t>(p) + bytes > it->first + it->second)
    return fail(cudaErrorInvalidValue, "copy runs past the end of its device allocation", p, bytes);
  return cudaSuccess;
}

// Where a copy's pointer lies.
enum class Side { Pageable, Pinned, Device };

Side side_of(const void* p) {
  const auto& r = registry();
  if (find(r.device, p) != r.device.end()) return Side::Device;
  if (find(r.pinned, p) != r.pinned.end()) return Side::Pinned;
  return Side::Pageable;
}

// Checks a copy against its kind and the allocations; on success, says where each side lies.
cudaError_t check_copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                       Side* dst_side, Side* src_side) {
  int dst_device = -1, src_device = -1;
  switch (kind) {
    case cudaMemcpyHostToHost:
      dst_device = src_device = 0;
      break;
    case cudaMemcpyHostToDevice:
      dst_device = 1, src_device = 0;
      break;
    case cudaMemcpyDeviceToHost:
      dst_device = 0, src_device = 1;
      break;
    case cudaMemcpyDeviceToDevice:
      dst_device = src_device = 1;
      break;
    case cudaMemcpyDefault:
      break;
    default:
      return fail(cudaErrorInvalidValue, "copy: unknown kind", dst, bytes);
  }
  const std::lock_guard<std::mutex> lock(registry().mu);
  if (const cudaError_t e = check_side(dst, bytes, dst_device, "destination")) return e;
  if (const cudaError_t e = check_side(src, bytes, src_device, "source")) return e;
  *dst_side = side_of(dst);
  *src_side = side_of(src);
  return cudaSuccess;
}

// When queued work runs, the memory it was queued with must still be there: a stream-ordered free
// that overtook it (a missing event between two streams) is the device's fault, named, instead of
// a write into the host's heap.
void require_live(const void* p, size_t bytes, Side side, const char* what) {
  if (side == Side::Pageable) return;
  const auto& r = registry();
  const std::lock_guard<std::mutex> lock(registry().mu);
  const auto& m = side == Side::Device ? r.device : r.pinned;
  const auto it = find(m, p);
  if (it == m.end() || reinterpret_cast<uintptr_t>(p) + bytes > it->first + it->second)
    throw std::runtime_error(std::string(what) + " into or from memory freed before it ran");
}

// A copy on `stream` (null: the legacy default stream); `blocking`: the synchronous cudaMemcpy.
cudaError_t copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream,
                 bool blocking) {
  if (bytes == 0) return cudaSuccess;
  Side ds{}, ss{};
  if (const cudaError_t e = check_copy(dst, src, bytes, kind, &ds, &ss)) return e;
  if (const cudaError_t e = device_fault()) return e;
  if (ds != Side::Device && ss != Side::Device) {  // host to host: at once
    std::memmove(dst, src, bytes);
    return cudaSuccess;
  }
  if (ss == Side::Pageable) {          // staged: the source is taken now (into device memory)
    if (blocking) run_stream(stream);  // "a stream sync is performed before the copy is initiated"
    auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(src),
                                                      static_cast<const char*>(src) + bytes);
    enqueue(stream, "copy from pageable host memory", [dst, staged, ds] {
      require_live(dst, staged->size(), ds, "a copy");
      std::memcpy(dst, staged->data(), staged->size());
    });
    return cudaSuccess;
  }
  // Otherwise the copy is an item of its stream, so it is ordered and checked like every other
  // item there, and reads what an item there would (an NCCL result lands before the first item
  // ordered after its operation: sim_streams.h, enqueue_watched). The call completes it before it
  // returns when it must have completed on return: a copy to pageable memory, and the synchronous
  // call to pinned memory or from it.
  const bool to_host = ds == Side::Pageable || (blocking && ds == Side::Pinned);
  enqueue(stream, to_host ? "copy to the host" : "copy", [dst, src, bytes, ds, ss] {
    require_live(dst, bytes, ds, "a copy");
    require_live(src, bytes, ss, "a copy");
    std::memmove(dst, src, bytes);
  });
  if (to_host || (blocking && ss == Side::Pinned)) {
    run_stream(stream);
    return device_fault();
  }
  return cudaSuccess;
}

}  // namespace

void set_last_error(cudaError_t e) {
  last_error = e;
}

bool device_memory(const void* p, size_t bytes) {
  const std::lock_guard<std::mutex> lock(registry().mu);
  return device_range(p, bytes);
}

uint64_t device_allocation(const void* p, size_t bytes) {
  Registry& r = registry();
  const std::lock_guard<std::mutex> lock(r.mu);
  if (!p || !device_range(p, bytes)) return 0;
  return r.serial.at(find(r.device, p)->first);
}

size_t set_device_capacity(size_t bytes) {
  Registry& r = registry();
  const std::lock_guard<std::mutex> lock(r.mu);
  return std::exchange(r.capacity, bytes);
}

}  // namespace ringattn::sim

using namespace ringattn::sim;

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorNotReady:
      return "device not ready";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
  }
  return "unknown error";
}
// A device fault is sticky: it is every later call's last error, and is never cleared.
cudaError_t cudaGetLastError() {
  if (const cudaError_t f = device_fault()) return f;
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() {
  if (const cudaError_t f = device_fault()) return f;
  return last_error;
}

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device != 0)
    return fail(cudaErrorInvalidDevice, "cudaSetDevice: one simulated GPU", nullptr, 0);
  current_device = device;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = current_device;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice, "no such simulated GPU", nullptr, 0);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof(prop->name), "simulated on the host (RINGATTN_CUDA=SIM)");
  prop->totalGlobalMem = kTotalBytes;
  prop->sharedMemPerBlockOptin = 227 << 10;
  prop->multiProcessorCount = 132;
  prop->major = 9;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice, "no such simulated GPU", nullptr, 0);
  if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin)
    return fail(cudaErrorInvalidValue, "device attribute not simulated", nullptr, 0);
  *value = 227 << 10;
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  Registry& r = registry();
  const std::lock_guard<std::mutex> lock(r.mu);
  *total = r.capacity;
  *free = r.capacity - std::min(r.capacity, r.device_bytes);
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  return allocate(p, bytes);
}
// cudaFree waits for the whole device first, as CUDA's does.
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  run_device();
  return release(p);
}
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  return allocate(p, bytes);
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t stream) {
  return release_async(p, stream);
}
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  *p = ::operator new(std::max<size_t>(bytes, 1), std::align_val_t(kAlign), std::nothrow);
  if (!*p) return fail(cudaErrorMemoryAllocation, "out of host memory", nullptr, bytes);
  Registry& r = registry();
  const std::lock_guard<std::mutex> lock(r.mu);
  r.pinned[reinterpret_cast<uintptr_t>(*p)] = bytes;
  return cudaSuccess;
}
// Does not wait for queued copies from or to it (stricter than drivers that synchronise here):
// code frees pinned memory only after waiting for its last copy, as pinned_upload does.
cudaError_t cudaFreeHost(void* p) {
  if (!p) return cudaSuccess;
  Registry& r = registry();
  {
    const std::lock_guard<std::mutex> lock(r.mu);
    if (!r.pinned.erase(reinterpret_cast<uintptr_t>(p)))
      return fail(cudaErrorInvalidValue, "cudaFreeHost of memory cudaMallocHost did not return", p,
                  0);
  }
  ::operator delete(p, std::align_val_t(kAlign));
  return cudaSuccess;
}
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device) {
  static CUmemPoolHandle_st the_pool;
  if (device != 0) return fail(cudaErrorInvalidDevice, "no such simulated GPU", nullptr, 0);
  *pool = &the_pool;
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) {
  return cudaSuccess;
}
// The simulated pool keeps nothing: every free returns its memory (after the quarantine).
cudaError_t cudaMemPoolTrimTo(cudaMemPool_t, size_t) {
  return cudaSuccess;
}
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* p) {
  Registry& r = registry();
  const std::lock_guard<std::mutex> lock(r.mu);
  *attr = cudaPointerAttributes{};
  if (find(r.device, p) != r.device.end()) {
    attr->type = cudaMemoryTypeDevice;
    attr->devicePointer = const_cast<void*>(p);
  } else if (find(r.pinned, p) != r.pinned.end()) {
    attr->type = cudaMemoryTypeHost;
    attr->hostPointer = const_cast<void*>(p);
  }
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return copy(dst, src, bytes, kind, nullptr, true);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  return copy(dst, src, bytes, kind, stream, false);
}
// Queued on the legacy default stream (cudaMemset) or the stream given (cudaMemsetAsync).
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return cudaSuccess;
  if (!device_memory(dst, bytes))
    return fail(cudaErrorInvalidValue, "memset outside device memory", dst, bytes);
  enqueue(stream, "memset", [dst, value, bytes] {
    require_live(dst, bytes, Side::Device, "a memset");
    std::memset(dst, value, bytes);
  });
  return cudaSuccess;
}
cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  return cudaMemsetAsync(dst, value, bytes, nullptr);
}

cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) {
  return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void*, int, size_t) {
  *blocks = 1;
  return cudaSuccess;
}
