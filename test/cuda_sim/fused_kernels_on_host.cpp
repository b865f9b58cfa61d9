// The fused attention kernels of the simulated GPU (RINGATTN_CUDA=SIM), in the test executable:
// their body (core/cuda/fused_attention_body.h) on test/emulated_block.h's host block, over the
// grids core/cuda/fused_attention.cu launches, in the order the tests ask for
// (test::emulated_block_order). These definitions replace core/cuda_sim/fused_attention.cpp's
// (weak, an error: the ringattn executable has no fused kernels when simulated), so that the
// CUDA backend's fused path (its plan, uploads and statistics in core/cuda/cuda_attention.cu)
// runs in the [cuda] and [device] tests without a GPU.
#include "core/cuda/fused_attention.h"
#include "core/error.h"
#include "test/emulated_block.h"

namespace ringattn::cuda {

namespace {

void check_args(const fused::Args& a) {
  RA_CHECK(fused::head_dim_fits(a.p.head_dim),
           "fused attention needs head_dim to be a multiple of 16 and at most {}, got {}",
           fused::kMaxHeadDim, a.p.head_dim);
  RA_CHECK(a.p.kv_heads > 0 && a.p.heads % a.p.kv_heads == 0,
           "fused attention: {} heads over {} kv heads", a.p.heads, a.p.kv_heads);
}

}  // namespace

void launch_fused_forward(cudaStream_t, const fused::Args& a) {
  check_args(a);
  if (a.p.batch == 0 || a.p.sq == 0 || a.p.sk == 0) return;
  test::run_fused_forward(a);
}

void launch_fused_backward(cudaStream_t, const fused::Args& a) {
  check_args(a);
  if (a.p.batch == 0 || a.p.sq == 0 || a.p.sk == 0) return;
  test::run_fused_backward(a);
}

std::string fused_occupancy(int head_dim) {
  return fmt::format("simulated GPU: no occupancy (head dim {})", head_dim);
}

}  // namespace ringattn::cuda
