// Runs the fused attention kernels' body (core/cuda/fused_attention_body.h) on the CPU, so that
// its indexing, masks, skips, online softmax and gradient sums are tested on machines without a
// GPU, and so that the simulated GPU (RINGATTN_CUDA=SIM, core/cuda_sim/fused_attention.cpp) has
// fused kernels: their tensor-core fragments and inline PTX have no host form, so the simulation's
// fibers cannot run fused_attention.cu itself. Used there and by the tests' emulated device
// (test/emulated_device.cpp), in every build. HostBlock is the body's Block contract on the host:
//   - each_thread / each_warp only queue their phase; sync() runs what was queued since the last
//     one, as a GPU block would between two barriers, in one of three orders (BlockOrder).
//     Forward: phase by phase, threads (warps) ascending. Reverse: the queued phases last to
//     first, threads (warps) descending. Isolated: every (phase, thread or warp) runs on the
//     shared memory as it was when the interval began, and what they wrote is merged afterwards;
//     two of them changing the same byte is an error (a logic_error; a write of the byte's
//     starting value is not seen). The body's contract makes the phases of one sync interval
//     independent (no thread reads there what another writes, no two write the same byte, and the
//     body's phases never pass data to a later phase of the same interval, not even within one
//     thread), so all three orders give the same bits; a missing sync() changes them. Because
//     phases run late, helpers that return before the next sync() capture by value, and a body
//     ends with sync() (run_grid checks that nothing is left queued);
//   - shared memory is readable and writable only while sync() runs the phases (mprotect): code
//     between phases that touches it faults at once. The contract forbids that because on a GPU
//     a thread may still be reading there while another writes the next interval's data, a race
//     that running the code once, after its interval, could not show otherwise;
//   - fragment operands must follow wmma's alignment rules, and bf16 ones lie in the block's
//     shared memory (checked: a logic_error otherwise);
//   - fragments are plain 16 x 16 matrices; mma sums in float32 in k order (tensor cores sum in
//     another order: a tolerance, not bits, separates the GPU from this);
//   - shared memory is fresh pages per block, filled with 0xff bytes (NaN floats, huge
//     integers) so that reading what no phase wrote shows up.
// Blocks of a grid run one after the other (they never share data: each owns its output rows).
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <vector>

#include "core/cuda/fused_attention_body.h"

