// Measuring training steps: what `ringattn bench train` and `bench throughput` report. The model
// runs on a ProfilingBackend (core/profiling_backend.h) over the CPU backend, so each rank knows
// how long its GEMMs, attention kernels and elementwise ops took; the FSDP group and the ring
// say how long the rank was blocked on communication. Everything else (the optimizer, data,
// allocation, the trainer's small collectives) is "other".
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "comm/mesh.h"
#include "core/allocator.h"
#include "model/train_config.h"

namespace ringattn::apps {

// One rank's seconds per timed step (means over the timed steps).
struct RankBreakdown {
  double wall_s = 0;         // train_step() on this rank
  double gemm_s = 0;         // Backend::gemm: projections, FFN, LM head
  double attention_s = 0;    // attention kernels (their tile GEMMs included)
  double elementwise_s = 0;  // norms, RoPE, SwiGLU, embedding, loss, axpy/scale/fill, copies
  double fsdp_gather_s = 0;  // blocked on parameter all-gathers
  double fsdp_reduce_scatter_s = 0;  // blocked on gradient reduce-scatters
  double dp_all_reduce_s = 0;        // dp all-reduce of the gradient shards
  double ring_wait_s = 0;            // blocked on ring KV / dK,dV transfers
  double gemm_gflops = 0;            // achieved by Backend::gemm (2mnk / gemm_s)

  double communication_s() const {
    return fsdp_gather_s + fsdp_reduce_scatter_s + dp_all_reduce_s + ring_wait_s;
  }
  // Wall time not in any category (never negative).
  double other_s() const;
};

struct TrainMeasurement {
  int ranks = 1, threads_per_rank = 1, timed_steps = 0;
  int64_t seq_len = 0, tokens_per_step = 0, parameters = 0;
  double flops_per_token = 0;
  double step_s = 0;        // mean over timed steps of the slowest rank's step time
  double tokens_per_s = 0;  // tokens of the timed steps / their summed slowest-rank time
  double peak_gflops = 0;   // GEMM on the same cores, same run, summed over ranks (MFU's peak)
  std::string peak_gemm;    // which GEMM: "sgemm", or "bf16 GEMM" for model.dtype = bf16
  double mfu = 0;
  double loss = 0;                      // of the last step
  size_t peak_bytes = 0;                // max over ranks (and over every step, warm-up included)
  std::vector<size_t> rank_peak_bytes;  // per rank, in world rank order
  // GPU: the driver's figure after the last step (cudaMemGetInfo, max over ranks; it includes
  // the pool's cached blocks and the CUDA context); 0 on the CPU.
  size_t device_memory_used_bytes = 0;
  // CPU: what the host allocator holds from the system after the last step, its block cache
  // included (Allocator::held_bytes, max over ranks); 0 on a GPU.
  size_t host_memory_held_bytes = 0;
  size_t memory_limit_bytes = 0;  // the configured limit (0: none)
  size_t memory_plan_bytes = 0;   // the trainer's plan (checked against memory_limit_gb), rank 0
  // What rank 0's peak is made of, at its step with the highest peak (largest first).
  std::vector<Allocator::PeakPart> peak_composition;
  std::vector<RankBreakdown> rank_breakdown;  // per rank, in world rank order
  RankBreakdown mean;                         // mean over ranks
};

// Builds a Trainer for `cfg` on `mesh` (cfg validated for it), runs `steps` steps (the first is a
// warm-up and not timed; at least 2) and gathers every rank's figures on every rank.
// `peak_gflops` is the machine's GEMM figure (measure_gemm_gflops, bf16 for a bf16 model). The
// allocator's limit is left as the caller set it. Collective over the world.
TrainMeasurement measure_training(const TrainConfig& cfg, Mesh& mesh, int steps,
                                  double peak_gflops);

// Every field, with units in the names.
nlohmann::ordered_json to_json(const TrainMeasurement& m);
// The human-readable report (rank 0 prints it).
std::string format_report(const TrainMeasurement& m, const std::string& title);

}  // namespace ringattn::apps
