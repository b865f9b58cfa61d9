// ForwardingBackend: a Backend that passes every operation on, unchanged, to another one
// (`inner`), and calls two hooks around each: begin(category) before it and end(category, ...)
// after it, also when the operation throws. A decorator overrides the hooks, or single
// operations (calling ForwardingBackend's to pass them on): ProfilingBackend times operations by
// category this way, and tests inject failures. What the inner backend's operations call
// internally does not come back through the decorator.
#pragma once

#include <cstdint>
#include <string>

#include "core/backend.h"

namespace ringattn {

// The kind of each operation, as the hooks see it (and `ringattn bench train` reports time).
enum class OpCategory { Gemm, Attention, Elementwise, Copy };
inline constexpr int kOpCategories = 4;
const char* op_category_name(OpCategory c);  // "gemm", "attention", "elementwise", "copy"

class ForwardingBackend : public Backend {
 public:
  // `inner` must outlive this object.
  explicit ForwardingBackend(Backend& inner) : inner_(inner) {}
  Backend& inner() { return inner_; }

  Device device() const override { return inner_.device(); }
  std::string name() const override { return "forwarding(" + inner_.name() + ")"; }
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
  size_t device_memory_total() override { return inner_.device_memory_total(); }
  void bind_thread() override { inner_.bind_thread(); }
  void* native_stream() override { return inner_.native_stream(); }
  bool calls_complete_on_return() const override { return inner_.calls_complete_on_return(); }

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

 protected:
  // Around every operation but the queries above: begin() before it (when begin() throws, the
  // operation does not run and end() is not called); end() after it, with what begin() returned,
  // also when the operation threw. Called from whichever threads compute.
  virtual int64_t begin(OpCategory) { return 0; }
  virtual void end(OpCategory, int64_t /*began*/) noexcept {}

  Backend& inner_;

 private:
  class Call;  // begin() and end() around one operation
};

}  // namespace ringattn
