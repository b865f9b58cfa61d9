// The training loop: batches, gradient accumulation, the optimizer, metrics, eval and
// checkpoints around a Transformer. Usable in-process (tests) as well as by `ringattn train`:
//
//   Trainer t(cfg, mesh);          // fresh model from cfg.seed
//   t.resume_latest();             // optional: continue from <run_dir>/checkpoints
//   t.run();                       // up to train.steps, with eval/checkpoints as configured
//
// Step numbering: step() counts completed steps; step s (1-based) reads the batches of data
// step s - 1, so the data position is step() itself. AdamW's t counts APPLIED updates: a step
// whose gradient is not finite under on_nonfinite = skip zeroes the gradients, is counted in
// skipped(), and does not advance t, so bias corrections and the schedule see only real updates
// (the data still moves on, so a bad batch is not retried forever).
//
// MFU convention: FLOPs per trained token = 6 N + 6 L (H d) S, where N is the parameter count
// (embedding included), L layers, H d = heads x head_dim and S = train.seq_len: 6N for the
// matmuls of forward and backward, and 12 L H d S for the attention scores and values of forward
// and backward, halved as causal attention computes only half the score matrix (the PaLM paper's
// convention with the causal halving). MFU = that x tokens/s / peak FLOP/s.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/mesh.h"
#include "model/checkpoint.h"
#include "model/data/data_source.h"
#include "model/train_config.h"
#include "model/transformer.h"

namespace ringattn {

struct StepMetrics {
  int64_t step = 0;
  double loss = 0, lr = 0, grad_norm = 0;
  double tokens_per_s = 0, mfu = 0;  // mfu 0 when no peak is known
  size_t peak_bytes = 0;             // max over ranks of the allocator peak during the step
  bool has_answers = false;
  double answer_accuracy = 0;
  bool finite = true;  // false: skipped (on_nonfinite = skip)
  double seconds = 0;
  int64_t seq_len = 0;  // train.seq_len, or the curriculum stage's length
};

struct EvalResult {
  int64_t seq_len = 0;
  double loss = 0;            // mean over the weighted tokens of every eval batch
  int64_t answer_tokens = 0;  // answer tokens scored
  double token_accuracy = 0;  // answer tokens whose argmax is right
  int64_t answers = 0;        // answers scored (a sample may hold several)
  double exact_accuracy = 0;  // answers whose every token is right
};

struct TrainerOptions {
  std::string config_json;    // the resolved config, saved into checkpoints (may be empty)
  double peak_flops = 0;      // FLOP/s of the whole job for MFU; 0: cfg.peak_tflops, else no MFU
  bool log_steps = true;      // rank 0 logs a line per step
  bool write_metrics = true;  // rank 0 appends to <run_dir>/metrics.jsonl
  // The backend the model computes with; null: backend_for(cfg). Must outlive the trainer (e.g.
  // a ProfilingBackend wrapping cpu_backend() for `ringattn bench train`).
  Backend* backend = nullptr;
};

// The backend of the config's `device`: the CPU backend, or for cuda this rank's GPU
// (MpiEnv::local_rank() mod the node's GPUs). Raises an Error naming the rank when no GPU is
// usable.
Backend& backend_for(const TrainConfig& cfg);
Backend& backend_for(Device device);

class Trainer {
 public:
  // Builds the model (initialised from cfg.seed) and the data source. `cfg` must be validated
  // for mesh's world size; `mesh` must outlive the trainer. Collective (the model's groups).
  Trainer(const TrainConfig& cfg, Mesh& mesh, TrainerOptions options = {});
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // One optimizer step (reads the batches of data step step()). Raises an Error on a
  // non-finite gradient under on_nonfinite = abort. Collective.
  StepMetrics train_step();
  // Steps until step() == last (train.steps when < 0), evaluating every eval.every steps and
  // checkpointing every checkpoint.every steps and at the end. After each step the ranks agree
  // whether any got a stop signal (model/stop_signal.h); if so they all checkpoint that step
  // and return early (stopped() is then true). Collective.
  void run(int64_t last = -1);

  // Validation loss and answer accuracy at `seq_len` over `batches` global batches of the
  // validation split. Collective.
  EvalResult evaluate(int64_t seq_len, int64_t batches);

  std::string save();                         // checkpoint of step(); returns its directory
  void load(const std::string& dir);          // resume from that checkpoint
  bool resume_latest();                       // false when run_dir holds none
  void load_weights(const std::string& dir);  // full weights only (eval; any mesh)
  std::string checkpoints_dir() const;

  Backend& backend() const { return *opt_.backend; }  // what the model computes with
  int64_t step() const { return state_.step; }
  int64_t updates() const { return state_.updates; }
  int64_t skipped() const { return state_.skipped; }
  Transformer& model() { return *model_; }
  const BatchSource& source() const { return *source_; }
  const std::vector<StepMetrics>& history() const { return history_; }
  double flops_per_token() const;                 // at train.seq_len
  double flops_per_token(int64_t seq_len) const;  // at a curriculum stage's length
  int64_t tokens_per_step() const { return cfg_.train.batch_size * cfg_.train.seq_len; }
  // A multi-line plan of bytes per rank: parameters, shards, optimizer state, activations.
  std::string memory_plan() const;
  // The total of memory_plan() in bytes (its text into *plan when given). The constructor
  // raises an Error with the plan when it exceeds memory_limit_gb.
  size_t memory_estimate_bytes(std::string* plan = nullptr) const;
  // On a GPU: a warning when the plan exceeds what this rank's allocator holds plus what the
  // device has free now ("" otherwise, and on the CPU). The constructor logs it (rank 0) rather
  // than refusing: other processes may end, and the plan may overestimate (up to 1.3x the peak).
  std::string device_memory_warning() const;
  // Rank 0, before the first step: "" when the checkpoint directory has room for the saves of a
  // run to step `last`, else what to do about it.
  std::string checkpoint_space_warning(int64_t last) const;
  // True when run() returned early because a stop signal (SIGTERM, SIGUSR1; see
  // model/stop_signal.h) reached some rank: the checkpoint of step() was written.
  bool stopped() const { return stopped_; }

 private:
  void write_metrics(const StepMetrics& m, const std::vector<EvalResult>& evals);

  TrainConfig cfg_;
  Mesh& mesh_;
  TrainerOptions opt_;
  std::unique_ptr<Transformer> model_;
  std::unique_ptr<BatchSource> source_;
  CheckpointState state_;
  int64_t last_saved_ = -1;
  bool stopped_ = false;
  bool metrics_failing_ = false;  // the last append to metrics.jsonl failed (said once)
  bool stop_agreed();             // collective: did any rank get a stop signal?
  std::vector<StepMetrics> history_;
};

}  // namespace ringattn
