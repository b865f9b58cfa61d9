#include "test/emulated_device.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>

#include "core/error.h"

namespace ringattn::test {

namespace {

constexpr uintptr_t kTag = uintptr_t(1) << 62;

template <typename T>
T* tag(T* p) {
  return p ? reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(p) + kTag) : p;
}

class EmulatedAllocator final : public Allocator {
 public:
  EmulatedAllocator() : Allocator(Device::CUDA, "emulated-cuda") {}

  void copy_to_host(void* host_dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(untag(host_dst), untag(src), bytes);
  }
  void copy_from_host(void* dst, const void* host_src, size_t bytes) override {
    if (bytes) std::memcpy(untag(dst), untag(host_src), bytes);
  }
  void copy_within(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memmove(untag(dst), untag(src), bytes);
  }
  void zero(void* dst, size_t bytes) override {
    if (bytes) std::memset(untag(dst), 0, bytes);
  }

 protected:
  void* raw_allocate(size_t bytes) override {
    if (bytes > std::numeric_limits<size_t>::max() - 63) return nullptr;
    return tag(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
  }
  void raw_free(void* ptr) override { std::free(untag(ptr)); }
};

AttentionTileProblem untag_problem(const AttentionTileProblem& p) {
  AttentionTileProblem u = p;
  u.q_pos = untag(p.q_pos);
  u.k_pos = untag(p.k_pos);
  u.q_seg = untag(p.q_seg);
  u.k_seg = untag(p.k_seg);
  u.q = untag(p.q);
  u.k = untag(p.k);
  u.v = untag(p.v);
  return u;
}

AttentionForwardState untag_state(const AttentionForwardState& s) {
  return {untag(s.acc), untag(s.m), untag(s.l)};
}

AttentionBackwardArgs untag_args(const AttentionBackwardArgs& a) {
  return {untag(a.dout), untag(a.lse), untag(a.delta), untag(a.dq), untag(a.dk), untag(a.dv)};
}

// Every operation is the CPU backend's, on untagged pointers.
class EmulatedBackend final : public Backend {
 public:
  Device device() const override { return Device::CUDA; }
  std::string name() const override { return "emulated-cuda (CPU kernels, tagged pointers)"; }

  void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda,
            const float* b, int ldb, float beta, float* c, int ldc) override {
    cpu().gemm(ta, tb, m, n, k, alpha, untag(a), lda, untag(b), ldb, beta, untag(c), ldc);
  }
  void gemm_bf16(bool ta, bool tb, int m, int n, int k, float alpha, const uint16_t* a, int lda,
                 const uint16_t* b, int ldb, float beta, float* c, int ldc) override {
    cpu().gemm_bf16(ta, tb, m, n, k, alpha, untag(a), lda, untag(b), ldb, beta, untag(c), ldc);
  }
  void to_bf16(const float* src, uint16_t* dst, int64_t n) override {
    cpu().to_bf16(untag(src), untag(dst), n);
  }
  void from_bf16(const uint16_t* src, float* dst, int64_t n) override {
    cpu().from_bf16(untag(src), untag(dst), n);
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    cpu().copy_to_host(untag(dst), untag(src), bytes);
  }
  void copy_from_host(void* dst, const void* src, size_t bytes) override {
    cpu().copy_from_host(untag(dst), untag(src), bytes);
  }
  void synchronize() override {}

  void attention_forward_init(const AttentionForwardState& st, int64_t batch, int64_t sq, int heads,
                              int head_dim) override {
    cpu().attention_forward_init(untag_state(st), batch, sq, heads, head_dim);
  }
  void attention_forward_block(const AttentionTileProblem& p, const AttentionForwardState& st,
                               AttentionTileStats* stats) override {
    cpu().attention_forward_block(untag_problem(p), untag_state(st), stats);
  }
  void attention_forward_finish(const AttentionForwardState& st, float* o, float* lse,
                                int64_t batch, int64_t sq, int heads, int head_dim) override {
    cpu().attention_forward_finish(untag_state(st), untag(o), untag(lse), batch, sq, heads,
                                   head_dim);
  }
  void attention_backward_delta(const float* dout, const float* o, float* delta, int64_t batch,
                                int64_t sq, int heads, int head_dim) override {
    cpu().attention_backward_delta(untag(dout), untag(o), untag(delta), batch, sq, heads, head_dim);
  }
  void attention_backward_block(const AttentionTileProblem& p, const AttentionBackwardArgs& a,
                                AttentionTileStats* stats) override {
    cpu().attention_backward_block(untag_problem(p), untag_args(a), stats);
  }

