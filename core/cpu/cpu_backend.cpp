// CPU backend: OpenBLAS for GEMMs, plain loops elsewhere. Synchronous.
#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <thread>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/backend.h"
#include "core/cpu/cpu_attention.h"
#include "core/cpu/cpu_layers.h"
#include "core/cpu/cpu_optim.h"
#include "core/error.h"

namespace ringattn {

namespace {

std::atomic<int> g_cpu_threads{0};  // set_cpu_threads' count; 0 until set

// The OpenMP build of OpenBLAS sizes each GEMM's team from the calling thread's OpenMP setting,
// which set_cpu_threads changed on its own thread only: a GEMM from another thread (a helper, a
// queue drained elsewhere) would use every core. Cheap: a thread-local read per call.
void match_thread_count() {
#ifdef _OPENMP
  const int n = g_cpu_threads.load(std::memory_order_relaxed);
  if (n > 0 && omp_get_max_threads() != n) omp_set_num_threads(n);
#endif
}

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::CPU; }
  std::string name() const override {
    // openblas_get_parallel: 0 sequential, 1 pthreads, 2 OpenMP (the build CMake prefers).
    const int par = openblas_get_parallel();
    return fmt::format("cpu ({}; {}{} thread{})", openblas_get_config(),
                       par == 2   ? "threaded by OpenMP, "
                       : par == 1 ? "threaded by pthreads, "
                                  : "",
                       cpu_threads(), cpu_threads() == 1 ? "" : "s");
  }
  void bind_thread() override { match_thread_count(); }

