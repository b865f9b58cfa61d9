// CUDA implementations of the backend's transformer-layer operations (formulas and layouts in
// core/backend.h; the CPU versions in core/cpu/cpu_layers.h are the reference they are tested
// against). Every function queues its kernels on `stream`; pointers are device pointers, except
// RoPE's positions, which may be host (the documented case) or device memory.
//
// Deterministic like the CPU backend: sums across rows (RMSNorm's dw, the embedding gradient, the
// loss) run in a fixed order, never with floating-point atomics.
// Token ids and targets are not validated here (that would be a host wait per call): an id
// outside the vocabulary gives a zero row or is skipped (core/backend.h); the trainer checks its
// batches on the host. The one synchronising call is RoPE with positions in device memory (read
// back to build its angle table). Scratch memory (RMSNorm backward, RoPE, the embedding
// gradient's sort) goes back to the allocator in stream order, without a wait.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ringattn::cuda {

void embedding_forward(cudaStream_t stream, const int32_t* tokens, int64_t n, const float* table,
                       int64_t vocab, int64_t dim, float* out);
void embedding_forward_bf16(cudaStream_t stream, const int32_t* tokens, int64_t n,
                            const uint16_t* table, int64_t vocab, int64_t dim, float* out);
void embedding_backward(cudaStream_t stream, const int32_t* tokens, int64_t n, const float* dout,
                        int64_t vocab, int64_t dim, float* dtable);
void rmsnorm_forward(cudaStream_t stream, const float* x, const float* w, int64_t rows, int64_t dim,
                     float eps, float* y, float* inv_rms);
void rmsnorm_backward(cudaStream_t stream, const float* x, const float* w, const float* inv_rms,
                      const float* dy, int64_t rows, int64_t dim, float* dx, float* dw);
void rope_forward(cudaStream_t stream, float* x, int64_t batch, int64_t seq, int heads,
                  int head_dim, const int64_t* positions, float theta);
void rope_backward(cudaStream_t stream, float* dx, int64_t batch, int64_t seq, int heads,
                   int head_dim, const int64_t* positions, float theta);
void swiglu_forward(cudaStream_t stream, const float* gate, const float* up, int64_t n, float* out);
void swiglu_backward(cudaStream_t stream, const float* gate, const float* up, const float* dout,
                     int64_t n, float* dgate, float* dup);
void cross_entropy_rows(cudaStream_t stream, const float* logits, const int32_t* targets,
                        const float* weights, int64_t rows, int64_t vocab, float grad_scale,
                        float* dlogits, uint8_t* correct, double* row_loss);
void axpy(cudaStream_t stream, int64_t n, float alpha, const float* x, float* y);
void scale(cudaStream_t stream, float* x, int64_t n, float alpha);
void fill(cudaStream_t stream, float* x, int64_t n, float value);

}  // namespace ringattn::cuda
