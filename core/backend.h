// The backend interface: a small table of operations that the model and the ring code call
// without knowing which device runs them (the ggml idea). The CPU backend (OpenBLAS) always
// exists; the CUDA backend (cuBLAS + kernels) exists when compiled in and a GPU is present.
//
// Conventions: matrices are row-major float32 unless stated; pointers are device pointers of the
// backend's device; every call is ordered on the backend's compute stream (CPU: synchronous).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/allocator.h"
#include "core/attention_tile.h"
#include "core/device.h"

namespace ringattn {

// The per-call constants of one AdamW update, in float64 (model/optim/adamw.h has the formulas):
// m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
// p <- p * decay - lr * (m / bc1) / (sqrt(v / bc2) + eps),  decay = 1 - lr * wd (or 1).
struct AdamWConstants {
  double b1 = 0.9, b2 = 0.95, one_minus_b1 = 0.1, one_minus_b2 = 0.05;
  double bc1 = 1, bc2 = 1;  // bias corrections 1 - beta^t
  double eps = 1e-8, lr = 0, decay = 1;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;  // "cpu (OpenBLAS 0.3.21, 1 thread)", "cuda:0 (H100)"
  Allocator& allocator() { return allocator_for(device()); }

  // C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C. Row-major; lda/ldb/ldc are row strides.
  virtual void gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a,
                    int lda, const float* b, int ldb, float beta, float* c, int ldc) = 0;

  // The same with A and B in bfloat16 (uint16 storage, see core/dtype.h), products accumulated
  // in float32, C float32: the mixed-precision GEMM (cuBLAS: bf16 inputs, 32F compute). The CPU
  // widens A and B to float32 (exact) and runs sgemm, the reference the GPU is checked against.
  virtual void gemm_bf16(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                         const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                         float* c, int ldc) = 0;
  // dst[i] = bfloat16(src[i]), rounded to nearest, ties to even, NaN kept NaN (f32_to_bf16, bit
  // for bit on every backend); and back, exactly.
  virtual void to_bf16(const float* src, uint16_t* dst, int64_t n) = 0;
  virtual void from_bf16(const uint16_t* src, float* dst, int64_t n) = 0;

  // Copies between host and this backend's device (or within one). Synchronous.
  virtual void copy_to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy_from_host(void* dst, const void* host_src, size_t bytes) = 0;
  // Waits for everything queued on this backend.
  virtual void synchronize() = 0;
  // Lets the calling thread queue operations on this backend (CUDA: selects the backend's GPU
  // for the thread). Helper threads that compute (the FSDP group's) call it once at start.
  virtual void bind_thread() {}
  // The native handle of the compute stream every call is ordered on (CUDA: its cudaStream_t),
  // for transports that order their own stream against it with events (the NCCL ring); null on
  // synchronous backends.
  virtual void* native_stream() { return nullptr; }
  // True when every call returns only once its work is done, so the device is idle whenever the
  // host is between calls: the CPU, and a ProfilingBackend, which synchronises after each call.
  // Transports that order themselves against the compute stream with events (NCCL) then wait on
  // the host instead, so that a transfer the compute did not hide shows as time waiting for it,
  // not inside the next operation's time (`ringattn bench train`'s communication share).
  virtual bool calls_complete_on_return() const { return device() == Device::CPU; }
  // Device memory in use as the driver sees it (CUDA: cudaMemGetInfo's total - free: the
  // allocator's pool with its cached blocks, the context, cuBLAS' workspace, NCCL's buffers).
  // 0 on the CPU, whose figure is the allocator's alone.
  virtual size_t device_memory_used() { return 0; }
  // The device's memory as the driver reports it (cudaMemGetInfo's total); 0 on the CPU.
  virtual size_t device_memory_total() { return 0; }
  // For benchmarks: how many blocks of each fused attention kernel (attention.kernel = fused) a
  // multiprocessor runs at once at this head dim, by the driver's occupancy calculator, e.g.
  // "forward 2, dK/dV 2, dQ 2 blocks of 128 threads per SM". Empty where there are no such
  // kernels (the CPU).
  virtual std::string fused_attention_occupancy(int /*head_dim*/) { return {}; }