namespace ringattn::sim {

enum class BlockOrder { Forward, Reverse, Isolated };

class HostBlock {
 public:
  HostBlock(size_t smem_bytes, BlockOrder order) : smem_bytes_(smem_bytes), order_(order) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    bytes_ = (std::max<size_t>(smem_bytes, 1) + page - 1) / page * page;
    mem_ = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem_ == MAP_FAILED) throw std::runtime_error("HostBlock: mmap of shared memory failed");
    std::memset(mem_, 0xff, bytes_);
    protect(PROT_NONE);
  }
  ~HostBlock() { munmap(mem_, bytes_); }
  HostBlock(const HostBlock&) = delete;
  HostBlock& operator=(const HostBlock&) = delete;

  void* smem() { return mem_; }  // page-aligned
  template <typename F>
  void each_thread(F&& f) {
    queued_.push_back({false, std::function<void(int)>(f)});
  }
  template <typename F>
  void each_warp(F&& f) {
    queued_.push_back({true, std::function<void(int)>(f)});
  }
  void sync() {
    protect(PROT_READ | PROT_WRITE);
    running_ = this;
    struct Stop {  // also when a phase throws
      ~Stop() { running_ = nullptr; }
    } stop;
    if (order_ == BlockOrder::Isolated) {
      run_isolated();
    } else {
      const bool reverse = order_ == BlockOrder::Reverse;
      const size_t n = queued_.size();
      for (size_t k = 0; k < n; ++k) {
        const Phase& ph = queued_[reverse ? n - 1 - k : k];
        const int count = ph.warp ? fused::kWarps : fused::kThreads;
        for (int i = 0; i < count; ++i) ph.f(reverse ? count - 1 - i : i);
      }
    }
    queued_.clear();
    protect(PROT_NONE);
  }
  size_t queued() const { return queued_.size(); }

  template <typename T, int Tag>
  struct Frag {
    T x[fused::kFrag][fused::kFrag];
  };
  using A = Frag<uint16_t, 0>;     // left operand, loaded row-major
  using ACol = Frag<uint16_t, 1>;  // left operand, loaded column-major
  using BRow = Frag<uint16_t, 2>;  // right operand, loaded row-major
  using BCol = Frag<uint16_t, 3>;  // right operand, loaded column-major
  using Acc = Frag<float, 4>;

  template <typename T>
  struct PerWarp {
    T v[fused::kWarps];
    T& at(int w) { return v[w]; }
  };

  static void fill(Acc& c, float x) {
    for (auto& row : c.x)
      for (float& e : row) e = x;
  }
  // Element (r, c) of a row-major matrix at p[r * ld + c]; of a column-major one at p[c * ld + r].
  // wmma's rules, checked here so that the emulation refuses what the GPU would not do: pointers
  // 256-bit aligned, leading dimensions a multiple of 16 bytes.
  static void check_operand(const void* p, int ld, size_t elem) {
    if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || (size_t(ld) * elem) % 16 != 0)
      throw std::logic_error("fused attention body: a fragment operand breaks wmma's alignment");
  }
  // bf16 fragments come from the running block's shared memory only: the GPU's DeviceBlock loads
  // them with wmma.load's .shared form (ldmatrix), which cannot read global memory.
  template <int Tag>
  static void load(Frag<uint16_t, Tag>& f, const uint16_t* p, int ld) {
    check_operand(p, ld, sizeof(uint16_t));
    const auto* first = reinterpret_cast<const unsigned char*>(p);
    const auto* last =
        reinterpret_cast<const unsigned char*>(p + (fused::kFrag - 1) * ld + fused::kFrag);
    const auto* base = running_ ? static_cast<const unsigned char*>(running_->mem_) : nullptr;
    if (!base || first < base || last > base + running_->smem_bytes_)
      throw std::logic_error(
          "fused attention body: a bf16 fragment loads from outside shared memory");
    const bool col = Tag == 1 || Tag == 3;
    for (int r = 0; r < fused::kFrag; ++r)
      for (int c = 0; c < fused::kFrag; ++c) f.x[r][c] = col ? p[c * ld + r] : p[r * ld + c];
  }
  static void load(Acc& f, const float* p, int ld) {
    check_operand(p, ld, sizeof(float));
    for (int r = 0; r < fused::kFrag; ++r)
      for (int c = 0; c < fused::kFrag; ++c) f.x[r][c] = p[r * ld + c];
  }
  static void store(float* p, const Acc& f, int ld) {
    check_operand(p, ld, sizeof(float));
    for (int r = 0; r < fused::kFrag; ++r)
      for (int c = 0; c < fused::kFrag; ++c) p[r * ld + c] = f.x[r][c];
  }
  template <int TA, int TB>
  static void mma(Acc& c, const Frag<uint16_t, TA>& a, const Frag<uint16_t, TB>& b) {
    for (int r = 0; r < fused::kFrag; ++r)
      for (int n = 0; n < fused::kFrag; ++n) {
        float s = c.x[r][n];
        for (int k = 0; k < fused::kFrag; ++k) s += widen(a.x[r][k]) * widen(b.x[k][n]);
        c.x[r][n] = s;
      }
  }

 private:
  static float widen(uint16_t h) {
    const uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
  }

  struct Phase {
    bool warp;
    std::function<void(int)> f;
  };
  // BlockOrder::Isolated: each unit (a phase's thread or warp) starts from the interval's
  // shared memory; the bytes it changed are its writes.
  void run_isolated() {
    auto* mem = static_cast<unsigned char*>(mem_);
    const std::vector<unsigned char> start(mem, mem + smem_bytes_);
    std::vector<unsigned char> merged = start;
    std::vector<bool> written(smem_bytes_, false);
    for (const Phase& ph : queued_) {
      const int count = ph.warp ? fused::kWarps : fused::kThreads;
      for (int i = 0; i < count; ++i) {
        std::memcpy(mem, start.data(), smem_bytes_);
        ph.f(i);
        // 64-byte runs first: most of them are unchanged.
        for (size_t run = 0; run < smem_bytes_; run += 64) {
          const size_t end = std::min(run + 64, smem_bytes_);
          if (std::memcmp(mem + run, &start[run], end - run) == 0) continue;
          for (size_t b = run; b < end; ++b) {
            if (mem[b] == start[b]) continue;
            if (written[b])
              throw std::logic_error(
                  "fused attention body: two threads (or warps, or phases) of one sync interval "
                  "write the same shared-memory byte");
            written[b] = true;
            merged[b] = mem[b];
          }
        }
      }
    }
    std::memcpy(mem, merged.data(), smem_bytes_);
  }
  void protect(int prot) {
    if (mprotect(mem_, bytes_, prot) != 0)
      throw std::runtime_error("HostBlock: mprotect of shared memory failed");
  }
  static inline thread_local const HostBlock* running_ = nullptr;  // whose sync() runs phases
  void* mem_ = nullptr;
  size_t bytes_ = 0;       // mapped: whole pages
  size_t smem_bytes_ = 0;  // asked for: what a kernel launch would get
  BlockOrder order_;
  std::vector<Phase> queued_;
};

