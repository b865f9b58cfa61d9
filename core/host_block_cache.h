// HostBlockCache: keeps large freed host blocks for the next request of about their size.
//
// Why: a training step frees and requests the same large buffers over and over (every layer's
// activations, every loss chunk's logits, the CPU's bf16 GEMM widening). glibc serves requests
// above its mmap threshold (at most 32 MiB) with fresh pages and returns them on free, so each
// request paid for the kernel zero-filling every page again: 11 % of a 125M bf16 training step's
// CPU time went to clear_page alone (perf, session 10). A CUDA stream-ordered pool caches for the
// same reason.
//
// Policy:
//  * Only blocks of at least kMinBytes are cached (smaller ones glibc's heap recycles itself).
//  * A request takes the smallest cached block that fits and is at most 5/4 of the request, so a
//    reused block never wastes more than a fifth of itself.
//  * The cache never makes the process hold more than the most it ever had handed out at once
//    (held = out + cached <= high water): when a new block would push past that, the least
//    recently freed blocks are released first. Memory held thus stays at the program's own peak
//    of (block-rounded) requests, which the allocator's peak bytes report.
//  * Under AddressSanitizer a cached block is poisoned, so a use after free is still reported.
// Thread-safe. The allocator's accounting (live and peak bytes) is unaffected: it counts requests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <mutex>
#include <unordered_map>

namespace ringattn {

class HostBlockCache {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;
  HostBlockCache() = default;
  ~HostBlockCache();  // releases the cached blocks (blocks still out are the owners' to free)
  HostBlockCache(const HostBlockCache&) = delete;
  HostBlockCache& operator=(const HostBlockCache&) = delete;

  // A 64-byte aligned block of at least `bytes`, or null when the system has no memory.
  void* allocate(size_t bytes);
  // Takes back a block from allocate(): cached when large, released otherwise.
  void free(void* ptr);

  struct Stats {
    size_t out = 0;         // bytes of large blocks handed out (their rounded sizes)
    size_t cached = 0;      // bytes of large blocks kept for reuse
    size_t high_water = 0;  // the most `out` has ever been
    int64_t hits = 0, misses = 0, released = 0;
  };
  Stats stats() const;
  // out + cached: the large blocks this cache holds from the system.
  size_t held_bytes() const;
  // Releases every cached block, and restarts the high water from what is out now (a program
  // whose phases differ, a benchmark after its calibration, holds only what comes next).
  void trim();

 private:
  struct Block {
    void* ptr;
    size_t bytes;
  };
  using Lru = std::list<Block>;  // least recently freed first
  // Releases the least recently freed blocks until at most `limit` bytes are cached.
  void release_cached_above_locked(size_t limit);

  mutable std::mutex mu_;
  std::unordered_map<void*, size_t> out_blocks_;  // large blocks handed out, rounded sizes
  Lru lru_;
  std::multimap<size_t, Lru::iterator> by_size_;
  std::unordered_map<void*, std::multimap<size_t, Lru::iterator>::iterator> index_;
  Stats stats_;
};

}  // namespace ringattn
