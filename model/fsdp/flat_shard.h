// FSDP flat-parameter sharding: one layer's parameters live in one flat float32 buffer of N
// elements; each of the G ranks of the fsdp x sp group keeps only its shard of it (the master
// weights, their gradient and the AdamW state), and the full buffer exists only while the layer
// runs.
//
// Layout (ShardLayout): N is padded with zeros to N_pad = ceil(N / G) * G so that every rank
// holds S = N_pad / G elements; rank r holds full elements [r * S, (r + 1) * S). The padding sits
// at the end of the last rank(s)' shards; padded parameters and gradients are zero and stay zero
// through AdamW (a zero gradient and zero weight give a zero update), so they never change the
// norm or the weights.
//
// One training step of a layer, as the trainer drives it (every rank of the group in the same
// order, see the ordering contract in model/fsdp/fsdp_group.h):
//   forward:   layer.gather_full() (or prefetch_full() one layer ahead), run, release_full()
//   backward:  gather_full() again, accumulate into full_grad(), then reduce_scatter_grads()
//              (or start_reduce_scatter_grads() and wait_grads() later); release_full()
//   per step:  wait_grads(); all_reduce_grads(mesh.axis(Axis::DP)) when dp > 1;
//              clip_grad_norm(layers, max_norm) (below; skip or abort when not finite);
//              adamw_step(cfg, t, lr); zero_grads()
//
// Where the group's communicator orders on the device (NCCL, Communicator::orders_on_device()),
// the gathers and reduce-scatters are queued on its stream behind CUDA events instead of running
// as helper-thread jobs after a host synchronisation. prefetch_full() returns at once and the
// gather runs beside the compute queued next; gather_full() / wait_full() make the compute stream
// wait for it (on the device). A reduce-scatter runs beside the next layer's backward and is
// retired (its result added, its buffers freed, in compute-stream order) at the next one or at
// wait_grads() (FsdpGroup::defer / retire). The group's wait times stay at zero: no host waits.
//
// Memory: every buffer comes from the device's allocator, so it counts in live and peak bytes. The
// full parameter buffer (N_pad values of the gather type) exists from prefetch_full()/gather_full()
// until release_full(); the full gradient buffer from full_grad() until its reduce-scatter has run.
// A group of one (G = 1) has nothing to communicate: gathering float32, gather_full() is a view of
// params() itself and allocates nothing (in bf16, the rounded copy); the reduce-scatter is one
// addition into grads() in stream order. No host waits, no helper-thread jobs.
// Tensors returned by gather_full() and full_grad() are views sharing that storage: a view the
// caller still holds keeps the memory alive after release, so drop views with the layer.
#pragma once

#include <cstdint>
#include <future>
#include <span>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/tensor.h"
#include "model/fsdp/fsdp_group.h"
#include "model/optim/adamw.h"
#include "model/optim/clip.h"

namespace ringattn {

// The shard geometry of N elements over G ranks, seen from `rank`. Pure arithmetic.
struct ShardLayout {
  int64_t numel = 0;         // N, the real elements
  int group_size = 1;        // G
  int rank = 0;              // this rank's index in the group
  int64_t padded_numel = 0;  // N_pad = ceil(N / G) * G
  int64_t shard_numel = 0;   // S = N_pad / G

  static ShardLayout make(int64_t numel, int group_size, int rank);
  // Offset of this rank's shard in the full buffer: rank * S.
  int64_t shard_begin() const { return int64_t(rank) * shard_numel; }
  // Real (non-padding) elements at the start of this rank's shard: clamp(N - rank * S, 0, S).
  int64_t shard_valid() const;
};

class FlatShard {
 public:
  // Allocates the zeroed parameter and gradient shards (S floats each). Not collective. `name`
  // labels the allocations (memory-limit errors name it). `group` must outlive the shard.
  FlatShard(FsdpGroup& group, int64_t numel, std::string name);
  // Waits for this shard's jobs still in flight (they use its buffers).
  ~FlatShard();
  FlatShard(const FlatShard&) = delete;
  FlatShard& operator=(const FlatShard&) = delete;

