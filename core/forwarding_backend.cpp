#include "core/forwarding_backend.h"

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

class ForwardingBackend::Call {
 public:
  Call(ForwardingBackend& b, OpCategory c) : b_(b), c_(c), began_(b.begin(c)) {}
  ~Call() { b_.end(c_, began_); }
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;

 private:
  ForwardingBackend& b_;
  OpCategory c_;
  int64_t began_;
};

void ForwardingBackend::gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                             const float* a, int lda, const float* b, int ldb, float beta, float* c,
                             int ldc) {
  const Call call(*this, OpCategory::Gemm);
  inner_.gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void ForwardingBackend::gemm_bf16(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                                  const uint16_t* a, int lda, const uint16_t* b, int ldb,
                                  float beta, float* c, int ldc) {
  const Call call(*this, OpCategory::Gemm);
  inner_.gemm_bf16(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void ForwardingBackend::to_bf16(const float* src, uint16_t* dst, int64_t n) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.to_bf16(src, dst, n);
}

void ForwardingBackend::from_bf16(const uint16_t* src, float* dst, int64_t n) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.from_bf16(src, dst, n);
}

void ForwardingBackend::copy_to_host(void* host_dst, const void* src, size_t bytes) {
  const Call call(*this, OpCategory::Copy);
  inner_.copy_to_host(host_dst, src, bytes);
}

void ForwardingBackend::copy_from_host(void* dst, const void* host_src, size_t bytes) {
  const Call call(*this, OpCategory::Copy);
  inner_.copy_from_host(dst, host_src, bytes);
}

void ForwardingBackend::synchronize() {
  const Call call(*this, OpCategory::Copy);
  inner_.synchronize();
}

void ForwardingBackend::attention_forward_init(const AttentionForwardState& st, int64_t batch,
                                               int64_t sq, int heads, int head_dim) {
  const Call call(*this, OpCategory::Attention);
  inner_.attention_forward_init(st, batch, sq, heads, head_dim);
}

void ForwardingBackend::attention_forward_block(const AttentionTileProblem& p,
                                                const AttentionForwardState& st,
                                                AttentionTileStats* stats) {
  const Call call(*this, OpCategory::Attention);
  inner_.attention_forward_block(p, st, stats);
}

void ForwardingBackend::attention_forward_finish(const AttentionForwardState& st, float* o,
                                                 float* lse, int64_t batch, int64_t sq, int heads,
                                                 int head_dim) {
  const Call call(*this, OpCategory::Attention);
  inner_.attention_forward_finish(st, o, lse, batch, sq, heads, head_dim);
}

void ForwardingBackend::attention_backward_delta(const float* dout, const float* o, float* delta,
                                                 int64_t batch, int64_t sq, int heads,
                                                 int head_dim) {
  const Call call(*this, OpCategory::Attention);
  inner_.attention_backward_delta(dout, o, delta, batch, sq, heads, head_dim);
}

void ForwardingBackend::attention_backward_block(const AttentionTileProblem& p,
                                                 const AttentionBackwardArgs& a,
                                                 AttentionTileStats* stats) {
  const Call call(*this, OpCategory::Attention);
  inner_.attention_backward_block(p, a, stats);
}

void ForwardingBackend::embedding_forward(const int32_t* tokens, int64_t n, const float* table,
                                          int64_t vocab, int64_t dim, float* out) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.embedding_forward(tokens, n, table, vocab, dim, out);
}

void ForwardingBackend::embedding_forward_bf16(const int32_t* tokens, int64_t n,
                                               const uint16_t* table, int64_t vocab, int64_t dim,
                                               float* out) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.embedding_forward_bf16(tokens, n, table, vocab, dim, out);
}

void ForwardingBackend::embedding_backward(const int32_t* tokens, int64_t n, const float* dout,
                                           int64_t vocab, int64_t dim, float* dtable) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.embedding_backward(tokens, n, dout, vocab, dim, dtable);
}

void ForwardingBackend::rmsnorm_forward(const float* x, const float* w, int64_t rows, int64_t dim,
                                        float eps, float* y, float* inv_rms) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.rmsnorm_forward(x, w, rows, dim, eps, y, inv_rms);
}

void ForwardingBackend::rmsnorm_backward(const float* x, const float* w, const float* inv_rms,
                                         const float* dy, int64_t rows, int64_t dim, float* dx,
                                         float* dw) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.rmsnorm_backward(x, w, inv_rms, dy, rows, dim, dx, dw);
}

void ForwardingBackend::rope_forward(float* x, int64_t batch, int64_t seq, int heads, int head_dim,
                                     const int64_t* positions, float theta) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.rope_forward(x, batch, seq, heads, head_dim, positions, theta);
}

void ForwardingBackend::rope_backward(float* dx, int64_t batch, int64_t seq, int heads,
                                      int head_dim, const int64_t* positions, float theta) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.rope_backward(dx, batch, seq, heads, head_dim, positions, theta);
}

void ForwardingBackend::swiglu_forward(const float* gate, const float* up, int64_t n, float* out) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.swiglu_forward(gate, up, n, out);
}

void ForwardingBackend::swiglu_backward(const float* gate, const float* up, const float* dout,
                                        int64_t n, float* dgate, float* dup) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.swiglu_backward(gate, up, dout, n, dgate, dup);
}

void ForwardingBackend::cross_entropy_rows(const float* logits, const int32_t* targets,
                                           const float* weights, int64_t rows, int64_t vocab,
                                           float grad_scale, float* dlogits, uint8_t* correct,
                                           double* row_loss) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.cross_entropy_rows(logits, targets, weights, rows, vocab, grad_scale, dlogits, correct,
                            row_loss);
}

void ForwardingBackend::axpy(int64_t n, float alpha, const float* x, float* y) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.axpy(n, alpha, x, y);
}

void ForwardingBackend::scale(float* x, int64_t n, float alpha) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.scale(x, n, alpha);
}

void ForwardingBackend::fill(float* x, int64_t n, float value) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.fill(x, n, value);
}

void ForwardingBackend::copy(void* dst, const void* src, size_t bytes) {
  const Call call(*this, OpCategory::Copy);
  inner_.copy(dst, src, bytes);
}

double ForwardingBackend::sum_squares(const float* x, int64_t n) {
  const Call call(*this, OpCategory::Elementwise);
  return inner_.sum_squares(x, n);
}

void ForwardingBackend::scale_f64(float* x, int64_t n, double f) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.scale_f64(x, n, f);
}

void ForwardingBackend::adamw_update(const AdamWConstants& k, float* params, const float* grads,
                                     float* m, float* v, int64_t n) {
  const Call call(*this, OpCategory::Elementwise);
  inner_.adamw_update(k, params, grads, m, v, n);
}

}  // namespace ringattn
