// CUDA transformer-layer operations. All memory bound: simple grid-stride kernels (one thread per
// element) or one block per row where a row needs a reduction. The arithmetic follows
// core/cpu/cpu_layers.cpp operation by operation (the same float/double choices), so the two
// backends agree to float32 rounding.
#include "core/cuda/cuda_layers.h"
#include "core/cuda/pinned_upload.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <cub/device/device_radix_sort.cuh>
#include <vector>

#include "core/cuda/cuda_common.cuh"
#include "core/error.h"

namespace ringattn::cuda {

namespace {

// ---- embedding ----------------------------------------------------------------------------------

__device__ inline float table_value(const float* t, int64_t i) {
  return t[i];
}
__device__ inline float table_value(const uint16_t* t, int64_t i) {
  return __uint_as_float(uint32_t(t[i]) << 16);  // bf16 -> f32: exact
}

// One block per token row (no 64-bit division per element). Ids outside the vocabulary are the
// caller's to rule out (core/backend.h); such a row is written as zeros rather than read from
// outside the table.
template <typename T>
__global__ void embedding_forward_kernel(const int32_t* tokens, int64_t n, const T* table,
                                         int64_t vocab, int64_t dim, float* out) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t t = tokens[i];
    const bool ok = t >= 0 && t < vocab;
    float* o = out + i * dim;
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x)
      o[d] = ok ? table_value(table, t * dim + d) : 0.0f;
  }
}

__global__ void iota_kernel(int32_t* v, int64_t n) {
  for (int64_t i = global_thread(); i < n; i += grid_stride()) v[i] = int32_t(i);
}

// The gradient's scatter-add, after a stable sort of (token, row) by token: the rows of one token
// are then a run of consecutive entries, in row order. The thread of (run, column) adds the run's
// rows in that order, which is the CPU's order (bitwise the same sums, no atomics), and distinct
// tokens proceed in parallel. (One thread per column walking every row, the obvious kernel, is
// `dim` threads in all: a few percent of a GPU, tens of milliseconds at S = 32K.)
__global__ void embedding_backward_runs_kernel(const int32_t* sorted_tokens, const int32_t* rows,
                                               int64_t n, const float* dout, int64_t vocab,
                                               int64_t dim, float* dtable) {
  const int64_t d = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= dim) return;
  for (int64_t s = blockIdx.y; s < n; s += gridDim.y) {
    const int32_t t = sorted_tokens[s];
    if (s > 0 && sorted_tokens[s - 1] == t) continue;  // inside a run: its first entry adds it
    if (t < 0 || int64_t(t) >= vocab) continue;
    float* dst = dtable + int64_t(t) * dim + d;
    float acc = *dst;
    for (int64_t r = s; r < n && sorted_tokens[r] == t; ++r)
      acc += dout[int64_t(rows[r]) * dim + d];
    *dst = acc;
  }
}

// ---- RMSNorm ------------------------------------------------------------------------------------

// One block per row: the sum of squares in double (as on the CPU), then the scaled row. y may be
// x: every read of x[r] happens before the reduction's barrier, and each element is written by
// the thread that reads it.
__global__ void rmsnorm_forward_kernel(const float* x, const float* w, int64_t rows, int64_t dim,
                                       float eps, float* y, float* inv_rms) {
  __shared__ double red[kThreads];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + r * dim;
    double ss = 0;
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) ss += double(xr[d]) * double(xr[d]);
    ss = block_reduce(ss, red, SumOp<double>());
    const float inv = float(1.0 / sqrt(ss / double(dim) + double(eps)));
    if (threadIdx.x == 0) inv_rms[r] = inv;
    float* yr = y + r * dim;
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) yr[d] = (xr[d] * inv) * w[d];
  }
}

// dx, one block per row: dot = sum_d (dy * w)_d x_d in double, then
// dx += inv * (dy * w - x * (dot / dim) * inv^2).
__global__ void rmsnorm_backward_dx_kernel(const float* x, const float* w, const float* inv_rms,
                                           const float* dy, int64_t rows, int64_t dim, float* dx) {
  __shared__ double red[kThreads];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + r * dim;
    const float* gr = dy + r * dim;
    const float inv = inv_rms[r];
    double dot = 0;
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x)
      dot += double(gr[d] * w[d]) * double(xr[d]);
    dot = block_reduce(dot, red, SumOp<double>());
    const float k = float(dot / double(dim)) * inv * inv;
    float* dxr = dx + r * dim;
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x)
      dxr[d] += inv * (gr[d] * w[d] - xr[d] * k);
  }
}