  // --- attention (see core/attention_tile.h) ---------------------------------------------------
  // Sets m = kMaskedScore, l = 0, acc = 0 for a shard of `batch x sq` queries.
  virtual void attention_forward_init(const AttentionForwardState& st, int64_t batch, int64_t sq,
                                      int heads, int head_dim) = 0;
  // Folds one key/value block into the running state. Workspace comes from the allocator, so a
  // whole-shard tile (vanilla) shows its S x S scores in the peak bytes.
  virtual void attention_forward_block(const AttentionTileProblem& p,
                                       const AttentionForwardState& st,
                                       AttentionTileStats* stats = nullptr) = 0;
  // o = acc / l, lse = m + log(l); a row that saw no unmasked key gets o = 0 and lse = -inf.
  virtual void attention_forward_finish(const AttentionForwardState& st, float* o, float* lse,
                                        int64_t batch, int64_t sq, int heads, int head_dim) = 0;
  // delta[b,h,i] = sum_d dout[b,i,h,d] * o[b,i,h,d].
  virtual void attention_backward_delta(const float* dout, const float* o, float* delta,
                                        int64_t batch, int64_t sq, int heads, int head_dim) = 0;
  // Accumulates this block's contributions to dq, dk, dv (P recomputed from q, k and lse).
  virtual void attention_backward_block(const AttentionTileProblem& p,
                                        const AttentionBackwardArgs& a,
                                        AttentionTileStats* stats = nullptr) = 0;

  // --- transformer layers (float32; CPU versions in core/cpu/cpu_layers.h) ---------------------
  // Layouts: a token row is `dim` contiguous floats; tokens are the B*S rows of a shard in local
  // order. Every "+=" output accumulates into what the caller holds (gradients accumulate over
  // layers, chunks and micro-batches); every other output is overwritten.
  //
  // out[n, dim] = table[tokens[n], :]; table [vocab, dim]; tokens int32 in [0, vocab).
  // Tokens outside the vocabulary are the caller's to rule out (the trainer checks its batches
  // on the host, as for cross_entropy_rows): the CPU raises an Error naming the row; a GPU kernel
  // writes a zero row for such a token (and backward skips it) rather than read or write outside
  // the table, since raising would cost a host wait.
  virtual void embedding_forward(const int32_t* tokens, int64_t n, const float* table,
                                 int64_t vocab, int64_t dim, float* out) = 0;
  // The same lookup from a bfloat16 table, each row widened to float32 (exact) as it is copied:
  // a bf16 model reads the rows it needs, never a float32 copy of the whole table.
  virtual void embedding_forward_bf16(const int32_t* tokens, int64_t n, const uint16_t* table,
                                      int64_t vocab, int64_t dim, float* out) = 0;
  // dtable[tokens[n], :] += dout[n, :] (a token seen twice gets both rows, added in token order
  // on every backend: bitwise the same sums).
  virtual void embedding_backward(const int32_t* tokens, int64_t n, const float* dout,
                                  int64_t vocab, int64_t dim, float* dtable) = 0;
  // RMSNorm over rows of x [rows, dim]: inv_rms[r] = 1 / sqrt(mean(x[r]^2) + eps) (float32,
  // saved for backward), y[r, :] = (x[r, :] * inv_rms[r]) * w. y may alias x.
  virtual void rmsnorm_forward(const float* x, const float* w, int64_t rows, int64_t dim, float eps,
                               float* y, float* inv_rms) = 0;
  // With g = dy * w: dx[r, :] += inv_rms[r] * (g - x[r, :] * inv_rms[r]^2 * mean(g * x[r, :]));
  // dw[:] += sum_r dy[r, :] * x[r, :] * inv_rms[r]. dx must not alias x or dy.
  virtual void rmsnorm_backward(const float* x, const float* w, const float* inv_rms,
                                const float* dy, int64_t rows, int64_t dim, float* dx,
                                float* dw) = 0;
  // Rotary embedding in place on x [B, S, H, D] (D even), Hugging Face LLaMA "rotate half":
  // for i < D/2 the pair (x[i], x[i + D/2]) turns by angle positions[s] * theta^(-2i/D);
  // positions [S] are GLOBAL token positions, in host memory like the attention API's. Angles are
  // computed in double (positions reach millions in long contexts). Backward turns the gradient by
  // -angle (the rotation's transpose).
  virtual void rope_forward(float* x, int64_t batch, int64_t seq, int heads, int head_dim,
                            const int64_t* positions, float theta) = 0;
  virtual void rope_backward(float* dx, int64_t batch, int64_t seq, int heads, int head_dim,
                             const int64_t* positions, float theta) = 0;
  // SwiGLU, elementwise over n values: out = silu(gate) * up, silu(g) = g / (1 + exp(-g)).
  // out may alias gate or up.
  virtual void swiglu_forward(const float* gate, const float* up, int64_t n, float* out) = 0;
  // dgate = dout * up * silu'(gate), dup = dout * silu(gate); dgate may alias gate, dup up.
  virtual void swiglu_backward(const float* gate, const float* up, const float* dout, int64_t n,
                               float* dgate, float* dup) = 0;
  // Softmax cross-entropy over logits [rows, vocab] with targets [rows] (int32; -1 = ignored) and
  // per-row loss weights [rows] (null: every row weighs 1), queued like the other calls (no host
  // wait): row_loss[r] (float64, this backend's memory) receives weight[r] *
  // (logsumexp(logits[r]) - logits[r, target[r]]), 0 for ignored rows. When dlogits is not null
  // it receives (softmax(logits[r]) - onehot(target[r])) * weight[r] * grad_scale (0 for ignored
  // rows); it may alias logits. When correct is not null, correct[r] = 1 if the row is not
  // ignored and its first maximal logit is the target, else 0.
  // Targets outside [-1, vocab) are the caller's to rule out (the trainer checks its batches on
  // the host): the CPU raises an Error naming the row, a GPU kernel treats such a row as ignored
  // rather than read outside the row (it cannot raise without a host wait).
  virtual void cross_entropy_rows(const float* logits, const int32_t* targets, const float* weights,
                                  int64_t rows, int64_t vocab, float grad_scale, float* dlogits,
                                  uint8_t* correct, double* row_loss) = 0;
  // The same, checked and summed: targets outside [-1, vocab) raise an Error naming the row on
  // every backend; returns sum_r row_loss[r], added in row order on the host (a synchronising
  // result). For tests and tools; the trainer's loss loop uses cross_entropy_rows.
  double cross_entropy(const float* logits, const int32_t* targets, const float* weights,
                       int64_t rows, int64_t vocab, float grad_scale, float* dlogits,
                       uint8_t* correct);
  // Elementwise helpers over n floats: y += alpha * x; x *= alpha; x = value.
  virtual void axpy(int64_t n, float alpha, const float* x, float* y) = 0;
  virtual void scale(float* x, int64_t n, float alpha) = 0;
  virtual void fill(float* x, int64_t n, float value) = 0;