// The grids of the three kernels, as core/cuda/fused_attention.cu launches them, on host memory.
// Blocks in ascending tile order, or all in descending order (and threads too) under
// BlockOrder::Reverse. (On a GPU the forward and dQ kernels number their query tiles from the last,
// heaviest first; a block's output depends on its tile alone, which running both orders checks.)
template <typename Body>
void run_grid(int64_t tiles, int64_t rows, size_t smem, BlockOrder order, Body body) {
  for (int64_t i = 0; i < tiles * rows; ++i) {
    const int64_t at = order == BlockOrder::Reverse ? tiles * rows - 1 - i : i;
    HostBlock blk(smem, order);
    body(blk, at % tiles, at / tiles);
    if (blk.queued() != 0)
      throw std::logic_error("fused attention body: phases after its last sync");
  }
}

inline int64_t fused_tiles(int64_t n) {
  return (n + fused::kTile - 1) / fused::kTile;
}

// The order the fused kernels' bodies run in, on the emulated device and the simulated GPU
// (HostBlock's BlockOrder); tests set it to compare the orders through the whole backend.
inline BlockOrder& host_block_order() {
  static BlockOrder order = BlockOrder::Forward;
  return order;
}

// The MaxD of the kernels run on the host (as above): 0 for the one fused::with_max_head_dim picks,
// as the launcher does; tests set kMaxHeadDim to run the large kernels on small heads too.
inline int& host_block_max_head_dim() {
  static int max_head_dim = 0;
  return max_head_dim;
}

// f(std::integral_constant<int, MaxD>) for the kernels run on the host for `a`:
// max_head_dim's (when not 0, and if a's head dim fits them), else the launcher's choice.
template <class F>
void with_host_max_head_dim(const fused::Args& a, int max_head_dim, F&& f) {
  fused::with_max_head_dim(max_head_dim ? max_head_dim : a.p.head_dim, [&](auto max_d) {
    if (a.p.head_dim > decltype(max_d)::value)
      throw std::logic_error("fused attention: head dim above the kernels' MaxD");
    f(max_d);
  });
}

inline void run_fused_forward(const fused::Args& a, BlockOrder order = host_block_order(),
                              int max_head_dim = host_block_max_head_dim()) {
  const fused::ForwardSmem sm(nullptr, a.p.head_dim);
  with_host_max_head_dim(a, max_head_dim, [&](auto max_d) {
    constexpr int kMaxD = decltype(max_d)::value;
    run_grid(
        fused_tiles(a.p.sq), a.p.batch * a.p.heads, sm.bytes, order,
        [&](HostBlock& blk, int64_t t, int64_t bh) { fused::forward_block<kMaxD>(blk, a, t, bh); });
  });
}

inline void run_fused_backward(const fused::Args& a, BlockOrder order = host_block_order(),
                               int max_head_dim = host_block_max_head_dim()) {
  with_host_max_head_dim(a, max_head_dim, [&](auto max_d) {
    constexpr int kMaxD = decltype(max_d)::value;
    run_grid(fused_tiles(a.p.sk), a.p.batch * a.p.kv_heads,
             fused::BackwardSmem(nullptr, a.p.head_dim).bytes, order,
             [&](HostBlock& blk, int64_t t, int64_t bhk) {
               fused::backward_dkdv_block<kMaxD>(blk, a, t, bhk);
             });
    run_grid(fused_tiles(a.p.sq), a.p.batch * a.p.heads, fused::DqSmem(nullptr, a.p.head_dim).bytes,
             order, [&](HostBlock& blk, int64_t t, int64_t bh) {
               fused::backward_dq_block<kMaxD>(blk, a, t, bh);
             });
  });
}

}  // namespace ringattn::sim
