// The simulated cuBLAS (RINGATTN_CUDA=SIM; core/cuda_sim/include/cublas_v2.h): cuBLAS's
// column-major GEMM, C = alpha op(A) op(B) + beta C, by OpenBLAS's column-major sgemm, which has
// the same argument semantics and is an implementation of its own: a swapped operand, transpose or
// leading dimension in the CUDA backend gives a wrong product here too. bf16 operands are widened
// to float32 first (exactly), products accumulate in float32 as CUBLAS_COMPUTE_32F does.
//
// A call checks its arguments at once (a bad one is its status, nothing queued) and queues the
// product on the handle's stream (core/cuda_sim/sim_streams.h); alpha and beta are read at the
// call, as with cuBLAS's host pointer mode. A batched call's pointer arrays are device memory, so
// they are read when the product runs, as on a GPU; an operand found outside device memory then is
// the device's fault, as an illegal address would be.
#include <cblas.h>

#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/cuda_sim/sim_memory.h"
#include "core/cuda_sim/sim_streams.h"
#include "core/dtype.h"
#include "cublas_v2.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
};

namespace {

using ringattn::sim::device_memory;

cublasStatus_t invalid(const char* what) {
  std::fprintf(stderr, "[cuda sim] cuBLAS: %s\n", what);
  return CUBLAS_STATUS_INVALID_VALUE;
}

size_t type_bytes(cudaDataType t) {
  return t == CUDA_R_32F ? 4 : 2;
}

// The bytes a rows x cols column-major matrix with leading dimension ld spans (rows, cols > 0).
size_t extent_bytes(int rows, int cols, int ld, size_t elem) {
  return (size_t(cols - 1) * size_t(ld) + size_t(rows)) * elem;
}

// A rows x cols column-major matrix with leading dimension ld, in device memory.
cublasStatus_t check_matrix(const void* p, int rows, int cols, int ld, size_t elem,
                            const char* name) {
  if (ld < std::max(1, rows)) {
    std::fprintf(stderr, "[cuda sim] cuBLAS: %s: leading dimension %d < %d rows\n", name, ld, rows);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (rows == 0 || cols == 0) return CUBLAS_STATUS_SUCCESS;
  if (!device_memory(p, extent_bytes(rows, cols, ld, elem))) {
    std::fprintf(stderr,
                 "[cuda sim] cuBLAS: %s (%p, %d x %d, ld %d) is not inside one device "
                 "allocation\n",
                 name, p, rows, cols, ld);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  return CUBLAS_STATUS_SUCCESS;
}

// A stored rows x cols operand as float32, column-major with leading dimension rows.
std::vector<float> widen(const void* p, cudaDataType t, int rows, int cols, int ld) {
  std::vector<float> out(size_t(rows) * size_t(cols));
  for (int c = 0; c < cols; ++c)
    for (int r = 0; r < rows; ++r) {
      const size_t at = size_t(c) * size_t(ld) + size_t(r);
      out[size_t(c) * size_t(rows) + size_t(r)] =
          t == CUDA_R_32F ? static_cast<const float*>(p)[at]
                          : ringattn::bf16_to_f32(static_cast<const uint16_t*>(p)[at]);
    }
  return out;
}

// One GEMM's shape and operands, as cuBLAS takes them.
struct Gemm {
  cublasOperation_t ta, tb;
  int m, n, k;
  float alpha;
  const void* a;
  cudaDataType at;
  int lda;
  const void* b;
  cudaDataType bt;
  int ldb;
  float beta;
  void* c;
  cudaDataType ct;
  int ldc;

  int a_rows() const { return ta == CUBLAS_OP_N ? m : k; }
  int a_cols() const { return ta == CUBLAS_OP_N ? k : m; }
  int b_rows() const { return tb == CUBLAS_OP_N ? k : n; }
  int b_cols() const { return tb == CUBLAS_OP_N ? n : k; }
};

// What cuBLAS refuses without running anything.
cublasStatus_t check_shape(const Gemm& g) {
  if (g.m < 0 || g.n < 0 || g.k < 0) return invalid("negative dimension");
  if (g.ta == CUBLAS_OP_C || g.tb == CUBLAS_OP_C) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (g.ct != CUDA_R_32F || g.at != g.bt || (g.at != CUDA_R_32F && g.at != CUDA_R_16BF))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  return CUBLAS_STATUS_SUCCESS;
}

// The operands in device memory, and C apart from A and B.
cublasStatus_t check_operands(const Gemm& g) {
  if (const auto s = check_matrix(g.a, g.a_rows(), g.a_cols(), g.lda, type_bytes(g.at), "A"))
    return s;
  if (const auto s = check_matrix(g.b, g.b_rows(), g.b_cols(), g.ldb, type_bytes(g.bt), "B"))
    return s;
  if (const auto s = check_matrix(g.c, g.m, g.n, g.ldc, 4, "C")) return s;
  if (g.m == 0 || g.n == 0) return CUBLAS_STATUS_SUCCESS;
  // cuBLAS does not allow C to overlap A or B (here the operands are copied first, which would
  // hide it).
  const auto span = [](const void* p, int rows, int cols, int ld, size_t elem) {
    const auto* lo = static_cast<const char*>(p);
    return std::pair(lo, lo + extent_bytes(rows, cols, ld, elem));
  };
  const auto cs = span(g.c, g.m, g.n, g.ldc, 4);
  for (const auto& [lo, hi] : {span(g.a, g.a_rows(), g.a_cols(), g.lda, type_bytes(g.at)),
                               span(g.b, g.b_rows(), g.b_cols(), g.ldb, type_bytes(g.bt))})
    if (g.k > 0 && lo < cs.second && cs.first < hi) return invalid("C overlaps A or B");
  return CUBLAS_STATUS_SUCCESS;
}

// The product, when the stream runs it.
void compute(const Gemm& g) {
  if (g.m == 0 || g.n == 0) return;
  float* cf = static_cast<float*>(g.c);
  if (g.beta == 0.0f)  // C is not read (NaN there must not survive), as cuBLAS documents
    for (int j = 0; j < g.n; ++j) std::memset(cf + size_t(j) * size_t(g.ldc), 0, size_t(g.m) * 4);
  if (g.k == 0) {
    if (g.beta != 0.0f)
      for (int j = 0; j < g.n; ++j)
        for (int i = 0; i < g.m; ++i) cf[size_t(j) * size_t(g.ldc) + size_t(i)] *= g.beta;
    return;
  }
  const std::vector<float> af = widen(g.a, g.at, g.a_rows(), g.a_cols(), g.lda);
  const std::vector<float> bf = widen(g.b, g.bt, g.b_rows(), g.b_cols(), g.ldb);
  cblas_sgemm(CblasColMajor, g.ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
              g.tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, g.m, g.n, g.k, g.alpha, af.data(),
              g.a_rows(), bf.data(), g.b_rows(), g.beta, cf, g.ldc);
}

cublasStatus_t gemm(cublasHandle_t h, const Gemm& g) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (const auto s = check_shape(g)) return s;
  if (const auto s = check_operands(g)) return s;
  ringattn::sim::enqueue(h->stream, "cuBLAS GEMM", [g] { compute(g); });
  return CUBLAS_STATUS_SUCCESS;
}

// `g`'s a, b and c are unused: the i-th product takes a[i], b[i], c[i] from the arrays.
cublasStatus_t gemm_batched(cublasHandle_t h, const Gemm& g, const void* const a[],
                            const void* const b[], void* const c[], int count) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (const auto s = check_shape(g)) return s;
  if (count < 0) return invalid("negative batch count");
  if (count == 0) return CUBLAS_STATUS_SUCCESS;
  const size_t array_bytes = size_t(count) * sizeof(void*);
  if (!device_memory(a, array_bytes) || !device_memory(b, array_bytes) ||
      !device_memory(c, array_bytes))
    return invalid("a batched GEMM's pointer arrays must be device memory");
  ringattn::sim::enqueue(h->stream, "cuBLAS batched GEMM", [g, a, b, c, count] {
    for (int i = 0; i < count; ++i) {
      Gemm one = g;
      one.a = a[i];
      one.b = b[i];
      one.c = c[i];
      if (check_operands(one) != CUBLAS_STATUS_SUCCESS)
        throw std::runtime_error("product " + std::to_string(i) + " of " + std::to_string(count) +
                                 ": an operand outside device memory (illegal address), or C "
                                 "overlapping A or B");
      compute(one);
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  *handle = new cublasContext{};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "unknown cuBLAS status";
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float* alpha, const float* a, int lda,
                           const float* b, int ldb, const float* beta, float* c, int ldc) {
  return gemm(h, Gemm{ta, tb, m, n, k, *alpha, a, CUDA_R_32F, lda, b, CUDA_R_32F, ldb, *beta, c,
                      CUDA_R_32F, ldc});
}
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void* alpha, const void* a, cudaDataType at,
                            int lda, const void* b, cudaDataType bt, int ldb, const void* beta,
                            void* c, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
  if (compute != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  return gemm(h, Gemm{ta, tb, m, n, k, *static_cast<const float*>(alpha), a, at, lda, b, bt, ldb,
                      *static_cast<const float*>(beta), c, ct, ldc});
}
cublasStatus_t cublasSgemmBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                  int m, int n, int k, const float* alpha, const float* const a[],
                                  int lda, const float* const b[], int ldb, const float* beta,
                                  float* const c[], int ldc, int count) {
  return gemm_batched(h,
                      Gemm{ta, tb, m, n, k, *alpha, nullptr, CUDA_R_32F, lda, nullptr, CUDA_R_32F,
                           ldb, *beta, nullptr, CUDA_R_32F, ldc},
                      reinterpret_cast<const void* const*>(a),
                      reinterpret_cast<const void* const*>(b), reinterpret_cast<void* const*>(c),
                      count);
}
cublasStatus_t cublasGemmBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                   int m, int n, int k, const void* alpha, const void* const a[],
                                   cudaDataType at, int lda, const void* const b[], cudaDataType bt,
                                   int ldb, const void* beta, void* const c[], cudaDataType ct,
                                   int ldc, int count, cublasComputeType_t compute,
                                   cublasGemmAlgo_t) {
  if (compute != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  return gemm_batched(h,
                      Gemm{ta, tb, m, n, k, *static_cast<const float*>(alpha), nullptr, at, lda,
                           nullptr, bt, ldb, *static_cast<const float*>(beta), nullptr, ct, ldc},
                      a, b, c, count);
}
