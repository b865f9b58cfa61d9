// ProfilingBackend: a decorator over another Backend that forwards every operation unchanged and
// adds its wall time to a category (GEMM, attention, elementwise layer ops, copies; the
// categories and the forwarding are ForwardingBackend's). It is how
// `ringattn bench train` says where a training step's time goes, without touching the model.
//
// Exactness: CPU operations are synchronous, so the time between entering and leaving a call is
// the operation's time, and categories never overlap (the wrapped backend calls its own kernels
// directly, not back through the decorator). The attention category therefore includes the GEMMs
// inside the attention tiles; the GEMM category is the model's projections, FFN and LM head.
// On an asynchronous backend (CUDA) a call only enqueues work, so timing it on the host would
// measure launch overhead: there the decorator synchronises the backend at the end of every call,
// which makes each figure the operation's own time again, at the price of the overlap between
// queued kernels (a benchmark setting; events around each call would keep the overlap).
//
// Thread-safe: counters are atomics, as several threads may compute at once.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "core/forwarding_backend.h"

namespace ringattn {

// Accumulated time and calls per category since construction or the last reset().
struct OpProfile {
  double seconds[kOpCategories] = {};
  int64_t calls[kOpCategories] = {};
  double gemm_flops = 0;  // 2 m n k summed over gemm() calls

  double at(OpCategory c) const { return seconds[int(c)]; }
  double total_seconds() const;
  OpProfile operator-(const OpProfile& o) const;
};

class ProfilingBackend final : public ForwardingBackend {
 public:
  // `inner` must outlive this object.
  explicit ProfilingBackend(Backend& inner) : ForwardingBackend(inner) {}

  OpProfile profile() const;
  void reset();
  // True when the figures are wall times of the operations themselves: always, since calls on
  // an asynchronous backend are followed by a synchronize (see above).
  bool is_exact() const { return true; }
  // True when every call ends with inner().synchronize() (the backend is not the CPU's).
  bool synchronizes() const { return inner_.device() != Device::CPU; }

  std::string name() const override { return "profiling(" + inner_.name() + ")"; }
  bool calls_complete_on_return() const override { return true; }  // see synchronizes()
  // Also count their flops.
  void gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda,
            const float* b, int ldb, float beta, float* c, int ldc) override;
  void gemm_bf16(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const uint16_t* a,
                 int lda, const uint16_t* b, int ldb, float beta, float* c, int ldc) override;

 private:
  int64_t begin(OpCategory c) override;
  void end(OpCategory c, int64_t began) noexcept override;

  std::atomic<double> seconds_[kOpCategories] = {};
  std::atomic<int64_t> calls_[kOpCategories] = {};
  std::atomic<double> gemm_flops_{0};
};

}  // namespace ringattn
