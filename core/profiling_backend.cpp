#include "core/profiling_backend.h"

#include <chrono>

namespace ringattn {

const char* op_category_name(OpCategory c) {
  switch (c) {
    case OpCategory::Gemm:
      return "gemm";
    case OpCategory::Attention:
      return "attention";
    case OpCategory::Elementwise:
      return "elementwise";
    case OpCategory::Copy:
      return "copy";
  }
  return "?";
}

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

// RAII: the call's wall time goes to its category even when the operation throws.
class ProfilingBackend::Scope {
 public:
  Scope(ProfilingBackend& b, OpCategory c)
      : b_(b), c_(int(c)), t0_(std::chrono::steady_clock::now()) {}
  ~Scope() {
    // An asynchronous backend only queued the work: wait for it, so the time is the operation's.
    if (b_.synchronizes()) {
      try {
        b_.inner_.synchronize();
      } catch (...) {  // a destructor cannot report; the next call on the backend will
      }
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    b_.seconds_[c_].fetch_add(s, std::memory_order_relaxed);
    b_.calls_[c_].fetch_add(1, std::memory_order_relaxed);
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  ProfilingBackend& b_;
  int c_;
  std::chrono::steady_clock::time_point t0_;
};

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
  Scope s(*this, OpCategory::Gemm);
  inner_.gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void ProfilingBackend::gemm_bf16(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                                 const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                                 float* c, int ldc) {
  gemm_flops_.fetch_add(2.0 * m * n * double(k), std::memory_order_relaxed);
  Scope s(*this, OpCategory::Gemm);
  inner_.gemm_bf16(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void ProfilingBackend::to_bf16(const float* src, uint16_t* dst, int64_t n) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.to_bf16(src, dst, n);
}

void ProfilingBackend::from_bf16(const uint16_t* src, float* dst, int64_t n) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.from_bf16(src, dst, n);
}

void ProfilingBackend::copy_to_host(void* host_dst, const void* src, size_t bytes) {
  Scope s(*this, OpCategory::Copy);
  inner_.copy_to_host(host_dst, src, bytes);
}

void ProfilingBackend::copy_from_host(void* dst, const void* host_src, size_t bytes) {
  Scope s(*this, OpCategory::Copy);
  inner_.copy_from_host(dst, host_src, bytes);
}

void ProfilingBackend::synchronize() {
  Scope s(*this, OpCategory::Copy);
  inner_.synchronize();
}

void ProfilingBackend::attention_forward_init(const AttentionForwardState& st, int64_t batch,
                                              int64_t sq, int heads, int head_dim) {
  Scope s(*this, OpCategory::Attention);
  inner_.attention_forward_init(st, batch, sq, heads, head_dim);
}

void ProfilingBackend::attention_forward_block(const AttentionTileProblem& p,
                                               const AttentionForwardState& st,
                                               AttentionTileStats* stats) {
  Scope s(*this, OpCategory::Attention);
  inner_.attention_forward_block(p, st, stats);
}

void ProfilingBackend::attention_forward_finish(const AttentionForwardState& st, float* o,
                                                float* lse, int64_t batch, int64_t sq, int heads,
                                                int head_dim) {
  Scope s(*this, OpCategory::Attention);
  inner_.attention_forward_finish(st, o, lse, batch, sq, heads, head_dim);
}

void ProfilingBackend::attention_backward_delta(const float* dout, const float* o, float* delta,
                                                int64_t batch, int64_t sq, int heads,
                                                int head_dim) {
  Scope s(*this, OpCategory::Attention);
  inner_.attention_backward_delta(dout, o, delta, batch, sq, heads, head_dim);
}

void ProfilingBackend::attention_backward_block(const AttentionTileProblem& p,
                                                const AttentionBackwardArgs& a,
                                                AttentionTileStats* stats) {
  Scope s(*this, OpCategory::Attention);
  inner_.attention_backward_block(p, a, stats);
}

void ProfilingBackend::embedding_forward(const int32_t* tokens, int64_t n, const float* table,
                                         int64_t vocab, int64_t dim, float* out) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.embedding_forward(tokens, n, table, vocab, dim, out);
}

void ProfilingBackend::embedding_forward_bf16(const int32_t* tokens, int64_t n,
                                              const uint16_t* table, int64_t vocab, int64_t dim,
                                              float* out) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.embedding_forward_bf16(tokens, n, table, vocab, dim, out);
}

void ProfilingBackend::embedding_backward(const int32_t* tokens, int64_t n, const float* dout,
                                          int64_t vocab, int64_t dim, float* dtable) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.embedding_backward(tokens, n, dout, vocab, dim, dtable);
}

void ProfilingBackend::rmsnorm_forward(const float* x, const float* w, int64_t rows, int64_t dim,
                                       float eps, float* y, float* inv_rms) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.rmsnorm_forward(x, w, rows, dim, eps, y, inv_rms);
}

void ProfilingBackend::rmsnorm_backward(const float* x, const float* w, const float* inv_rms,
                                        const float* dy, int64_t rows, int64_t dim, float* dx,
                                        float* dw) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.rmsnorm_backward(x, w, inv_rms, dy, rows, dim, dx, dw);
}

void ProfilingBackend::rope_forward(float* x, int64_t batch, int64_t seq, int heads, int head_dim,
                                    const int64_t* positions, float theta) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.rope_forward(x, batch, seq, heads, head_dim, positions, theta);
}

void ProfilingBackend::rope_backward(float* dx, int64_t batch, int64_t seq, int heads, int head_dim,
                                     const int64_t* positions, float theta) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.rope_backward(dx, batch, seq, heads, head_dim, positions, theta);
}

void ProfilingBackend::swiglu_forward(const float* gate, const float* up, int64_t n, float* out) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.swiglu_forward(gate, up, n, out);
}

void ProfilingBackend::swiglu_backward(const float* gate, const float* up, const float* dout,
                                       int64_t n, float* dgate, float* dup) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.swiglu_backward(gate, up, dout, n, dgate, dup);
}

void ProfilingBackend::cross_entropy_rows(const float* logits, const int32_t* targets,
                                          const float* weights, int64_t rows, int64_t vocab,
                                          float grad_scale, float* dlogits, uint8_t* correct,
                                          double* row_loss) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.cross_entropy_rows(logits, targets, weights, rows, vocab, grad_scale, dlogits, correct,
                            row_loss);
}

void ProfilingBackend::axpy(int64_t n, float alpha, const float* x, float* y) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.axpy(n, alpha, x, y);
}

void ProfilingBackend::scale(float* x, int64_t n, float alpha) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.scale(x, n, alpha);
}

void ProfilingBackend::fill(float* x, int64_t n, float value) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.fill(x, n, value);
}

void ProfilingBackend::copy(void* dst, const void* src, size_t bytes) {
  Scope s(*this, OpCategory::Copy);
  inner_.copy(dst, src, bytes);
}

double ProfilingBackend::sum_squares(const float* x, int64_t n) {
  Scope s(*this, OpCategory::Elementwise);
  return inner_.sum_squares(x, n);
}

void ProfilingBackend::scale_f64(float* x, int64_t n, double f) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.scale_f64(x, n, f);
}

void ProfilingBackend::adamw_update(const AdamWConstants& k, float* params, const float* grads,
                                    float* m, float* v, int64_t n) {
  Scope s(*this, OpCategory::Elementwise);
  inner_.adamw_update(k, params, grads, m, v, n);
}

}  // namespace ringattn
