// The fused bf16 attention kernels on the simulated GPU (RINGATTN_CUDA=SIM): their tensor-core
// fragments (wmma) and inline PTX have no host form, so instead of fused_attention.cu's kernels
// their body (core/cuda/fused_attention_body.h) runs on core/cuda_sim/host_block.h's host block,
// over the grids fused_attention.cu launches. So `attention.kernel = fused` runs in the simulated
// build too: the CUDA backend's fused path (its plan, uploads and statistics in
// core/cuda/cuda_attention.cu), in the tests and in the ringattn executable. The host block runs
// a block's phases one after another (slowly: for tests and dry runs, not for speed), queued on
// the launch's stream like every simulated kernel (core/cuda_sim/sim_streams.h).
#include "core/cuda/fused_attention.h"
#include "core/cuda_sim/host_block.h"
#include "core/cuda_sim/sim_streams.h"

namespace ringattn::cuda {

void launch_fused_forward(cudaStream_t stream, const fused::Args& a) {
  check_fused_args(a);
  if (a.p.batch == 0 || a.p.sq == 0 || a.p.sk == 0) return;
  // The host block's test settings as they are at the launch, not when it runs.
  sim::enqueue(stream, "fused attention forward",
               [a, order = sim::host_block_order(), max_d = sim::host_block_max_head_dim()] {
                 sim::run_fused_forward(a, order, max_d);
               });
}

void launch_fused_backward(cudaStream_t stream, const fused::Args& a) {
  check_fused_args(a);
  if (a.p.batch == 0 || a.p.sq == 0 || a.p.sk == 0) return;
  sim::enqueue(stream, "fused attention backward",
               [a, order = sim::host_block_order(), max_d = sim::host_block_max_head_dim()] {
                 sim::run_fused_backward(a, order, max_d);
               });
}

std::string fused_occupancy(int head_dim) {
  check_fused_head_dim(head_dim);
  return fmt::format("simulated GPU: no occupancy (head dim {})", head_dim);
}

}  // namespace ringattn::cuda