// dw partial sums: block (column tile, row chunk) sums its rows of dy * x * inv in double into
// partial[chunk, d]. Deterministic: no atomics, fixed row order within a chunk.
__global__ void rmsnorm_backward_dw_partial_kernel(const float* x, const float* inv_rms,
                                                   const float* dy, int64_t rows, int64_t dim,
                                                   int64_t rows_per_chunk, double* partial) {
  const int64_t d = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= dim) return;
  const int64_t r0 = int64_t(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  double sum = 0;
  for (int64_t r = r0; r < r1; ++r) sum += double(dy[r * dim + d] * x[r * dim + d] * inv_rms[r]);
  partial[int64_t(blockIdx.y) * dim + d] = sum;
}

// dw[d] += the partials of every chunk, added in chunk order.
__global__ void rmsnorm_backward_dw_sum_kernel(const double* partial, int64_t chunks, int64_t dim,
                                               float* dw) {
  for (int64_t d = global_thread(); d < dim; d += grid_stride()) {
    double sum = 0;
    for (int64_t c = 0; c < chunks; ++c) sum += partial[c * dim + d];
    dw[d] += float(sum);
  }
}

// ---- RoPE ---------------------------------------------------------------------------------------

// cs[s, i] = cos(angle), cs[s, half + i] = sin(angle), angle = positions[s] * inv_freq[i] in
// double (positions reach millions; the float product would keep only a few digits).
__global__ void rope_table_kernel(const int64_t* positions, const double* inv_freq, int64_t seq,
                                  int64_t half, float* cs) {
  for (int64_t e = global_thread(); e < seq * half; e += grid_stride()) {
    const int64_t s = e / half, i = e % half;
    const double angle = double(positions[s]) * inv_freq[i];
    cs[s * 2 * half + i] = float(cos(angle));
    cs[s * 2 * half + half + i] = float(sin(angle));
  }
}

// One thread per rotated pair (x[i], x[i + D/2]) of one head of one token; sign -1 turns back.
__global__ void rope_rotate_kernel(float* x, int64_t batch, int64_t seq, int heads, int64_t half,
                                   const float* cs, float sign) {
  const int64_t pairs = batch * seq * heads * half;
  for (int64_t e = global_thread(); e < pairs; e += grid_stride()) {
    const int64_t i = e % half;
    const int64_t token_head = e / half;  // (b * seq + s) * heads + h
    const int64_t s = (token_head / heads) % seq;
    float* a = x + token_head * 2 * half;
    const float c = cs[s * 2 * half + i];
    const float sn = sign * cs[s * 2 * half + half + i];
    const float x1 = a[i], x2 = a[half + i];
    a[i] = x1 * c - x2 * sn;
    a[half + i] = x2 * c + x1 * sn;
  }
}

void rope(cudaStream_t stream, float* x, int64_t batch, int64_t seq, int heads, int head_dim,
          const int64_t* positions, float theta, float sign) {
  RA_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim {} must be even", head_dim);
  RA_CHECK(theta > 0, "rope: theta {} must be positive", theta);
  RA_CHECK(positions || seq == 0, "rope: positions must be given");
  if (batch <= 0 || seq <= 0 || heads <= 0) return;
  const int64_t half = head_dim / 2;
  // The CPU backend's frequencies, computed on the host the same way, so both backends turn by
  // the same angles.
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv_freq[size_t(i)] = std::pow(double(theta), -2.0 * double(i) / double(head_dim));
  const std::vector<int64_t> pos = host_copy(stream, positions, seq);
  Layout lay;
  const size_t pos_at = lay.add(size_t(seq) * sizeof(int64_t));
  const size_t freq_at = lay.add(size_t(half) * sizeof(double));
  const size_t table_bytes = lay.bytes();  // positions and frequencies: uploaded together
  const size_t cs_at = lay.add(size_t(seq * head_dim) * sizeof(float));
  std::vector<unsigned char> table(table_bytes, 0);
  std::memcpy(table.data() + pos_at, pos.data(), pos.size() * sizeof(int64_t));
  std::memcpy(table.data() + freq_at, inv_freq.data(), inv_freq.size() * sizeof(double));
  DeviceScratch scratch(stream, lay.bytes(), "rope angles");
  upload_async(stream, scratch.at<void>(), table.data(), table.size());
  RA_LAUNCH(grid_for(seq * half), kThreads, 0, stream, rope_table_kernel)
  (scratch.at<int64_t>(pos_at), scratch.at<double>(freq_at), seq, half, scratch.at<float>(cs_at));
  CUDA_CHECK(cudaGetLastError());
  RA_LAUNCH(grid_for(batch * seq * heads * half), kThreads, 0, stream, rope_rotate_kernel)
  (x, batch, seq, heads, half, scratch.at<float>(cs_at), sign);
  CUDA_CHECK(cudaGetLastError());
  // scratch is freed in stream order after both kernels; the host does not wait.
}

