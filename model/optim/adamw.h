// AdamW (Loshchilov & Hutter, decoupled weight decay) over flat float32 buffers.
//
// The optimizer never sees a model: it updates one flat buffer of float32 master weights (a
// layer's local FSDP shard, or a whole unsharded layer) from the gradient buffer of the same
// length, with its own first and second moment buffers of that length. Under FSDP each rank
// holds optimizer state only for its own shard, so the state costs 2 x shard floats per layer.
//
// The update is element-wise: element i of the result depends only on element i of the inputs
// and on the per-call constants. So it is independent of the thread count and of how a buffer is
// cut into shards: a step over G shards gives bitwise the same weights as one step over the
// whole buffer (test/test_optim.cpp checks this).
//
// Formulas (t = the 1-based step index, see below; g = grads, p = params; wd = weight_decay,
// or 0 inside a no-decay range):
//   m  <- beta1 * m + (1 - beta1) * g
//   v  <- beta2 * v + (1 - beta2) * g * g
//   m^ =  m / (1 - beta1^t)               (bias corrections)
//   v^ =  v / (1 - beta2^t)
//   p  <- p * (1 - lr * wd) - lr * m^ / (sqrt(v^) + eps)
// The decay term uses p before this step's update and is scaled by lr (so it follows the
// schedule), as in PyTorch's torch.optim.AdamW. Per element the arithmetic is done in float64
// and rounded to float32 once per stored value (m, v, p), so results stay within a few float32
// ulps of a float64 reference; the per-call constants (1 - beta^t etc.) are float64 too.
//
// Step numbering: t counts optimizer updates starting at 1 (the first update has t == 1, which
// makes the bias corrections 1 - beta1 and 1 - beta2). The learning-rate schedule uses the same
// numbering (model/optim/schedule.h), so a trainer passes the same t to both. A trainer whose
// loop counter i starts at 0 passes t = i + 1. t must be >= 1 (an Error otherwise), and resuming
// from a checkpoint must continue with the saved t, since the bias corrections depend on it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/device.h"
#include "core/tensor.h"

namespace ringattn {

// Elements [begin, end) of a flat buffer, half-open.
struct IndexRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
  bool operator==(const IndexRange&) const = default;
};

// Sorts `ranges`, drops empty ones and merges overlapping or touching ones. Raises an Error for a
// range with begin < 0 or end < begin.
std::vector<IndexRange> normalize_ranges(std::vector<IndexRange> ranges);

// The part of `full_ranges` (coordinates of the whole flat buffer) that falls inside the shard
// [shard_begin, shard_begin + shard_len), in the shard's own coordinates (0 = its first
// element), normalized. This is how a trainer that names its no-decay ranges once per layer
// (e.g. the two RMSNorm weight vectors) gets the ranges for each rank's shard.
std::vector<IndexRange> localize_ranges(std::span<const IndexRange> full_ranges,
                                        int64_t shard_begin, int64_t shard_len);

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  // Raises an Error naming the bad field: betas must lie in [0, 1), eps must be > 0,
  // weight_decay >= 0.
  void validate() const;
};

// One AdamW update of `n` elements in place: params, m and v are read and written, grads only
// read. No buffer may overlap another. Elements inside `no_decay` (ranges in the buffer's own
// coordinates, i.e. already localized to the shard; any order, may overlap, clipped to [0, n))
// get no weight decay; everything else gets cfg.weight_decay. `step` is the 1-based t above;
// `lr` the learning rate for this step (from the schedule). Host memory (the CPU backend's
// update, core/cpu/cpu_optim.cpp). Non-finite
// gradients are not checked here: the trainer checks the global gradient norm first
// (model/optim/clip.h) and skips the step when it is not finite.
void adamw_step(const AdamWConfig& cfg, float* params, const float* grads, float* m, float* v,
                int64_t n, int64_t step, double lr, std::span<const IndexRange> no_decay = {});

// The moment buffers of one flat buffer (or shard): allocated through the device allocator, so
// they count in live and peak bytes; zero-initialised, as AdamW starts from m = v = 0. These are
// what a checkpoint saves per rank (together with the step index t).
struct AdamWState {
  Tensor m, v;  // F32 [n] each

  static AdamWState zeros(int64_t n, Device device = Device::CPU);
  int64_t numel() const { return m.defined() ? m.numel() : 0; }
};

// adamw_step over tensors on `be`'s device (the update runs there): params, grads and the state
// are contiguous F32 [n] tensors of that device.
class Backend;
void adamw_step(Backend& be, const AdamWConfig& cfg, Tensor& params, const Tensor& grads,
                AdamWState& state, int64_t step, double lr,
                std::span<const IndexRange> no_decay = {});
// The same on the CPU backend (host tensors).
void adamw_step(const AdamWConfig& cfg, Tensor& params, const Tensor& grads, AdamWState& state,
                int64_t step, double lr, std::span<const IndexRange> no_decay = {});

}  // namespace ringattn
