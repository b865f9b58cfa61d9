// The whole LLaMA-style decoder, assembled from the layers (model/layers/) and sharded with FSDP
// (model/fsdp/): what the trainer loop drives, one micro-batch at a time.
//
// Units: the parameters are split into FSDP units, each one flat buffer sharded over the
// fsdp x sp ranks (mesh.fsdp_sp()), in the order they run:
//   unit 0          the embedding                    model.embed_tokens.weight
//   unit 1 .. L     decoder layer 0 .. L-1           model.layers.{i}.*
//   unit L + 1      the head                         model.norm.weight (+ lm_head.weight if untied)
// A tied head reads the embedding unit's parameters and adds its gradient into the embedding
// unit's full gradient, so the tied matrix is stored, sharded and updated once.
//
// One optimizer step, as the trainer drives it:
//   double w = Transformer::loss_weight(batch) summed over the micro-batches and all-reduced over
//   the world (every rank then holds W, the global weighted token count of the step);
//   for each micro-batch: stats += model.forward_backward(batch, float(1.0 / W));
//   stats.all_reduce(mesh.world());     // for logging: loss = loss_sum / token_weight
//   OptimizerResult r = model.optimizer_step(t);   // t = 1-based update index
//
// Loss normalisation: forward_backward accumulates the gradient of grad_scale x (this rank's sum
// of loss_mask-weighted token losses). Summing those over every rank of the world (the
// reduce-scatter sums over fsdp x sp, optimizer_step sums over dp) gives the gradient of
// grad_scale x (the global batch's loss sum); with grad_scale = 1 / W that is the gradient of the
// mean token loss of the global batch, whatever the mesh or the number of micro-batches. This is
// why the dp all-reduce SUMS rather than averages: every rank already divided by the global W.
//
// Every rank of the mesh must call forward_backward, forward_only, optimizer_step and the
// gathering helpers the same number of times in the same order (they contain collectives over
// fsdp x sp, dp, and the sp ring).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "comm/mesh.h"
#include "core/backend.h"
#include "core/tensor.h"
#include "model/attention/attention.h"
#include "model/data/data_source.h"
#include "model/fsdp/flat_shard.h"
#include "model/fsdp/fsdp_group.h"
#include "model/layers/layers.h"
#include "model/layers/params.h"
#include "model/optim/adamw.h"
#include "model/optim/clip.h"
#include "model/optim/schedule.h"
#include "model/train_config.h"

namespace ringattn {

// What a forward pass counted on this rank (LOCAL until all_reduce()).
struct StepStats {
  double loss_sum = 0;         // sum over tokens of loss_mask * cross-entropy
  double token_weight = 0;     // sum of loss_mask (the weighted token count)
  int64_t answer_correct = 0;  // answer tokens (answer_mask) whose argmax is the target
  int64_t answer_tokens = 0;   // answer tokens (answer_mask)

  StepStats& operator+=(const StepStats& o);
  // Sums every field over `world`. The world is the right group for all of them: sp ranks hold
  // disjoint tokens of the same sequences and dp x fsdp ranks disjoint sequences, so every token
  // of the global batch is counted on exactly one rank. Collective.
  void all_reduce(Communicator& world);
  double mean_loss() const { return token_weight > 0 ? loss_sum / token_weight : 0.0; }
  double answer_accuracy() const {
    return answer_tokens > 0 ? double(answer_correct) / double(answer_tokens) : 0.0;
  }
};

struct OptimizerResult {
  double lr = 0;         // the scheduled learning rate used (0 when the update was skipped)
  double grad_norm = 0;  // global gradient norm before clipping
  bool finite = true;    // false: the update was skipped (grads are zeroed either way)
  bool clipped = false;  // the gradients were scaled down to train.grad_clip
};

// One FSDP unit: its tensors (Hugging Face names, shapes, offsets in the flat buffer) and its
// shard (this rank's parameters, gradients and AdamW state). What checkpoints save and load.
struct ModelUnit {
  std::string name;  // "embedding", "layer.3", "head"
  ParamLayout layout;
  std::unique_ptr<FlatShard> shard;
};

class Transformer {
 public:
  // Builds the units and initialises them from cfg.seed: each unit's full parameters are made on
  // every rank (init_parameters keys every tensor by (seed, name)), and each rank keeps its slice,
  // so the model is the same whatever the mesh. Not collective (no communication), but the
  // units' FSDP group and the attention's ring are made from `mesh`'s communicators, which must
  // outlive the model. The units, activations and gradients live on `backend`'s device; where
  // the mesh's communicators move host memory and the backend is a device, the model talks
  // through host-staged wrappers of them (comm/host_staged_communicator.h). Raises an Error for
  // a configuration the model cannot run (model.dtype other than f32).
  Transformer(const TrainConfig& cfg, Mesh& mesh, Backend& backend,
              FsdpGroup::Mode fsdp_mode = FsdpGroup::Mode::Auto);
  ~Transformer();
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  const ModelDims& dims() const { return dims_; }
  int64_t parameter_count() const { return dims_.parameter_count(); }
  Attention& attention() { return *attention_; }
  // The FSDP group of the units (its wait_times() are the model's communication waits).
  FsdpGroup& fsdp_group() { return *group_; }