// ---- SwiGLU -------------------------------------------------------------------------------------

__global__ void swiglu_forward_kernel(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = global_thread(); i < n; i += grid_stride()) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void swiglu_backward_kernel(const float* gate, const float* up, const float* dout,
                                       int64_t n, float* dgate, float* dup) {
  for (int64_t i = global_thread(); i < n; i += grid_stride()) {
    // Everything is read before either write: dgate may be gate and dup may be up.
    const float g = gate[i], u = up[i], d = dout[i];
    const float s = 1.0f / (1.0f + expf(-g));
    dgate[i] = d * u * (s * (1.0f + g * (1.0f - s)));
    dup[i] = d * (g * s);
  }
}

// ---- cross-entropy ------------------------------------------------------------------------------

// One block per row. The first maximal logit (lowest index among equal maxima) and the log-sum-exp
// (exp and sum in double, as on the CPU); loss = weight * (lse - x[target]); the probabilities of
// dlogits in double too, rounded to float once.
// dlogits may be logits: every thread reads what it needs of the row (x[target] included) before
// the reductions' barriers, and each dlogits element is written by the thread that read that
// logit.
__global__ void cross_entropy_kernel(const float* logits, const int32_t* targets,
                                     const float* weights, int64_t rows, int64_t vocab,
                                     float grad_scale, float* dlogits, uint8_t* correct,
                                     double* row_loss) {
  __shared__ float best_v[kThreads];
  __shared__ int64_t best_i[kThreads];
  __shared__ double red[kThreads];
  constexpr int64_t kNone = LLONG_MAX;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* x = logits + r * vocab;
    // A target outside [0, vocab) counts as ignored (-1): never read outside the row.
    const int32_t t = targets[r] < vocab ? targets[r] : -1;
    const float w = weights ? weights[r] : 1.0f;
    const float xt = t >= 0 ? x[t] : 0.0f;
    // This thread's first maximum over its columns (ascending j, strict >), NaNs skipped: the
    // CPU's scan (m = x[0], then x[j] > m) passes over every NaN after column 0.
    float v = 0.0f;
    int64_t arg = kNone;
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x)
      if (!isnan(x[j]) && (arg == kNone || x[j] > v)) v = x[j], arg = j;
    best_v[threadIdx.x] = v;
    best_i[threadIdx.x] = arg;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
      if (int(threadIdx.x) < s) {
        const float vb = best_v[threadIdx.x + s];
        const int64_t ib = best_i[threadIdx.x + s];
        const float va = best_v[threadIdx.x];
        const int64_t ia = best_i[threadIdx.x];
        if (ib != kNone && (ia == kNone || vb > va || (vb == va && ib < ia))) {
          best_v[threadIdx.x] = vb;
          best_i[threadIdx.x] = ib;
        }
      }
      __syncthreads();
    }
    const float m = best_v[0];
    // The CPU's answer is column 0 when x[0] is NaN (nothing compares greater) or all are NaN.
    // (The loss is NaN then on both backends; the argmax only feeds `correct`.)
    const int64_t argmax = (best_i[0] == kNone || isnan(x[0])) ? 0 : best_i[0];
    __syncthreads();  // best_v/best_i are rewritten for the next row
    if (correct && threadIdx.x == 0) correct[r] = uint8_t(t >= 0 && argmax == int64_t(t));
    float* dl = dlogits ? dlogits + r * vocab : nullptr;
    if (t < 0) {  // ignored row (uniform across the block)
      if (threadIdx.x == 0) row_loss[r] = 0.0;
      if (dl)
        for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) dl[j] = 0.0f;
      continue;
    }
    // Probabilities in float64, as on the CPU (cpu_layers.cpp says why).
    double sum = 0;
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) sum += exp(double(x[j]) - double(m));
    sum = block_reduce(sum, red, SumOp<double>());
    const double lse = double(m) + log(sum);
    if (threadIdx.x == 0) row_loss[r] = double(w) * (lse - double(xt));
    if (dl) {
      const double coef = double(w) * double(grad_scale);
      for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
        double p = exp(double(x[j]) - lse);
        if (j == int64_t(t)) p -= 1.0;
        dl[j] = float(p * coef);
      }
    }
  }
}

