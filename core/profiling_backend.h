// ProfilingBackend: a decorator over another Backend that forwards every operation unchanged and
// adds its wall time to a category (GEMM, attention, elementwise layer ops, copies). It is how
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

#include "core/backend.h"

namespace ringattn {

enum class OpCategory { Gemm, Attention, Elementwise, Copy };
inline constexpr int kOpCategories = 4;
const char* op_category_name(OpCategory c);  // "gemm", "attention", "elementwise", "copy"

// Accumulated time and calls per category since construction or the last reset().
struct OpProfile {
  double seconds[kOpCategories] = {};
  int64_t calls[kOpCategories] = {};
  double gemm_flops = 0;  // 2 m n k summed over gemm() calls

  double at(OpCategory c) const { return seconds[int(c)]; }
  double total_seconds() const;
  OpProfile operator-(const OpProfile& o) const;
};

class ProfilingBackend final : public Backend {
 public:
  // `inner` must outlive this object.
  explicit ProfilingBackend(Backend& inner) : inner_(inner) {}

  OpProfile profile() const;
  void reset();
  // True when the figures are wall times of the operations themselves: always, since calls on
  // an asynchronous backend are followed by a synchronize (see above).
  bool is_exact() const { return true; }
  // True when every call ends with inner().synchronize() (the backend is not the CPU's).
  bool synchronizes() const { return inner_.device() != Device::CPU; }
  Backend& inner() { return inner_; }

  Device device() const override { return inner_.device(); }
  std::string name() const override { return "profiling(" + inner_.name() + ")"; }
  std::string fused_attention_occupancy(int head_dim) override {
    return inner_.fused_attention_occupancy(head_dim);
  }

  void gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda,
            const float* b, int ldb, float beta, float* c, int ldc) override;
  void gemm_bf16(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const uint16_t* a,
                 int lda, const uint16_t* b, int ldb, float beta, float* c, int ldc) override;
  void to_bf16(const float* src, uint16_t* dst, int64_t n) override;
  void from_bf16(const uint16_t* src, float* dst, int64_t n) override;
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override;
  void copy_from_host(void* dst, const void* host_src, size_t bytes) override;
  void synchronize() override;
  size_t device_memory_used() override { return inner_.device_memory_used(); }
  void bind_thread() override { inner_.bind_thread(); }
  void* native_stream() override { return inner_.native_stream(); }
  bool calls_complete_on_return() const override { return true; }  // see synchronizes()

  void attention_forward_init(const AttentionForwardState& st, int64_t batch, int64_t sq, int heads,
                              int head_dim) override;
  void attention_forward_block(const AttentionTileProblem& p, const AttentionForwardState& st,
                               AttentionTileStats* stats = nullptr) override;
  void attention_forward_finish(const AttentionForwardState& st, float* o, float* lse,
                                int64_t batch, int64_t sq, int heads, int head_dim) override;
  void attention_backward_delta(const float* dout, const float* o, float* delta, int64_t batch,
                                int64_t sq, int heads, int head_dim) override;
  void attention_backward_block(const AttentionTileProblem& p, const AttentionBackwardArgs& a,
                                AttentionTileStats* stats = nullptr) override;

  void embedding_forward(const int32_t* tokens, int64_t n, const float* table, int64_t vocab,
                         int64_t dim, float* out) override;
  void embedding_forward_bf16(const int32_t* tokens, int64_t n, const uint16_t* table,
                              int64_t vocab, int64_t dim, float* out) override;
  void embedding_backward(const int32_t* tokens, int64_t n, const float* dout, int64_t vocab,
                          int64_t dim, float* dtable) override;
  void rmsnorm_forward(const float* x, const float* w, int64_t rows, int64_t dim, float eps,
                       float* y, float* inv_rms) override;
  void rmsnorm_backward(const float* x, const float* w, const float* inv_rms, const float* dy,
                        int64_t rows, int64_t dim, float* dx, float* dw) override;
  void rope_forward(float* x, int64_t batch, int64_t seq, int heads, int head_dim,
                    const int64_t* positions, float theta) override;
  void rope_backward(float* dx, int64_t batch, int64_t seq, int heads, int head_dim,
                     const int64_t* positions, float theta) override;
  void swiglu_forward(const float* gate, const float* up, int64_t n, float* out) override;
  void swiglu_backward(const float* gate, const float* up, const float* dout, int64_t n,
                       float* dgate, float* dup) override;
  void cross_entropy_rows(const float* logits, const int32_t* targets, const float* weights,
                          int64_t rows, int64_t vocab, float grad_scale, float* dlogits,
                          uint8_t* correct, double* row_loss) override;
  void axpy(int64_t n, float alpha, const float* x, float* y) override;
  void scale(float* x, int64_t n, float alpha) override;
  void fill(float* x, int64_t n, float value) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  double sum_squares(const float* x, int64_t n) override;
  void scale_f64(float* x, int64_t n, double s) override;
  void adamw_update(const AdamWConstants& k, float* params, const float* grads, float* m, float* v,
                    int64_t n) override;

 private:
  class Scope;  // times one call into a category

  Backend& inner_;
  std::atomic<double> seconds_[kOpCategories] = {};
  std::atomic<int64_t> calls_[kOpCategories] = {};
  std::atomic<double> gemm_flops_{0};
};

}  // namespace ringattn
