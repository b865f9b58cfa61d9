#include "core/profiling_backend.h"

#include <chrono>

namespace ringattn {

double OpProfile::total_seconds() const {
  double s = 0;
  for (double x : seconds) s += x;
  return s;
}

OpProfile OpProfile::operator-(const OpProfile& o) const {
  OpProfile d;
  for (int i = 0; i < kOpCategories; ++i) {
    d.seconds[i] = seconds[i] - o.seconds[i];
    d.calls[i] = calls[i] - o.calls[i];
  }
  d.gemm_flops = gemm_flops - o.gemm_flops;
  return d;
}

namespace {
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

// The call's wall time goes to its category, also when the operation threw.
int64_t ProfilingBackend::begin(OpCategory) {
  return now_ns();
}

void ProfilingBackend::end(OpCategory c, int64_t began) noexcept {
  // An asynchronous backend only queued the work: wait for it, so the time is the operation's.
  if (synchronizes()) {
    try {
      inner_.synchronize();
    } catch (...) {  // end() cannot report; the next call on the backend will
    }
  }
  seconds_[int(c)].fetch_add(double(now_ns() - began) * 1e-9, std::memory_order_relaxed);
  calls_[int(c)].fetch_add(1, std::memory_order_relaxed);
}

OpProfile ProfilingBackend::profile() const {
  OpProfile p;
  for (int i = 0; i < kOpCategories; ++i) {
    p.seconds[i] = seconds_[i].load(std::memory_order_relaxed);
    p.calls[i] = calls_[i].load(std::memory_order_relaxed);
  }
  p.gemm_flops = gemm_flops_.load(std::memory_order_relaxed);
  return p;
}

void ProfilingBackend::reset() {
  for (int i = 0; i < kOpCategories; ++i) {
    seconds_[i].store(0, std::memory_order_relaxed);
    calls_[i].store(0, std::memory_order_relaxed);
  }
  gemm_flops_.store(0, std::memory_order_relaxed);
}

void ProfilingBackend::gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                            const float* a, int lda, const float* b, int ldb, float beta, float* c,
                            int ldc) {
  gemm_flops_.fetch_add(2.0 * m * n * double(k), std::memory_order_relaxed);
  ForwardingBackend::gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void ProfilingBackend::gemm_bf16(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                                 const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                                 float* c, int ldc) {
  gemm_flops_.fetch_add(2.0 * m * n * double(k), std::memory_order_relaxed);
  ForwardingBackend::gemm_bf16(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace ringattn