  void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda,
            const float* b, int ldb, float beta, float* c, int ldc) override {
    if (m == 0 || n == 0) return;
    match_thread_count();
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
                k, alpha, a, lda, b, ldb, beta, c, ldc);
  }

  void gemm_bf16(bool ta, bool tb, int m, int n, int k, float alpha, const uint16_t* a, int lda,
                 const uint16_t* b, int ldb, float beta, float* c, int ldc) override {
    match_thread_count();
    cpu::gemm_bf16(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  void to_bf16(const float* src, uint16_t* dst, int64_t n) override { cpu::to_bf16(src, dst, n); }
  void from_bf16(const uint16_t* src, float* dst, int64_t n) override {
    cpu::from_bf16(src, dst, n);
  }

  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void copy_from_host(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void synchronize() override {}

  void attention_forward_init(const AttentionForwardState& st, int64_t batch, int64_t sq, int heads,
                              int head_dim) override {
    cpu::attention_forward_init(st, batch, sq, heads, head_dim);
  }
  void attention_forward_block(const AttentionTileProblem& p, const AttentionForwardState& st,
                               AttentionTileStats* stats) override {
    cpu::attention_forward_block(p, st, stats);
  }
  void attention_forward_finish(const AttentionForwardState& st, float* o, float* lse,
                                int64_t batch, int64_t sq, int heads, int head_dim) override {
    cpu::attention_forward_finish(st, o, lse, batch, sq, heads, head_dim);
  }
  void attention_backward_delta(const float* dout, const float* o, float* delta, int64_t batch,
                                int64_t sq, int heads, int head_dim) override {
    cpu::attention_backward_delta(dout, o, delta, batch, sq, heads, head_dim);
  }
  void attention_backward_block(const AttentionTileProblem& p, const AttentionBackwardArgs& a,
                                AttentionTileStats* stats) override {
    cpu::attention_backward_block(p, a, stats);
  }

  void embedding_forward(const int32_t* tokens, int64_t n, const float* table, int64_t vocab,
                         int64_t dim, float* out) override {
    cpu::embedding_forward(tokens, n, table, vocab, dim, out);
  }
  void embedding_forward_bf16(const int32_t* tokens, int64_t n, const uint16_t* table,
                              int64_t vocab, int64_t dim, float* out) override {
    cpu::embedding_forward_bf16(tokens, n, table, vocab, dim, out);
  }
  void embedding_backward(const int32_t* tokens, int64_t n, const float* dout, int64_t vocab,
                          int64_t dim, float* dtable) override {
    cpu::embedding_backward(tokens, n, dout, vocab, dim, dtable);
  }
  void rmsnorm_forward(const float* x, const float* w, int64_t rows, int64_t dim, float eps,
                       float* y, float* inv_rms) override {
    cpu::rmsnorm_forward(x, w, rows, dim, eps, y, inv_rms);
  }
  void rmsnorm_backward(const float* x, const float* w, const float* inv_rms, const float* dy,
                        int64_t rows, int64_t dim, float* dx, float* dw) override {
    cpu::rmsnorm_backward(x, w, inv_rms, dy, rows, dim, dx, dw);
  }
  void rope_forward(float* x, int64_t batch, int64_t seq, int heads, int head_dim,
                    const int64_t* positions, float theta) override {
    cpu::rope_forward(x, batch, seq, heads, head_dim, positions, theta);
  }
  void rope_backward(float* dx, int64_t batch, int64_t seq, int heads, int head_dim,
                     const int64_t* positions, float theta) override {
    cpu::rope_backward(dx, batch, seq, heads, head_dim, positions, theta);
  }
  void swiglu_forward(const float* gate, const float* up, int64_t n, float* out) override {
    cpu::swiglu_forward(gate, up, n, out);
  }
  void swiglu_backward(const float* gate, const float* up, const float* dout, int64_t n,
                       float* dgate, float* dup) override {
    cpu::swiglu_backward(gate, up, dout, n, dgate, dup);
  }
  void cross_entropy_rows(const float* logits, const int32_t* targets, const float* weights,
                          int64_t rows, int64_t vocab, float grad_scale, float* dlogits,
                          uint8_t* correct, double* row_loss) override {
    cpu::cross_entropy_rows(logits, targets, weights, rows, vocab, grad_scale, dlogits, correct,
                            row_loss);
  }
  void axpy(int64_t n, float alpha, const float* x, float* y) override {
    cpu::axpy(n, alpha, x, y);
  }
  void scale(float* x, int64_t n, float alpha) override { cpu::scale(x, n, alpha); }
  void fill(float* x, int64_t n, float value) override { cpu::fill(x, n, value); }

  void copy(void* dst, const void* src, size_t bytes) override { cpu::copy(dst, src, bytes); }
  double sum_squares(const float* x, int64_t n) override { return cpu::sum_squares(x, n); }
  void scale_f64(float* x, int64_t n, double s) override { cpu::scale_f64(x, n, s); }
  void adamw_update(const AdamWConstants& k, float* params, const float* grads, float* m, float* v,
                    int64_t n) override {
    cpu::adamw_update(k, params, grads, m, v, n);
  }
};

}  // namespace

Backend& cpu_backend() {
  static CpuBackend backend;
  return backend;
}

// The attention kernels parallelise over tiles with OpenMP and call single-threaded sgemm inside;
// plain GEMMs use OpenBLAS's own threads. Both follow this one setting, kept here: the OpenMP
// build of OpenBLAS rewrites its own count (openblas_get_num_threads) from the calling thread's
// OpenMP setting on every call, so a GEMM on another thread would change it for everyone.
void set_cpu_threads(int threads) {
  if (threads <= 0) return;
  g_cpu_threads.store(threads);
  openblas_set_num_threads(threads);
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
}

int cpu_threads() {
  const int n = g_cpu_threads.load();
  return n > 0 ? n : openblas_get_num_threads();
}

// OPENBLAS_NUM_THREADS is how users and the scripts give each rank its threads (1 when several
// ranks share the cores). The pthread OpenBLAS reads it; the OpenMP build (CMakeLists.txt
// prefers it) follows OpenMP's count at every call instead, OMP_NUM_THREADS or else every core,
// so 4 ranks on 2 cores ran 2-thread GEMMs with spinning OpenMP teams (the [device] tests took
// 9x as long). At startup both counts are set from OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS,
// capped at the processors as OpenBLAS itself caps them.
int cpu_threads_from_environment() {
  for (const char* name : {"OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"}) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') continue;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (end == v || n <= 0) continue;
    const long procs = long(std::max(1u, std::thread::hardware_concurrency()));
    return int(std::min(n, procs));
  }
  return 0;
}

namespace {

[[maybe_unused]] const bool threads_set_at_startup = [] {
  set_cpu_threads(cpu_threads_from_environment());  // 0: both libraries keep their defaults
  return true;
}();

}  // namespace

#ifndef RINGATTN_WITH_CUDA
bool cuda_compiled() {
  return false;
}
bool nccl_compiled() {
  return false;
}
bool cuda_simulated() {
  return false;
}
int cuda_device_count() {
  return 0;
}
Backend& cuda_backend(int) {
  RA_FAIL("this build has no CUDA backend (configure with -DRINGATTN_CUDA=ON and nvcc on PATH)");
}
#endif

}  // namespace ringattn