  const ShardLayout& layout() const { return layout_; }
  const std::string& name() const { return name_; }
  FsdpGroup& group() const { return group_; }
  Device device() const;  // where the shards live: the group's backend's device

  // --- the persistent shards: F32 [S], padding included (and zero) ---------------------------
  // Master weights and gradient of this rank's shard. Not to be touched while a gather of this
  // shard (reads params) or a reduce-scatter (writes grads) is in flight, nor params while full
  // parameters exist (a group of one's gather_full() is a view of them).
  Tensor& params() { return params_; }
  const Tensor& params() const { return params_; }
  Tensor& grads() { return grads_; }
  const Tensor& grads() const { return grads_; }
  // The real elements only (the first shard_valid() of each), for host shards (an Error on a
  // device: use the backend).
  std::span<float> param_span();
  std::span<float> grad_span();

  // The type of the full parameters, which the all-gather moves. F32 (the default) is exact.
  // BF16 is mixed precision: each rank rounds its float32 master shard to bfloat16 (nearest
  // even) straight into its block of the full buffer, the gather fills the rest in place at half
  // the bytes, and the full buffer stays bf16 (N_pad x 2 bytes): the layers' GEMMs read it as
  // it is (F32OrBf16, model/layers/layers.h), while the masters, gradients and optimizer state
  // stay float32. Set before the first gather; not collective, but every rank of the group must
  // agree.
  void set_gather_dtype(DType t);
  DType gather_dtype() const { return gather_dtype_; }
  // True when the full parameters are the master shard itself (a group of one gathering float32,
  // see the memory note above): gather_full() then allocates nothing.
  bool reads_params_in_place() const { return alone_ && gather_dtype_ == DType::F32; }

  // Copies this rank's slice of the full parameters (N floats, the same on every rank: a seeded
  // init or a checkpoint's tensor) into params(); padding stays zero. Not collective.
  void load_full(const float* full, int64_t n);
  // --- full parameters --------------------------------------------------------------------------
  // Allocates the full buffer (N_pad values of gather_dtype()) and starts the all-gather of every
  // rank's shard into it on the group's helper thread (NCCL: on its stream, ordered by events; see
  // above); returns at once (in Sync mode: after the gather). Collective (every rank of the group,
  // same order). A no-op when the full buffer is already present or in flight. A group of one
  // communicates nothing (see the memory note above).
  void prefetch_full();
  // The full parameters, [N] of gather_dtype(), complete on return: waits for a prefetch in flight,
  // or gathers now (collective) when none was started. Rethrows an error of the gather.
  Tensor gather_full();
  // True between a completed gather_full() and release_full().
  bool has_full() const { return full_state_ == FullState::Ready; }
  // Frees the full buffer (after waiting for a gather in flight, which the other ranks take
  // part in). The allocator's live bytes drop by the buffer's bytes unless the caller still holds
  // views.
  void release_full();

