// The simulated cuBLAS (RINGATTN_CUDA=SIM; core/cuda_sim/include/cublas_v2.h): cuBLAS's
// column-major GEMM, C = alpha op(A) op(B) + beta C, by OpenBLAS's column-major sgemm, which has
// the same argument semantics and is an implementation of its own: a swapped operand, transpose or
// leading dimension in the CUDA backend gives a wrong product here too. bf16 operands are widened
// to float32 first (exactly), products accumulate in float32 as CUBLAS_COMPUTE_32F does.
#include <cblas.h>

#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

#include "core/cuda_sim/sim_memory.h"
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

cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                    int k, float alpha, const void* a, cudaDataType at, int lda, const void* b,
                    cudaDataType bt, int ldb, float beta, void* c, cudaDataType ct, int ldc) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (m < 0 || n < 0 || k < 0) return invalid("negative dimension");
  if (ta == CUBLAS_OP_C || tb == CUBLAS_OP_C) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (ct != CUDA_R_32F || at != bt || (at != CUDA_R_32F && at != CUDA_R_16BF))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  const int a_rows = ta == CUBLAS_OP_N ? m : k, a_cols = ta == CUBLAS_OP_N ? k : m;
  const int b_rows = tb == CUBLAS_OP_N ? k : n, b_cols = tb == CUBLAS_OP_N ? n : k;
  if (const auto s = check_matrix(a, a_rows, a_cols, lda, type_bytes(at), "A")) return s;
  if (const auto s = check_matrix(b, b_rows, b_cols, ldb, type_bytes(bt), "B")) return s;
  if (const auto s = check_matrix(c, m, n, ldc, 4, "C")) return s;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  // cuBLAS does not allow C to overlap A or B (here the operands are copied first, which would
  // hide it).
  const auto span = [](const void* p, int rows, int cols, int ld, size_t elem) {
    const auto* lo = static_cast<const char*>(p);
    return std::pair(lo, lo + extent_bytes(rows, cols, ld, elem));
  };
  const auto cs = span(c, m, n, ldc, 4);
  for (const auto& [lo, hi] :
       {span(a, a_rows, a_cols, lda, type_bytes(at)), span(b, b_rows, b_cols, ldb, type_bytes(bt))})
    if (k > 0 && lo < cs.second && cs.first < hi) return invalid("C overlaps A or B");
  float* cf = static_cast<float*>(c);
  if (beta == 0.0f)  // C is not read (NaN there must not survive), as cuBLAS documents
    for (int j = 0; j < n; ++j) std::memset(cf + size_t(j) * size_t(ldc), 0, size_t(m) * 4);
  if (k == 0) {
    if (beta != 0.0f)
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) cf[size_t(j) * size_t(ldc) + size_t(i)] *= beta;
    return CUBLAS_STATUS_SUCCESS;
  }
  const std::vector<float> af = widen(a, at, a_rows, a_cols, lda);
  const std::vector<float> bf = widen(b, bt, b_rows, b_cols, ldb);
  cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
              tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, alpha, af.data(), a_rows,
              bf.data(), b_rows, beta, cf, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t gemm_batched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, float alpha, const void* const a[], cudaDataType at,
                            int lda, const void* const b[], cudaDataType bt, int ldb, float beta,
                            void* const c[], cudaDataType ct, int ldc, int count) {
  if (count < 0) return invalid("negative batch count");
  if (count == 0) return CUBLAS_STATUS_SUCCESS;
  const size_t array_bytes = size_t(count) * sizeof(void*);
  if (!device_memory(a, array_bytes) || !device_memory(b, array_bytes) ||
      !device_memory(c, array_bytes))
    return invalid("a batched GEMM's pointer arrays must be device memory");
  for (int i = 0; i < count; ++i)
    if (const auto s =
            gemm(h, ta, tb, m, n, k, alpha, a[i], at, lda, b[i], bt, ldb, beta, c[i], ct, ldc))
      return s;
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
  return gemm(h, ta, tb, m, n, k, *alpha, a, CUDA_R_32F, lda, b, CUDA_R_32F, ldb, *beta, c,
              CUDA_R_32F, ldc);
}
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void* alpha, const void* a, cudaDataType at,
                            int lda, const void* b, cudaDataType bt, int ldb, const void* beta,
                            void* c, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
  if (compute != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  return gemm(h, ta, tb, m, n, k, *static_cast<const float*>(alpha), a, at, lda, b, bt, ldb,
              *static_cast<const float*>(beta), c, ct, ldc);
}
cublasStatus_t cublasSgemmBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                  int m, int n, int k, const float* alpha, const float* const a[],
                                  int lda, const float* const b[], int ldb, const float* beta,
                                  float* const c[], int ldc, int count) {
  return gemm_batched(h, ta, tb, m, n, k, *alpha, reinterpret_cast<const void* const*>(a),
                      CUDA_R_32F, lda, reinterpret_cast<const void* const*>(b), CUDA_R_32F, ldb,
                      *beta, reinterpret_cast<void* const*>(c), CUDA_R_32F, ldc, count);
}
cublasStatus_t cublasGemmBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                   int m, int n, int k, const void* alpha, const void* const a[],
                                   cudaDataType at, int lda, const void* const b[], cudaDataType bt,
                                   int ldb, const void* beta, void* const c[], cudaDataType ct,
                                   int ldc, int count, cublasComputeType_t compute,
                                   cublasGemmAlgo_t) {
  if (compute != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  return gemm_batched(h, ta, tb, m, n, k, *static_cast<const float*>(alpha), a, at, lda, b, bt, ldb,
                      *static_cast<const float*>(beta), c, ct, ldc, count);
}
