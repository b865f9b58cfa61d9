// CPU transformer-layer operations. Everything here is memory bound (a few flops per float read),
// so the loops are plain and parallelised over rows only when a call is large enough to pay for
// waking the OpenMP threads. The GEMMs around these ops go through Backend::gemm (OpenBLAS).
#include "core/cpu/cpu_layers.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/allocator.h"
#include "core/backend.h"
#include "core/cpu/parallel.h"
#include "core/dtype.h"
#include "core/error.h"

namespace ringattn::cpu {

namespace {

// Scratch memory from the project allocator, so it shows in the peak-bytes accounting.
template <typename T>
class Scratch {
 public:
  Scratch(size_t count, const char* what) : bytes_(std::max<size_t>(count, 1) * sizeof(T)) {
    data_ = static_cast<T*>(allocator_for(Device::CPU).allocate(bytes_, what));
  }
  ~Scratch() { allocator_for(Device::CPU).deallocate(data_, bytes_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data() const { return data_; }

 private:
  size_t bytes_;
  T* data_ = nullptr;
};

// Checked before any parallel loop: an Error cannot leave an OpenMP region.
void check_tokens(const int32_t* tokens, int64_t n, int64_t vocab, bool allow_ignore,
                  const char* what) {
  for (int64_t i = 0; i < n; ++i) {
    const int32_t t = tokens[i];
    if (allow_ignore && t == -1) continue;
    RA_CHECK(t >= 0 && t < vocab, "{}: token {} at row {} is outside the vocabulary [0, {})", what,
             t, i, vocab);
  }
}

// [begin, end) of `n` items for thread t of nt: the same split on every call with the same count.
std::pair<int64_t, int64_t> static_range(int64_t n, int t, int nt) {
  return {n * t / nt, n * (t + 1) / nt};
}

// Turns one token's heads by +angle (sign 1) or -angle (sign -1). cs holds cos then sin, D/2 each.
void rotate_rows(float* x, int heads, int64_t head_dim, const float* cs, float sign) {
  const int64_t half = head_dim / 2;
  const float* c = cs;
  const float* s = cs + half;
  for (int h = 0; h < heads; ++h) {
    float* a = x + int64_t(h) * head_dim;
    float* b = a + half;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = a[i], x2 = b[i], sn = sign * s[i];
      a[i] = x1 * c[i] - x2 * sn;
      b[i] = x2 * c[i] + x1 * sn;
    }
  }
}

void rope(float* x, int64_t batch, int64_t seq, int heads, int head_dim, const int64_t* positions,
          float theta, float sign) {
  RA_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim {} must be even", head_dim);
  RA_CHECK(theta > 0, "rope: theta {} must be positive", theta);
  RA_CHECK(positions || seq == 0, "rope: positions must be given");
  const int64_t half = head_dim / 2;
  // Frequencies and angles in double: positions reach millions in long-context runs, where the
  // float32 product pos * inv_freq (what Hugging Face computes) keeps only a couple of correct
  // digits of the angle.
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv_freq[size_t(i)] = std::pow(double(theta), -2.0 * double(i) / double(head_dim));
  const int64_t row = int64_t(heads) * head_dim;
  const int threads = threads_for(batch * seq * row);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<float> cs(static_cast<size_t>(2 * half));
#pragma omp for schedule(static)
    for (int64_t s = 0; s < seq; ++s) {
      for (int64_t i = 0; i < half; ++i) {
        const double angle = double(positions[s]) * inv_freq[size_t(i)];
        cs[size_t(i)] = float(std::cos(angle));
        cs[size_t(half + i)] = float(std::sin(angle));
      }
      for (int64_t b = 0; b < batch; ++b)
        rotate_rows(x + (b * seq + s) * row, heads, head_dim, cs.data(), sign);
    }
  }
}

}  // namespace

void embedding_forward(const int32_t* tokens, int64_t n, const float* table, int64_t vocab,
                       int64_t dim, float* out) {
  check_tokens(tokens, n, vocab, false, "embedding");
  const int threads = threads_for(n * dim);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(out + i * dim, table + int64_t(tokens[i]) * dim, size_t(dim) * sizeof(float));
}

void embedding_forward_bf16(const int32_t* tokens, int64_t n, const uint16_t* table, int64_t vocab,
                            int64_t dim, float* out) {
  check_tokens(tokens, n, vocab, false, "embedding");
  const int threads = threads_for(n * dim);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < n; ++i)
    convert_floats(table + int64_t(tokens[i]) * dim, DType::BF16, out + i * dim, DType::F32,
                   size_t(dim));
}

void embedding_backward(const int32_t* tokens, int64_t n, const float* dout, int64_t vocab,
                        int64_t dim, float* dtable) {
  check_tokens(tokens, n, vocab, false, "embedding backward");
  // Threads split the columns, not the tokens: a token that occurs twice would otherwise be two
  // threads adding into the same row. Each thread walks every token in order: deterministic.
  const int threads = int(std::min<int64_t>(threads_for(n * dim), std::max<int64_t>(dim / 16, 1)));
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const auto [c0, c1] = static_range(dim, omp_get_thread_num(), omp_get_num_threads());
    for (int64_t i = 0; i < n; ++i) {
      float* dst = dtable + int64_t(tokens[i]) * dim;
      const float* src = dout + i * dim;
      for (int64_t d = c0; d < c1; ++d) dst[d] += src[d];
    }
  }
}

