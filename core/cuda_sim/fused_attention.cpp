// The fused bf16 attention kernels in the simulated CUDA build (RINGATTN_CUDA=SIM): not simulated
// in the ringattn executable. Their tensor-core fragments (wmma) and inline PTX have no host form;
// asking for them is an error that says so (attention.kernel = tiles runs the cuBLAS path, which
// is simulated). Weak definitions: the test executable replaces them with the kernels' body on
// test/emulated_block.h's host block (test/cuda_sim/fused_kernels_on_host.cpp).
#include "core/cuda/fused_attention.h"
#include "core/error.h"

namespace ringattn::cuda {

namespace {
[[noreturn]] void not_simulated() {
  RA_FAIL(
      "the fused attention kernels do not run in the simulated CUDA build (RINGATTN_CUDA=SIM): "
      "they need a GPU's tensor cores; use attention.kernel = tiles");
}
}  // namespace

[[gnu::weak]] void launch_fused_forward(cudaStream_t, const fused::Args&) {
  not_simulated();
}
[[gnu::weak]] void launch_fused_backward(cudaStream_t, const fused::Args&) {
  not_simulated();
}
[[gnu::weak]] std::string fused_occupancy(int) {
  not_simulated();
}

}  // namespace ringattn::cuda
