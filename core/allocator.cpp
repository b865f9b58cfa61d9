#include "core/allocator.h"

#include <cmath>

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#include "core/error.h"
#include "core/host_block_cache.h"

namespace ringattn {

namespace {

// "layer.12 full params" -> "layer.N full params": one row for every layer's. Digits that follow a
// letter are part of a word and kept ("bf16").
std::string fold_digits(const std::string& s) {
  std::string out;
  bool in_number = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool digit = c >= '0' && c <= '9';
    if (digit && !in_number && i > 0 && std::isalpha(static_cast<unsigned char>(s[i - 1]))) {
      out += c;  // a word's digits: copied, and so are the rest of them
      while (i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '9') out += s[++i];
      continue;
    }
    if (!digit)
      out += c;
    else if (!in_number)
      out += 'N';
    in_number = digit;
  }
  return out;
}

}  // namespace

void* Allocator::allocate(size_t bytes, std::string_view what) {
  if (bytes == 0) return nullptr;
  std::string folded;  // the composition's name of this block, when tracking
  uint64_t generation = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Written so that sizes near SIZE_MAX (from overflowed arithmetic upstream) cannot wrap.
    if (bytes > std::numeric_limits<size_t>::max() - live_) {
      RA_FAIL("out of memory on {}: request '{}' of {} cannot be satisfied with {} live", name_,
              what, format_bytes(bytes), format_bytes(live_));
    }
    if (limit_ != 0 && (live_ > limit_ || bytes > limit_ - live_)) {
      RA_FAIL("memory limit exceeded on {}: request '{}' of {} with {} live, limit {}", name_, what,
              format_bytes(bytes), format_bytes(live_), format_bytes(limit_));
    }
    live_ += bytes;
    if (compose_) {
      // Counted under its name now, with the bytes, so a peak it makes is named at once.
      folded = fold_digits(std::string(what));
      PeakPart& part = totals_[folded];
      part.bytes += bytes;
      ++part.blocks;
      named_live_ += bytes;
      generation = generation_;
    }
    if (live_ > peak_) {
      peak_ = live_;
      if (compose_) record_peak_locked();
    }
  }
  // Takes the reservation back (and out of the composition) when the allocation fails.
  auto undo = [&] {
    live_ -= bytes;
    if (generation != 0 && generation == generation_) uncount_locked(folded, bytes);
  };
  void* p = nullptr;
  try {
    p = raw_allocate(bytes);
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    undo();
    throw;
  }
  if (!p) {
    const std::string detail = out_of_memory_detail();  // outside the lock: it may ask the driver
    std::lock_guard<std::mutex> lock(mu_);
    undo();
    RA_FAIL("out of memory on {}: request '{}' of {} failed with {} live{}", name_, what,
            format_bytes(bytes), format_bytes(live_), detail.empty() ? "" : "; " + detail);
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (generation != 0 && generation == generation_) named_[p] = {std::move(folded), bytes};
  return p;
}

void Allocator::deallocate(void* ptr, size_t bytes) {
  if (!ptr) return;
  {
    // Before the block goes back: once freed, its address may be handed out again (to another
    // thread) and must not find this block's entry.
    std::lock_guard<std::mutex> lock(mu_);
    live_ -= bytes;
    if (auto it = named_.find(ptr); it != named_.end()) {
      uncount_locked(it->second.first, it->second.second);
      named_.erase(it);
    }
  }
  raw_free(ptr);
}

void Allocator::uncount_locked(const std::string& folded, size_t bytes) {
  auto it = totals_.find(folded);
  if (it == totals_.end()) return;
  it->second.bytes -= bytes;
  if (--it->second.blocks == 0) totals_.erase(it);
  named_live_ -= bytes;
}

void Allocator::record_peak_locked() {
  at_peak_.clear();
  for (const auto& [what, part] : totals_) {
    at_peak_.push_back(part);
    at_peak_.back().what = what.empty() ? "(unnamed)" : what;
  }
  if (live_ > named_live_)  // blocks from before tracking was turned on
    at_peak_.push_back(PeakPart{"(allocated before tracking started)", live_ - named_live_, 0});
  std::sort(at_peak_.begin(), at_peak_.end(), [](const PeakPart& a, const PeakPart& b) {
    return a.bytes != b.bytes ? a.bytes > b.bytes : a.what < b.what;
  });
}

void Allocator::track_peak_composition(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  compose_ = on;
  ++generation_;  // allocations in flight from before do not enter the new tables
  totals_.clear();
  named_.clear();
  named_live_ = 0;
  at_peak_.clear();
}

std::vector<Allocator::PeakPart> Allocator::peak_composition() const {
  std::lock_guard<std::mutex> lock(mu_);
  return at_peak_;
}

void Allocator::copy_to_host(void* host_dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(host_dst, src, bytes);
}
void Allocator::copy_from_host(void* dst, const void* host_src, size_t bytes) {
  if (bytes) std::memcpy(dst, host_src, bytes);
}
void Allocator::copy_within(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memmove(dst, src, bytes);
}
void Allocator::zero(void* dst, size_t bytes) {
  if (bytes) std::memset(dst, 0, bytes);
}

size_t Allocator::live_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return live_;
}
size_t Allocator::peak_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peak_;
}
void Allocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  peak_ = live_;
  if (compose_) record_peak_locked();  // the composition of the new (current) peak
}
void Allocator::set_limit(size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  limit_ = bytes;
}
size_t Allocator::limit() const {
  std::lock_guard<std::mutex> lock(mu_);
  return limit_;
}

namespace {

// Host memory: large blocks go through a cache (core/host_block_cache.h says why).
class CpuAllocator final : public Allocator {
 public:
  CpuAllocator() : Allocator(Device::CPU, "cpu") {}
  size_t held_bytes() const override { return cache_.held_bytes(); }
  void release_cached() override { cache_.trim(); }

 protected:
  void* raw_allocate(size_t bytes) override { return cache_.allocate(bytes); }
  void raw_free(void* ptr) override { cache_.free(ptr); }

 private:
  HostBlockCache cache_;
};

Allocator* g_cuda_allocator = nullptr;

}  // namespace

Allocator& allocator_for(Device device) {
  if (device == Device::CPU) {
    // Never destroyed: a buffer freed late at exit (a helper thread's, a static's) must still
    // find its block cache. Its blocks stay reachable, so leak checkers do not report them.
    static CpuAllocator* cpu = new CpuAllocator;
    return *cpu;
  }
  RA_CHECK(g_cuda_allocator != nullptr,
           "no CUDA allocator: the CUDA backend is not compiled in or no GPU is present");
  return *g_cuda_allocator;
}

void register_allocator(Device device, Allocator* allocator) {
  RA_CHECK(device == Device::CUDA, "only the CUDA allocator can be registered");
  g_cuda_allocator = allocator;
}

std::string format_bytes(size_t bytes) {
  const double b = double(bytes);
  if (b >= 1024.0 * 1024 * 1024) return fmt::format("{:.2f} GiB", b / (1024.0 * 1024 * 1024));
  if (b >= 1024.0 * 1024) return fmt::format("{:.1f} MiB", b / (1024.0 * 1024));
  if (b >= 1024.0) return fmt::format("{:.1f} KiB", b / 1024.0);
  return fmt::format("{} B", bytes);
}

size_t gib_to_bytes(double gib) {
  if (!(gib > 0)) return 0;
  // Rounded up: a positive limit below one byte (5e-10) is a limit of one byte, not none.
  return size_t(std::ceil(gib * 1024.0 * 1024.0 * 1024.0));
}

}  // namespace ringattn
