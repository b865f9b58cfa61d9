// The trainer's configuration: the schema of every key (train_schema(), documented in
// docs/config.md), a typed TrainConfig filled from a resolved JsonConfig, and validate(), the
// rules that involve more than one key or the world size.
//
//   JsonConfig json = load_train_json("configs/demo.json", {"train.steps=50"});
//   TrainConfig cfg = to_train_config(json);
//   MeshShape mesh = validate(cfg, world_size);  // Error naming the key(s) on a bad combination
//   log::info("config:\n{}", json.dump());       // printed at start, saved into checkpoints
//
// The member initializers below are the defaults: train_schema() reads them from a
// default-constructed TrainConfig, so `TrainConfig{}` and a config file of `{}` agree.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "comm/mesh_shape.h"
#include "core/dtype.h"
#include "core/json_config.h"
#include "model/attention/attention_options.h"
#include "model/attention/layout.h"
#include "model/data/retrieval.h"

namespace ringattn {

enum class Checkpointing { None, Layer };  // activation checkpointing
enum class DataSource { Retrieval, Text, Tokens };
enum class OnNonfinite { Skip, Abort };

struct ModelConfig {
  int64_t vocab_size = 256;
  int64_t hidden_size = 256;
  int64_t intermediate_size = 704;
  int64_t num_layers = 4;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 0;  // 0: num_heads (no grouping)
  int64_t head_dim = 0;      // 0: hidden_size / num_heads
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-5;
  bool tie_embeddings = false;
  int64_t ffn_chunk = 1024;   // tokens per FFN block
  int64_t loss_chunk = 1024;  // tokens per LM-head + loss block
  Checkpointing checkpointing = Checkpointing::None;
  DType dtype = DType::F32;  // F32, or BF16: GEMM operands in bf16 (ModelDims::matmul)

  int64_t kv_heads() const { return num_kv_heads > 0 ? num_kv_heads : num_heads; }
  int64_t head_size() const { return head_dim > 0 ? head_dim : hidden_size / num_heads; }
  bool operator==(const ModelConfig&) const = default;
};

struct AttentionConfig {
  AttentionImpl impl = AttentionImpl::Ring;
  RingLayout layout = RingLayout::Zigzag;
  int64_t q_chunk = 256, k_chunk = 256;
  int64_t ring_pieces = 1;  // AttentionOptions::ring_pieces
  AttentionKernel kernel = AttentionKernel::Tiles;
  bool operator==(const AttentionConfig&) const = default;
};

// As configured: at most one axis may be -1 (inferred from the world size by validate()).
struct MeshConfig {
  int dp = 1, fsdp = 1, sp = -1, tp = 1;
  MeshShape shape() const;
  bool operator==(const MeshConfig&) const = default;
};

struct TrainLoopConfig {
  int64_t steps = 1000;
  int64_t seq_len = 2048;
  int64_t batch_size = 4;  // global, in sequences per optimizer step
  int64_t micro_batches = 1;
  int64_t warmup_steps = 100;
  double grad_clip = 1.0;  // global gradient norm; 0: no clipping
  int64_t log_every = 1;   // a progress line every N steps (and on eval, skipped and last steps)
  // Sequence-length curriculum: stage i trains curriculum_steps[i] steps at
  // curriculum_seq_lens[i] tokens, then the run goes on at seq_len. Tokens per step stay
  // batch_size x seq_len (a stage of length s takes batch_size x seq_len / s sequences).
  std::vector<int64_t> curriculum_seq_lens, curriculum_steps;
  // Length and global batch (sequences) of the step that reads data step `step` (0-based).
  int64_t seq_len_at(int64_t step) const;
  int64_t batch_size_at(int64_t step) const;
  bool operator==(const TrainLoopConfig&) const = default;
};

struct OptimConfig {
  double lr = 3e-4, min_lr = 3e-5;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;
  bool operator==(const OptimConfig&) const = default;
};

struct RetrievalConfig {
  RecordFormat record_format = RecordFormat::Line;
  int64_t num_records = 0;  // 0: as many as fit in the sequence
  int64_t key_digits = 4, value_digits = 4;
  int64_t key_vocab = 0;            // > 0: one-token keys out of this many key tokens
  int64_t value_vocab = 0;          // > 0: one-token values out of this many value tokens
  bool loss_on_all_tokens = false;  // false: the loss counts only the answers
  bool answer_marker = true;        // false: questions are QUESTION key value
  int64_t questions = 1;            // per sample, each about a different record
  bool operator==(const RetrievalConfig&) const = default;
};

struct DataConfig {
  DataSource source = DataSource::Retrieval;
  std::vector<std::string> text_files;
  std::string token_file;
  RetrievalConfig retrieval;
  bool operator==(const DataConfig&) const = default;
};

struct CheckpointConfig {
  int64_t every = 500;    // steps; 0: never
  int64_t keep_last = 3;  // 0: keep all
  bool operator==(const CheckpointConfig&) const = default;
};

struct EvalConfig {
  int64_t every = 250;  // steps; 0: never
  int64_t batches = 4;
  std::vector<int64_t> seq_lens;  // empty: train.seq_len only
  bool operator==(const EvalConfig&) const = default;
};

struct CommConfig {
  double timeout_s = 300.0;
  Transport transport = Transport::MPI;
  bool operator==(const CommConfig&) const = default;
};

struct TrainConfig {
  std::string run_dir = "runs/default";
  uint64_t seed = 1;
  double memory_limit_gb = 0.0;  // GiB per rank; 0: no limit
  Device device = Device::CPU;   // where the model computes
  double peak_tflops = 0.0;      // for MFU; 0: measure an sgemm peak at start
  std::string log_level = "info";
  OnNonfinite on_nonfinite = OnNonfinite::Abort;
  ModelConfig model;
  AttentionConfig attention;
  MeshConfig mesh;
  TrainLoopConfig train;
  OptimConfig optim;
  DataConfig data;
  CheckpointConfig checkpoint;
  EvalConfig eval;
  CommConfig comm;

  size_t memory_limit_bytes() const;  // 0: none
  // The sequence lengths to evaluate at (eval.seq_lens, or train.seq_len when empty).
  std::vector<int64_t> eval_seq_lens() const;
  bool operator==(const TrainConfig&) const = default;
};

std::string_view checkpointing_name(Checkpointing c);  // "none" | "layer"
std::string_view data_source_name(DataSource s);       // "retrieval" | "text" | "tokens"
std::string_view on_nonfinite_name(OnNonfinite o);     // "skip" | "abort"
std::string_view transport_name(Transport t);          // "mpi" | "nccl"
std::string_view model_dtype_name(DType t);            // "f32" | "bf16"

// Every key, its type, default (from TrainConfig{}), range and documentation.
const ConfigSchema& train_schema();
// Defaults, then `file` (skipped when empty), then each "key=value" of `sets` in order.
JsonConfig load_train_json(const std::string& file, const std::vector<std::string>& sets = {});
// The typed view of a resolved config (types and ranges were checked while loading).
TrainConfig to_train_config(const JsonConfig& json);

// Cross-key rules (docs/config.md, "Validation"); returns the mesh with -1 resolved. Each
// failure raises one Error naming the key(s) involved and what was expected.
MeshShape validate(const TrainConfig& cfg, int world_size);

// The attention options the trainer's layers use (causal language modelling).
AttentionOptions attention_options(const TrainConfig& cfg);

}  // namespace ringattn