  void embedding_forward(const int32_t* tokens, int64_t n, const float* table, int64_t vocab,
                         int64_t dim, float* out) override {
    cpu().embedding_forward(untag(tokens), n, untag(table), vocab, dim, untag(out));
  }
  void embedding_backward(const int32_t* tokens, int64_t n, const float* dout, int64_t vocab,
                          int64_t dim, float* dtable) override {
    cpu().embedding_backward(untag(tokens), n, untag(dout), vocab, dim, untag(dtable));
  }
  void rmsnorm_forward(const float* x, const float* w, int64_t rows, int64_t dim, float eps,
                       float* y, float* inv_rms) override {
    cpu().rmsnorm_forward(untag(x), untag(w), rows, dim, eps, untag(y), untag(inv_rms));
  }
  void rmsnorm_backward(const float* x, const float* w, const float* inv_rms, const float* dy,
                        int64_t rows, int64_t dim, float* dx, float* dw) override {
    cpu().rmsnorm_backward(untag(x), untag(w), untag(inv_rms), untag(dy), rows, dim, untag(dx),
                           untag(dw));
  }
  void rope_forward(float* x, int64_t batch, int64_t seq, int heads, int head_dim,
                    const int64_t* positions, float theta) override {
    cpu().rope_forward(untag(x), batch, seq, heads, head_dim, untag(positions), theta);
  }
  void rope_backward(float* dx, int64_t batch, int64_t seq, int heads, int head_dim,
                     const int64_t* positions, float theta) override {
    cpu().rope_backward(untag(dx), batch, seq, heads, head_dim, untag(positions), theta);
  }
  void swiglu_forward(const float* gate, const float* up, int64_t n, float* out) override {
    cpu().swiglu_forward(untag(gate), untag(up), n, untag(out));
  }
  void swiglu_backward(const float* gate, const float* up, const float* dout, int64_t n,
                       float* dgate, float* dup) override {
    cpu().swiglu_backward(untag(gate), untag(up), untag(dout), n, untag(dgate), untag(dup));
  }
  double cross_entropy(const float* logits, const int32_t* targets, const float* weights,
                       int64_t rows, int64_t vocab, float grad_scale, float* dlogits,
                       uint8_t* correct) override {
    return cpu().cross_entropy(untag(logits), untag(targets), untag(weights), rows, vocab,
                               grad_scale, untag(dlogits), untag(correct));
  }
  void axpy(int64_t n, float alpha, const float* x, float* y) override {
    cpu().axpy(n, alpha, untag(x), untag(y));
  }
  void scale(float* x, int64_t n, float alpha) override { cpu().scale(untag(x), n, alpha); }
  void fill(float* x, int64_t n, float value) override { cpu().fill(untag(x), n, value); }
  void copy(void* dst, const void* src, size_t bytes) override {
    cpu().copy(untag(dst), untag(src), bytes);
  }
  double sum_squares(const float* x, int64_t n) override { return cpu().sum_squares(untag(x), n); }
  void scale_f64(float* x, int64_t n, double s) override { cpu().scale_f64(untag(x), n, s); }
  void adamw_update(const AdamWConstants& k, float* params, const float* grads, float* m, float* v,
                    int64_t n) override {
    cpu().adamw_update(k, untag(params), untag(grads), untag(m), untag(v), n);
  }

 private:
  static Backend& cpu() { return cpu_backend(); }
};

}  // namespace

bool is_tagged(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & kTag) != 0;
}

DeviceUnderTest device_under_test() {
  if (cuda_device_count() > 0) return {&cuda_backend(0), false};
  static EmulatedAllocator allocator;
  static EmulatedBackend backend;
  static std::once_flag installed;
  std::call_once(installed, [] {
    register_allocator(Device::CUDA, &allocator);
    std::printf(
        "[device] no usable GPU: these tests run on the emulated device (tagged pointers, "
        "CPU kernels; results must equal the CPU's bitwise)\n");
  });
  return {&backend, true};
}

}  // namespace ringattn::test