// ---- elementwise --------------------------------------------------------------------------------

__global__ void axpy_kernel(int64_t n, float alpha, const float* x, float* y) {
  for (int64_t i = global_thread(); i < n; i += grid_stride()) y[i] += alpha * x[i];
}

__global__ void scale_kernel(float* x, int64_t n, float alpha) {
  for (int64_t i = global_thread(); i < n; i += grid_stride()) x[i] *= alpha;
}

__global__ void fill_kernel(float* x, int64_t n, float value) {
  for (int64_t i = global_thread(); i < n; i += grid_stride()) x[i] = value;
}

}  // namespace

namespace {

template <typename T>
void launch_embedding_forward(cudaStream_t stream, const int32_t* tokens, int64_t n, const T* table,
                              int64_t vocab, int64_t dim, float* out) {
  if (n <= 0 || dim <= 0) return;
  RA_LAUNCH(grid_for_rows(n), kThreads, 0, stream, embedding_forward_kernel<T>)
  (tokens, n, table, vocab, dim, out);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void embedding_forward(cudaStream_t stream, const int32_t* tokens, int64_t n, const float* table,
                       int64_t vocab, int64_t dim, float* out) {
  launch_embedding_forward(stream, tokens, n, table, vocab, dim, out);
}

void embedding_forward_bf16(cudaStream_t stream, const int32_t* tokens, int64_t n,
                            const uint16_t* table, int64_t vocab, int64_t dim, float* out) {
  launch_embedding_forward(stream, tokens, n, table, vocab, dim, out);
}

void embedding_backward(cudaStream_t stream, const int32_t* tokens, int64_t n, const float* dout,
                        int64_t vocab, int64_t dim, float* dtable) {
  if (n <= 0 || dim <= 0) return;
  RA_CHECK(n <= INT_MAX, "embedding backward: {} token rows exceed the sort's int32 range", n);
  // Sorted ids and their rows, then cub's scratch, in one stream-ordered allocation.
  size_t sort_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, tokens, (int32_t*)nullptr,
                                             (const int32_t*)nullptr, (int32_t*)nullptr, int(n), 0,
                                             32, stream));
  Layout lay;
  const size_t rows_in = lay.add(size_t(n) * 4), keys_out = lay.add(size_t(n) * 4),
               rows_out = lay.add(size_t(n) * 4), temp = lay.add(sort_bytes);
  DeviceScratch scratch(stream, lay.bytes(), "embedding backward sort");
  RA_LAUNCH(grid_for(n), kThreads, 0, stream, iota_kernel)(scratch.at<int32_t>(rows_in), n);
  CUDA_CHECK(cudaGetLastError());
  // Radix sort is stable: equal ids keep their row order. All 32 bits, so that an id outside
  // the vocabulary (skipped below) never lands inside another id's run.
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      scratch.at<void>(temp), sort_bytes, tokens, scratch.at<int32_t>(keys_out),
      scratch.at<const int32_t>(rows_in), scratch.at<int32_t>(rows_out), int(n), 0, 32, stream));
  const dim3 grid(unsigned((dim + kThreads - 1) / kThreads),
                  unsigned(std::min<int64_t>(n, 8192)));  // each block walks n / 8192 entries
  RA_LAUNCH(grid, kThreads, 0, stream, embedding_backward_runs_kernel)
  (scratch.at<int32_t>(keys_out), scratch.at<int32_t>(rows_out), n, dout, vocab, dim, dtable);
  CUDA_CHECK(cudaGetLastError());
}

void rmsnorm_forward(cudaStream_t stream, const float* x, const float* w, int64_t rows, int64_t dim,
                     float eps, float* y, float* inv_rms) {
  if (rows <= 0) return;
  RA_LAUNCH(grid_for_rows(rows), kThreads, 0, stream, rmsnorm_forward_kernel)
  (x, w, rows, dim, eps, y, inv_rms);
  CUDA_CHECK(cudaGetLastError());
}