void rmsnorm_forward(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* y,
                     float* inv_rms) {
  const int threads = threads_for(rows * dim);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    double ss = 0;
    for (int64_t d = 0; d < dim; ++d) ss += double(xr[d]) * double(xr[d]);
    const float inv = float(1.0 / std::sqrt(ss / double(dim) + double(eps)));
    inv_rms[r] = inv;
    float* yr = y + r * dim;
    for (int64_t d = 0; d < dim; ++d) yr[d] = (xr[d] * inv) * w[d];
  }
}

void rmsnorm_backward(const float* x, const float* w, const float* inv_rms, const float* dy,
                      int64_t rows, int64_t dim, float* dx, float* dw) {
  const int threads = threads_for(rows * dim);
  // dw is a sum over rows: each thread sums its own static block of rows into its own partial
  // (double), and the partials are added in thread order afterwards.
  Scratch<double> partial(size_t(threads) * size_t(dim), "rmsnorm backward partial sums");
  std::fill(partial.data(), partial.data() + size_t(threads) * size_t(dim), 0.0);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int t = omp_get_thread_num();
    const auto [r0, r1] = static_range(rows, t, omp_get_num_threads());
    double* pw = partial.data() + int64_t(t) * dim;
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * dim;
      const float* gr = dy + r * dim;
      const float inv = inv_rms[r];
      double dot = 0;  // sum_d (dy * w)_d * x_d
      for (int64_t d = 0; d < dim; ++d) {
        dot += double(gr[d] * w[d]) * double(xr[d]);
        pw[d] += double(gr[d] * xr[d] * inv);
      }
      const float k = float(dot / double(dim)) * inv * inv;
      float* dxr = dx + r * dim;
      for (int64_t d = 0; d < dim; ++d) dxr[d] += inv * (gr[d] * w[d] - xr[d] * k);
    }
  }
  for (int t = 0; t < threads; ++t) {
    const double* pw = partial.data() + int64_t(t) * dim;
    for (int64_t d = 0; d < dim; ++d) dw[d] += float(pw[d]);
  }
}

void rope_forward(float* x, int64_t batch, int64_t seq, int heads, int head_dim,
                  const int64_t* positions, float theta) {
  rope(x, batch, seq, heads, head_dim, positions, theta, 1.0f);
}

void rope_backward(float* dx, int64_t batch, int64_t seq, int heads, int head_dim,
                   const int64_t* positions, float theta) {
  // A rotation's transpose is the rotation by the opposite angle.
  rope(dx, batch, seq, heads, head_dim, positions, theta, -1.0f);
}

void swiglu_forward(const float* gate, const float* up, int64_t n, float* out) {
  const int threads = threads_for(n);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void swiglu_backward(const float* gate, const float* up, const float* dout, int64_t n, float* dgate,
                     float* dup) {
  const int threads = threads_for(n);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < n; ++i) {
    // Read everything first: dgate and dup may be gate and up.
    const float g = gate[i], u = up[i], d = dout[i];
    const float s = 1.0f / (1.0f + std::exp(-g));
    dgate[i] = d * u * (s * (1.0f + g * (1.0f - s)));
    dup[i] = d * (g * s);
  }
}

void cross_entropy_rows(const float* logits, const int32_t* targets, const float* weights,
                        int64_t rows, int64_t vocab, float grad_scale, float* dlogits,
                        uint8_t* correct, double* row_loss) {
  RA_CHECK(vocab > 0 || rows == 0, "cross entropy: empty vocabulary");
  check_tokens(targets, rows, vocab, true, "cross entropy target");
  const int threads = threads_for(rows * vocab);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = logits + r * vocab;
    const int32_t t = targets[r];
    const float w = weights ? weights[r] : 1.0f;
    int64_t arg = 0;
    float m = x[0];
    for (int64_t j = 1; j < vocab; ++j)
      if (x[j] > m) {
        m = x[j];
        arg = j;
      }
    if (correct) correct[r] = uint8_t(t >= 0 && arg == int64_t(t));
    if (t < 0) {
      row_loss[r] = 0;
      if (dlogits) std::fill(dlogits + r * vocab, dlogits + (r + 1) * vocab, 0.0f);
      continue;
    }
    // Probabilities in float64: p - 1 for the target cancels, and in float32 a one-ulp change
    // of lse (5e-7 at |lse| ~ 5) would move it by 1e-4 relative. The CUDA kernel does the same.
    double sum = 0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(double(x[j]) - double(m));
    const double lse = double(m) + std::log(sum);
    row_loss[r] = double(w) * (lse - double(x[t]));
    if (dlogits) {
      const double coef = double(w) * double(grad_scale);
      float* dl = dlogits + r * vocab;  // may be x itself: each j reads x[j] before writing dl[j]
      for (int64_t j = 0; j < vocab; ++j) {
        double p = std::exp(double(x[j]) - lse);
        if (j == int64_t(t)) p -= 1.0;
        dl[j] = float(p * coef);
      }
    }
  }
}

void axpy(int64_t n, float alpha, const float* x, float* y) {
  const int threads = threads_for(n);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

void scale(float* x, int64_t n, float alpha) {
  const int threads = threads_for(n);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < n; ++i) x[i] *= alpha;
}

void fill(float* x, int64_t n, float value) {
  std::fill(x, x + n, value);
}

}  // namespace ringattn::cpu
