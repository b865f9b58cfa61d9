// Per-backend allocators that count live and peak bytes and enforce an optional limit.
//
// Peak bytes are the memory figure every benchmark reports: what the program asked for, not what
// the OS or driver rounded it to. Every tensor and every buffer of the project allocates through
// here, so the accounting is complete. Thread-safe (the ring's progress thread may free buffers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/device.h"

namespace ringattn {

class Allocator {
 public:
  Allocator(Device device, std::string name) : device_(device), name_(std::move(name)) {}
  virtual ~Allocator() = default;
  Allocator(const Allocator&) = delete;
  Allocator& operator=(const Allocator&) = delete;

  // Allocates `bytes` (64-byte aligned). `what` names the request in the error raised when the
  // limit would be exceeded: "memory limit exceeded on cpu: request 'attention scores' of 1.0 GiB
  // with 3.2 GiB live, limit 4.0 GiB".
  void* allocate(size_t bytes, std::string_view what);
  void deallocate(void* ptr, size_t bytes);

  size_t live_bytes() const;
  size_t peak_bytes() const;
  void reset_peak();  // peak := live (and the composition is taken afresh)

  // What the peak is made of, for a user asking where the memory went (`ringattn bench train`).
  // Off by default: while on, every live block is kept with its request's name, and each new
  // peak records the live bytes per name, digits folded ("layer.N full params": every layer's);
  // blocks allocated before tracking was turned on are one part of their own.
  struct PeakPart {
    std::string what;
    size_t bytes = 0;
    int64_t blocks = 0;
  };
  void track_peak_composition(bool on);
  // Largest first; empty when tracking is off or nothing was allocated since it was turned on.
  std::vector<PeakPart> peak_composition() const;
  // Memory this allocator holds from the system for large blocks, reused or not: the host
  // allocator's block cache (core/host_block_cache.h); 0 where the allocator keeps no such figure
  // (a device's pool: Backend::device_memory_used asks the driver instead).
  virtual size_t held_bytes() const { return 0; }
  // Gives cached blocks back to the system (HostBlockCache::trim); a no-op elsewhere.
  virtual void release_cached() {}
  // 0 means no limit.
  void set_limit(size_t bytes);
  size_t limit() const;

  Device device() const { return device_; }
  const std::string& name() const { return name_; }

  // Moving bytes in and out of this allocator's memory, for code that does not know the device
  // (tensors, checkpoints, host-staged communication). The copies are synchronous: each waits
  // for the work already queued on the device before it copies, and returns when the copy is
  // complete. zero() is not: on a device it is queued on the compute stream like a kernel (a
  // gradient buffer zeroed in every backward layer must not stall the device's queue), so later
  // work on that stream, the copies above and anything ordered after the stream (NCCL's `ready`
  // event, a synchronize) see zeros. Safe to call from any thread (the FSDP helper thread stages
  // through them). The base versions are for host memory (memcpy, memset).
  virtual void copy_to_host(void* host_dst, const void* src, size_t bytes);
  virtual void copy_from_host(void* dst, const void* host_src, size_t bytes);
  virtual void copy_within(void* dst, const void* src, size_t bytes);
  virtual void zero(void* dst, size_t bytes);

 protected:
  // Null when the memory is not there (the allocator then raises "out of memory", naming the
  // request and adding out_of_memory_detail()).
  virtual void* raw_allocate(size_t bytes) = 0;
  virtual void raw_free(void* ptr) = 0;
  // What the device itself says of its memory, for the out-of-memory message ("" for none).
  virtual std::string out_of_memory_detail() const { return {}; }

 private:
  Device device_;
  std::string name_;
  mutable std::mutex mu_;
  size_t live_ = 0, peak_ = 0, limit_ = 0;
  // Composition tracking (guarded by mu_): bytes and blocks per folded name, counted when a
  // block is reserved; each live block's name (to uncount it when freed); the peak's copy.
  bool compose_ = false;
  uint64_t generation_ = 1;  // bumped by track_peak_composition: in-flight requests of an
                             // earlier table are not entered in the new one
  std::unordered_map<std::string, PeakPart> totals_;
  std::unordered_map<const void*, std::pair<std::string, size_t>> named_;
  size_t named_live_ = 0;
  std::vector<PeakPart> at_peak_;
  void record_peak_locked();
  void uncount_locked(const std::string& folded, size_t bytes);
};

// The process-wide allocator of a device. The CPU one always exists; the CUDA one exists when the
// CUDA backend is compiled in and a device is present (otherwise this raises an Error).
Allocator& allocator_for(Device device);
// Used by the CUDA backend to install its allocator (and by the tests' emulated device, see
// test/support/emulated_device.h, when no GPU is present). nullptr uninstalls.
void register_allocator(Device device, Allocator* allocator);

// "1.50 GiB", "12.0 MiB", "512 B".
std::string format_bytes(size_t bytes);
// Lifts an allocator's limit for its lifetime, restoring it however the scope ends: for work that
// is not the run's (a GEMM speed probe) or that must see past the limit (a benchmark's trials).
class LimitLifted {
 public:
  explicit LimitLifted(Allocator& alloc) : alloc_(alloc), saved_(alloc.limit()) {
    alloc_.set_limit(0);
  }
  ~LimitLifted() { alloc_.set_limit(saved_); }
  LimitLifted(const LimitLifted&) = delete;
  LimitLifted& operator=(const LimitLifted&) = delete;

 private:
  Allocator& alloc_;
  size_t saved_;
};

// memory_limit_gb (GiB, as in configs) to bytes; <= 0 means no limit.
size_t gib_to_bytes(double gib);

}  // namespace ringattn
