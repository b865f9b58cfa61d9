#include "core/host_block_cache.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define RA_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define RA_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define RA_POISON(p, n) ((void)(p), (void)(n))
#define RA_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace ringattn {

namespace {

constexpr size_t kAlign = 64, kPage = 4096;

size_t round_up(size_t bytes, size_t to) {
  return (bytes + to - 1) / to * to;
}

}  // namespace

HostBlockCache::~HostBlockCache() {
  trim();
}

void* HostBlockCache::allocate(size_t bytes) {
  // Rounding up would wrap to a tiny size and "succeed".
  if (bytes > std::numeric_limits<size_t>::max() - kPage) return nullptr;
  if (round_up(bytes, kAlign) < kMinBytes)
    return std::aligned_alloc(kAlign, std::max(kAlign, round_up(bytes, kAlign)));
  const size_t rounded = round_up(bytes, kPage);
  std::lock_guard<std::mutex> lock(mu_);
  // The bookkeeping's own nodes may fail to allocate: every path enters the block among those out
  // before anything else changes, so such a failure leaves the cache as it was (and the request
  // fails as out of memory does, with null).
  // The smallest cached block that fits, if it wastes at most a fifth of itself.
  if (auto it = by_size_.lower_bound(rounded);
      it != by_size_.end() && it->first <= rounded + rounded / 4) {
    const Block b = *it->second;
    try {
      out_blocks_.emplace(b.ptr, b.bytes);
    } catch (...) {
      return nullptr;
    }
    lru_.erase(it->second);
    by_size_.erase(it);
    index_.erase(b.ptr);
    stats_.cached -= b.bytes;
    stats_.out += b.bytes;
    stats_.high_water = std::max(stats_.high_water, stats_.out);
    ++stats_.hits;
    RA_UNPOISON(b.ptr, b.bytes);
    return b.ptr;
  }
  ++stats_.misses;
  // A new block: first release the oldest cached ones that would hold the process above its
  // high water.
  const size_t out_after = stats_.out + rounded;
  release_cached_above_locked(std::max(stats_.high_water, out_after) - out_after);
  void* p = std::aligned_alloc(kAlign, rounded);
  if (!p && !lru_.empty()) {  // what is cached may be what the system lacks
    release_cached_above_locked(0);
    p = std::aligned_alloc(kAlign, rounded);
  }
  if (!p) return nullptr;
  try {
    out_blocks_.emplace(p, rounded);
  } catch (...) {
    std::free(p);
    return nullptr;
  }
  stats_.out = out_after;
  stats_.high_water = std::max(stats_.high_water, stats_.out);
  return p;
}

void HostBlockCache::free(void* ptr) {
  if (!ptr) return;
  std::unique_lock<std::mutex> lock(mu_);
  const auto it = out_blocks_.find(ptr);
  if (it == out_blocks_.end()) {
    // A block freed twice would otherwise be released while the cache still hands it out.
    if (index_.count(ptr)) {
      std::fprintf(stderr, "ringattn: host block %p freed twice\n", ptr);
      std::abort();
    }
    lock.unlock();
    std::free(ptr);  // a small block
    return;
  }
  const size_t bytes = it->second;
  // Runs in destructors: when the bookkeeping cannot grow, the block goes back to the system.
  bool cached = false;
  try {
    lru_.push_back(Block{ptr, bytes});
    try {
      const auto by_size = by_size_.emplace(bytes, std::prev(lru_.end()));
      try {
        index_.emplace(ptr, by_size);
        cached = true;
      } catch (...) {
        by_size_.erase(by_size);
        throw;
      }
    } catch (...) {
      lru_.pop_back();
      throw;
    }
  } catch (...) {
  }
  out_blocks_.erase(it);
  stats_.out -= bytes;
  if (!cached) {
    std::free(ptr);
    return;
  }
  stats_.cached += bytes;
  RA_POISON(ptr, bytes);
}

void HostBlockCache::release_cached_above_locked(size_t limit) {
  while (!lru_.empty() && stats_.cached > limit) {
    const Block b = lru_.front();
    lru_.pop_front();
    const auto ix = index_.find(b.ptr);
    by_size_.erase(ix->second);
    index_.erase(ix);
    stats_.cached -= b.bytes;
    ++stats_.released;
    RA_UNPOISON(b.ptr, b.bytes);
    std::free(b.ptr);
  }
}

HostBlockCache::Stats HostBlockCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

size_t HostBlockCache::held_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_.out + stats_.cached;
}

void HostBlockCache::trim() {
  std::lock_guard<std::mutex> lock(mu_);
  release_cached_above_locked(0);
  stats_.high_water = stats_.out;
}

}  // namespace ringattn
