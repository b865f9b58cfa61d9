// The host allocator's cache of large blocks (core/host_block_cache.h): reuse, its size rule, and
// the bound on what it holds.
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "core/host_block_cache.h"

using namespace ringattn;

namespace {

constexpr size_t MiB = size_t(1) << 20;

bool aligned64(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 64 == 0;
}

}  // namespace

TEST_CASE("host block cache: a freed large block serves the next request of its size", "[core]") {
  HostBlockCache cache;
  void* a = cache.allocate(4 * MiB);
  REQUIRE(a != nullptr);
  CHECK(aligned64(a));
  std::memset(a, 1, 4 * MiB);
  cache.free(a);
  CHECK(cache.stats().cached == 4 * MiB);
  void* b = cache.allocate(4 * MiB);
  CHECK(b == a);
  CHECK(cache.stats().hits == 1);
  CHECK(cache.stats().misses == 1);
  CHECK(cache.stats().cached == 0);
  CHECK(cache.stats().out == 4 * MiB);
  // A smaller request takes it while it wastes at most a fifth of the block: 3.5 MiB does, 3 MiB
  // does not: a new block, and the cached one is released, as keeping it would hold 7 MiB where
  // at most 4 MiB were ever out.
  cache.free(b);
  void* c = cache.allocate(3 * MiB + MiB / 2);
  CHECK(c == a);
  cache.free(c);
  void* d = cache.allocate(3 * MiB);
  CHECK(cache.stats().hits == 2);
  CHECK(cache.stats().misses == 2);
  CHECK(cache.stats().released == 1);
  CHECK(cache.held_bytes() == 3 * MiB);
  cache.free(d);
  cache.trim();
  CHECK(cache.stats().cached == 0);
  CHECK(cache.held_bytes() == 0);
  CHECK(cache.stats().released == 2);
}

TEST_CASE("host block cache: small blocks are not cached, sizes round to pages", "[core]") {
  HostBlockCache cache;
  void* s = cache.allocate(1000);
  REQUIRE(s != nullptr);
  CHECK(aligned64(s));
  cache.free(s);
  CHECK(cache.held_bytes() == 0);
  CHECK(cache.stats().misses == 0);  // small requests never reach the cache
  void* big = cache.allocate(HostBlockCache::kMinBytes + 1);
  CHECK(cache.stats().out == HostBlockCache::kMinBytes + 4096);
  cache.free(big);
  cache.free(nullptr);  // no-op
  CHECK(cache.stats().cached == HostBlockCache::kMinBytes + 4096);
}

TEST_CASE("host block cache: never holds more than the most ever handed out", "[core]") {
  HostBlockCache cache;
  void* a = cache.allocate(8 * MiB);
  void* b = cache.allocate(8 * MiB);
  CHECK(cache.stats().high_water == 16 * MiB);
  cache.free(a);
  cache.free(b);
  CHECK(cache.held_bytes() == 16 * MiB);
  // 2 MiB fits neither cached block (they would waste 3/4): a new block, and the oldest cached
  // one (a) goes back to the system so that out + cached stays within the high water.
  void* c = cache.allocate(2 * MiB);
  CHECK(cache.stats().released == 1);
  CHECK(cache.held_bytes() == 10 * MiB);
  CHECK(cache.held_bytes() <= cache.stats().high_water);
  void* d = cache.allocate(8 * MiB);
  CHECK(d == b);  // the newer one stayed
  // Growing past the high water raises it; nothing cached is released for that.
  void* e = cache.allocate(32 * MiB);
  CHECK(cache.stats().high_water == 42 * MiB);
  for (void* p : {c, d, e}) cache.free(p);
  CHECK(cache.held_bytes() == 42 * MiB);
  CHECK(cache.stats().out == 0);
  // trim() gives everything back and restarts the high water from what is out.
  void* f = cache.allocate(2 * MiB);
  CHECK(f == c);
  cache.trim();
  CHECK(cache.held_bytes() == 2 * MiB);
  CHECK(cache.stats().high_water == 2 * MiB);
  cache.free(f);
}

TEST_CASE("host block cache: threads allocating and freeing at once", "[core]") {
  HostBlockCache cache;
  std::atomic<bool> failed{false};  // Catch2's assertions are not for other threads
  auto work = [&](unsigned seed) {
    std::vector<void*> mine;
    for (int i = 0; i < 200; ++i) {
      const size_t bytes = (1 + (seed * 7 + unsigned(i) * 13) % 5) * MiB;
      void* p = cache.allocate(bytes);
      if (!p) {
        failed = true;
        break;
      }
      static_cast<unsigned char*>(p)[bytes - 1] = 1;  // the whole request is usable
      mine.push_back(p);
      if (mine.size() > 3) {
        cache.free(mine.front());
        mine.erase(mine.begin());
      }
    }
    for (void* p : mine) cache.free(p);
  };
  std::thread t1(work, 1u), t2(work, 2u);
  t1.join();
  t2.join();
  CHECK_FALSE(failed);
  const HostBlockCache::Stats s = cache.stats();
  CHECK(s.out == 0);
  CHECK(s.hits + s.misses == 400);
  CHECK(s.cached <= s.high_water);
  // Still a working cache afterwards: a block freed now is what the next request of its size
  // gets. How many of the threads' requests hit depends on how they interleave, so it is not
  // asserted: run one after the other (a loaded CI machine did), this size pattern never hits,
  // as the cap at the high water releases each freed block before its size comes again (a model
  // of the policy gives 0 of 400 serialized, 196 interleaved).
  void* a = cache.allocate(2 * MiB);
  REQUIRE(a != nullptr);
  cache.free(a);
  const int64_t hits = cache.stats().hits;
  void* b = cache.allocate(2 * MiB);
  CHECK(b != nullptr);
  CHECK(cache.stats().hits == hits + 1);
  cache.free(b);
}
