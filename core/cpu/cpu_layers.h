// CPU implementations of the backend's transformer-layer operations (see core/backend.h for the
// layouts and the exact formulas). Row-wise loops run in parallel with OpenMP (cpu_threads()
// threads); reductions across rows (RMSNorm's dw, the loss sum) are summed in a fixed order, so a
// result depends only on the inputs and the thread count, never on scheduling.
#pragma once

#include <cstdint>

namespace ringattn::cpu {

void embedding_forward(const int32_t* tokens, int64_t n, const float* table, int64_t vocab,
                       int64_t dim, float* out);
void embedding_forward_bf16(const int32_t* tokens, int64_t n, const uint16_t* table, int64_t vocab,
                            int64_t dim, float* out);
void embedding_backward(const int32_t* tokens, int64_t n, const float* dout, int64_t vocab,
                        int64_t dim, float* dtable);
void rmsnorm_forward(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* y,
                     float* inv_rms);
void rmsnorm_backward(const float* x, const float* w, const float* inv_rms, const float* dy,
                      int64_t rows, int64_t dim, float* dx, float* dw);
void rope_forward(float* x, int64_t batch, int64_t seq, int heads, int head_dim,
                  const int64_t* positions, float theta);
void rope_backward(float* dx, int64_t batch, int64_t seq, int heads, int head_dim,
                   const int64_t* positions, float theta);
void swiglu_forward(const float* gate, const float* up, int64_t n, float* out);
void swiglu_backward(const float* gate, const float* up, const float* dout, int64_t n, float* dgate,
                     float* dup);
void cross_entropy_rows(const float* logits, const int32_t* targets, const float* weights,
                        int64_t rows, int64_t vocab, float grad_scale, float* dlogits,
                        uint8_t* correct, double* row_loss);
void axpy(int64_t n, float alpha, const float* x, float* y);
void scale(float* x, int64_t n, float alpha);
void fill(float* x, int64_t n, float value);

}  // namespace ringattn::cpu