  // --- memory and optimizer --------------------------------------------------------------------
  // dst = src: `bytes` within this backend's device memory, ordered with the other operations
  // (on CUDA: queued on the compute stream, unlike the allocator's synchronous copies). The two
  // ranges must not overlap.
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  // sum_i x[i]^2 in float64 (a synchronising result). CPU: sequential in index order; CUDA: a
  // tree of float64 partial sums (same value up to float64 rounding).
  virtual double sum_squares(const float* x, int64_t n) = 0;
  // x[i] = float32(double(x[i]) * s): gradient clipping's scaling, exact in float64.
  virtual void scale_f64(float* x, int64_t n, double s) = 0;
  // One AdamW update of n elements in place (params, m, v written; grads read), per element in
  // float64 with one rounding to float32 per stored value, without fused multiply-adds, so the
  // CPU and CUDA results are bitwise equal.
  virtual void adamw_update(const AdamWConstants& k, float* params, const float* grads, float* m,
                            float* v, int64_t n) = 0;
};

// The CPU backend. set_cpu_threads sets the OpenBLAS and OpenMP thread counts (0 leaves them);
// cpu_threads() is that count (OpenBLAS's own until set). At startup it is set from the
// environment: cpu_threads_from_environment() reads OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS,
// capped at the machine's processors (0 when neither is set).
Backend& cpu_backend();
void set_cpu_threads(int threads);
int cpu_threads();
int cpu_threads_from_environment();

// True when the CUDA backend is compiled into this build.
bool cuda_compiled();
// True when NCCL is compiled into this build.
bool nccl_compiled();
// True when the CUDA backend runs on the simulated GPU (-DRINGATTN_CUDA=SIM, core/cuda_sim): the
// host's cores, at host speed.
bool cuda_simulated();
// Number of usable GPUs; 0 when CUDA is not compiled in or no driver/device is present
// (never an error: "CUDA driver version is insufficient" means no device).
int cuda_device_count();
// The CUDA backend on the given device; raises an Error when no GPU can be used.
Backend& cuda_backend(int device_index);

}  // namespace ringattn