  // sum of batch.loss_mask: this rank's share of W (see the header comment).
  static double loss_weight(const Batch& batch);

  // Forward and backward of one micro-batch shard. Gradients of grad_scale x loss_sum are ADDED
  // into the units' shard gradients (micro-batches accumulate; optimizer_step zeroes them).
  // Returns this rank's LOCAL stats.
  StepStats forward_backward(const Batch& batch, float grad_scale);
  // Loss and counts only (evaluation); no gradients, nothing kept. `tally`, when not null,
  // receives per-row answer counts (sum it over the sp ring before scoring whole answers).
  StepStats forward_only(const Batch& batch, AnswerTally* tally = nullptr);
  // Logits [B, Sl, vocab] F32 of this rank's shard, in host memory (final norm and head on every
  // token, no loss): what `ringattn forward` writes to compare with other implementations.
  // Nothing kept.
  Tensor forward_logits(const Batch& batch);

  // dp all-reduce (sum, see above) of the shard gradients when dp > 1, global gradient-norm
  // clipping to train.grad_clip, AdamW with lr_at(step) of the configured schedule when the norm
  // is finite (skipped otherwise), then zero the gradients. `step` is the 1-based update index.
  OptimizerResult optimizer_step(int64_t step);
  // The first part of optimizer_step on its own: waits for the reduce-scatters and sums the
  // shard gradients over dp, so that every rank holds its shard of the step's final gradient
  // (what tests and gradient dumps look at). Idempotent until zero_grads(); optimizer_step
  // does not reduce again. forward_backward after it (before zero_grads) raises an Error, as
  // new micro-batch gradients would be added to an already reduced sum.
  void reduce_grads();
  void zero_grads();

  // --- units, for checkpoints and tests ------------------------------------------------------
  std::vector<ModelUnit>& units() { return units_; }
  const std::vector<ModelUnit>& units() const { return units_; }
  // The unit's full parameters (or reduced gradients) as host F32 [N], the same on every rank.
  // Collective over fsdp x sp (waits for the group's jobs first).
  Tensor gather_unit(size_t unit, bool grads = false);
  // The unit's full parameters split into its tensors, under their Hugging Face names, shaped as
  // Hugging Face stores them (copies). Collective over fsdp x sp.
  std::vector<std::pair<std::string, Tensor>> gather_named(size_t unit);
  // Replaces the unit's parameters with `full` (N floats, the same on every rank: a checkpoint's
  // tensors). Not collective.
  void load_unit(size_t unit, const float* full, int64_t n);

 private:
  // A batch's tensors on the backend's device (the same tensors on the CPU).
  struct DeviceBatch {
    Tensor tokens, targets, loss_mask;
  };
  size_t head_unit() const { return units_.size() - 1; }
  // The communicator of one of the mesh's groups for the backend's memory: `host` itself on the
  // CPU, the mesh's NCCL one (`device`) when there is one, else a host-staged wrapper of `host`
  // owned here.
  Communicator& on_device(Communicator& host, Communicator* device);
  DeviceBatch upload(const Batch& batch) const;
  // The layers' view of a batch's tokens; collective over sp with the ring (share_tokens).
  ShardTokens shard_tokens(const Batch& batch) const;
  void check_batch(const Batch& batch) const;
  StepStats count_answers(const Batch& batch, const std::vector<uint8_t>& correct_rows,
                          AnswerTally* tally) const;
  // Runs embedding and layers; `inputs[l]` receives layer l's input and `caches[l]` its cache
  // when not null (training), else both are dropped as soon as possible (eval).
  Tensor run_forward(const DeviceBatch& batch, const ShardTokens& t, std::vector<Tensor>* inputs,
                     std::vector<DecoderCache>* caches);
  void set_no_decay(ModelUnit& unit);

  TrainConfig cfg_;
  Mesh& mesh_;
  Backend& be_;
  ModelDims dims_;
  std::vector<std::unique_ptr<Communicator>> staged_;  // device views of the mesh's axes
  Communicator* dp_ = nullptr;                         // the dp axis on the backend's device
  std::unique_ptr<FsdpGroup> group_;
  std::unique_ptr<Attention> attention_;
  std::vector<std::unique_ptr<DecoderLayer>> layers_;
  std::unique_ptr<LmHead> head_;
  Embedding embedding_;
  std::vector<ModelUnit> units_;
  AdamWConfig adamw_;
  LrSchedule schedule_;
  bool grads_reduced_ = false;  // reduce_grads() ran since the last zero_grads()
};

}  // namespace ringattn