void rmsnorm_backward(cudaStream_t stream, const float* x, const float* w, const float* inv_rms,
                      const float* dy, int64_t rows, int64_t dim, float* dx, float* dw) {
  if (rows <= 0 || dim <= 0) return;
  RA_LAUNCH(grid_for_rows(rows), kThreads, 0, stream, rmsnorm_backward_dx_kernel)
  (x, w, inv_rms, dy, rows, dim, dx);
  CUDA_CHECK(cudaGetLastError());
  // Row chunks of at least 64 rows, and few enough to fit the grid's y limit.
  const int64_t rows_per_chunk = std::max<int64_t>(64, (rows + 65534) / 65535);
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  DeviceScratch partial(stream, size_t(chunks * dim) * sizeof(double),
                        "rmsnorm backward partial sums");
  const dim3 grid(unsigned((dim + kThreads - 1) / kThreads), unsigned(chunks));
  RA_LAUNCH(grid, kThreads, 0, stream, rmsnorm_backward_dw_partial_kernel)
  (x, inv_rms, dy, rows, dim, rows_per_chunk, partial.at<double>());
  CUDA_CHECK(cudaGetLastError());
  RA_LAUNCH(grid_for(dim), kThreads, 0, stream, rmsnorm_backward_dw_sum_kernel)
  (partial.at<double>(), chunks, dim, dw);
  CUDA_CHECK(cudaGetLastError());
}

void rope_forward(cudaStream_t stream, float* x, int64_t batch, int64_t seq, int heads,
                  int head_dim, const int64_t* positions, float theta) {
  rope(stream, x, batch, seq, heads, head_dim, positions, theta, 1.0f);
}

void rope_backward(cudaStream_t stream, float* dx, int64_t batch, int64_t seq, int heads,
                   int head_dim, const int64_t* positions, float theta) {
  // A rotation's transpose is the rotation by the opposite angle.
  rope(stream, dx, batch, seq, heads, head_dim, positions, theta, -1.0f);
}

void swiglu_forward(cudaStream_t stream, const float* gate, const float* up, int64_t n,
                    float* out) {
  if (n <= 0) return;
  RA_LAUNCH(grid_for(n), kThreads, 0, stream, swiglu_forward_kernel)(gate, up, n, out);
  CUDA_CHECK(cudaGetLastError());
}

void swiglu_backward(cudaStream_t stream, const float* gate, const float* up, const float* dout,
                     int64_t n, float* dgate, float* dup) {
  if (n <= 0) return;
  RA_LAUNCH(grid_for(n), kThreads, 0, stream, swiglu_backward_kernel)
  (gate, up, dout, n, dgate, dup);
  CUDA_CHECK(cudaGetLastError());
}

void cross_entropy_rows(cudaStream_t stream, const float* logits, const int32_t* targets,
                        const float* weights, int64_t rows, int64_t vocab, float grad_scale,
                        float* dlogits, uint8_t* correct, double* row_loss) {
  RA_CHECK(vocab > 0 || rows == 0, "cross entropy: empty vocabulary");
  if (rows <= 0) return;
  // No target check here: it would wait for the device once per loss chunk. The trainer checks
  // its batches on the host, Backend::cross_entropy checks for other callers, and the kernel
  // treats a target outside [0, vocab) as an ignored row instead of reading outside the row.
  RA_LAUNCH(grid_for_rows(rows), kThreads, 0, stream, cross_entropy_kernel)
  (logits, targets, weights, rows, vocab, grad_scale, dlogits, correct, row_loss);
  CUDA_CHECK(cudaGetLastError());
}

void axpy(cudaStream_t stream, int64_t n, float alpha, const float* x, float* y) {
  if (n <= 0) return;
  RA_LAUNCH(grid_for(n), kThreads, 0, stream, axpy_kernel)(n, alpha, x, y);
  CUDA_CHECK(cudaGetLastError());
}

void scale(cudaStream_t stream, float* x, int64_t n, float alpha) {
  if (n <= 0) return;
  RA_LAUNCH(grid_for(n), kThreads, 0, stream, scale_kernel)(x, n, alpha);
  CUDA_CHECK(cudaGetLastError());
}

void fill(cudaStream_t stream, float* x, int64_t n, float value) {
  if (n <= 0) return;
  RA_LAUNCH(grid_for(n), kThreads, 0, stream, fill_kernel)(x, n, value);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ringattn::cuda