  // --- gradients --------------------------------------------------------------------------------
  // The full-gradient buffer for the backward to accumulate into: F32 [N], zero when allocated
  // (N_pad floats, the padding zero too). Allocated on the first call; later calls return the
  // same storage until a reduce-scatter consumes it.
  Tensor full_grad();
  // Reduce-scatter of the full gradients of all ranks into this rank's shard, accumulating:
  //   grads[i] += scale * sum over ranks r of full_grad_r[shard_begin + i]      (float32)
  // scale = 1 gives the plain sum; pass 1 / contributions for a mean (e.g. 1 / G when every rank
  // computed a mean over the same number of tokens). Accumulating (+=) is what gradient
  // accumulation over micro-batches needs: zero_grads() once per optimizer step, reduce-scatter
  // after each micro-batch's backward. Collective.
  //  * The no-argument forms consume full_grad() (freed once the job has run).
  //  * The forms with `full` take the caller's F32 [N] or [N_pad] contiguous host tensor; an [N]
  //    tensor whose N is not a multiple of G is first copied into a zero-padded buffer.
  // The blocking forms return when grads() is updated. The start_ forms queue the job on the
  // group's helper thread (NCCL: on its stream) and return at once; wait_grads() completes them
  // (rethrowing errors). A group of one queues the addition on the compute stream instead (done
  // on return on the CPU), and holds nothing.
  // `full` is kept alive by the job, but must not be written until wait_grads().
  void reduce_scatter_grads(float scale = 1.0f);
  void reduce_scatter_grads(const Tensor& full, float scale = 1.0f);
  void start_reduce_scatter_grads(float scale = 1.0f);
  void start_reduce_scatter_grads(const Tensor& full, float scale = 1.0f);
  void wait_grads();
  // grads := 0 (waits for reduce-scatters in flight first).
  void zero_grads();
  // Data parallelism: all-reduce (sum) of grads() over `dp` (mesh.axis(Axis::DP)), then, when
  // `mean`, multiply by float32(1 / dp.size()) (exact for power-of-two dp). Waits for this
  // shard's reduce-scatters first. Collective over `dp`; may run while the group's helper thread
  // works on other shards, as dp is another communicator.
  void all_reduce_grads(Communicator& dp, bool mean = true);

  // --- optimizer ----------------------------------------------------------------------------
  // Ranges of the full buffer (coordinates [0, N)) that get no weight decay, e.g. the RMSNorm
  // weights of the layer. Stored localized to this rank's shard.
  void set_no_decay(std::span<const IndexRange> full_ranges);
  const std::vector<IndexRange>& no_decay_local() const { return no_decay_local_; }
  // AdamW moments for the shard only (2 x S floats), allocated on the first step (or here).
  AdamWState& optimizer_state();
  // One AdamW update of the shard from grads() (see model/optim/adamw.h for the formula and the
  // 1-based `step`). Waits for this shard's jobs first. Not collective. Does not zero grads.
  void adamw_step(const AdamWConfig& cfg, int64_t step, double lr);

 private:
  enum class FullState { Absent, Pending, Ready };
  void wait_full();
  void start_rs(Tensor padded_full, float scale);

  FsdpGroup& group_;
  ShardLayout layout_;
  // A group of one, which reads and adds in place instead of communicating (the debug fault
  // fsdp_communicate_alone turns that off, core/debug_faults.h).
  bool alone_ = false;
  std::string name_;
  Tensor params_, grads_;
  Tensor full_;  // [N_pad] of gather_dtype() while present
  FullState full_state_ = FullState::Absent;
  std::future<void> full_job_;
  // A stream-ordered gather in flight (orders_on_device()): its point.
  bool full_ordered_ = false;
  std::unique_ptr<StreamPoint> full_point_;
  Tensor full_grad_;                          // F32 [N_pad] while allocated
  std::vector<std::future<void>> grad_jobs_;  // reduce-scatters in flight, oldest first
  std::vector<IndexRange> no_decay_local_;
  AdamWState opt_;
  DType gather_dtype_ = DType::F32;
};

// Global gradient-norm clipping over the layers of one FSDP group (model/optim/clip.h): waits
// for every layer's reduce-scatters, synchronizes the group (its communicator is then free), and
// clips the layers' real shard elements with the norm summed over group.comm(), the fsdp x sp
// ranks. Call it after the dp all-reduce, so that every dp replica clips the same gradients.
// Every shard must belong to the same FsdpGroup. Collective over that group. The norm's float64
// partial sums are host values: with an NCCL group (device buffers only) pass `host_group`, an
// MPI communicator over the same ranks in the same order (mesh.fsdp_sp()); null uses the group's.
GradNormResult clip_grad_norm(std::span<FlatShard* const> shards, double max_norm,
                              Communicator* host_group = nullptr);

}  // namespace ringattn
