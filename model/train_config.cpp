#include "model/train_config.h"

#include "core/backend.h"

#include <fmt/format.h>

#include <array>
#include <set>

#include "core/allocator.h"
#include "core/backend.h"
#include "core/error.h"
#include "model/data/data_source.h"

namespace ringattn {

namespace {

constexpr std::array kImpls{AttentionImpl::Vanilla, AttentionImpl::Blockwise, AttentionImpl::Ring};
constexpr std::array kKernels{AttentionKernel::Tiles, AttentionKernel::Fused};
constexpr std::array kLayouts{RingLayout::Contiguous, RingLayout::Zigzag, RingLayout::Striped};
constexpr std::array kRecordFormats{RecordFormat::Line, RecordFormat::ValueKey};
constexpr std::array kCheckpointing{Checkpointing::None, Checkpointing::Layer};
constexpr std::array kSources{DataSource::Retrieval, DataSource::Text, DataSource::Tokens};
constexpr std::array kNonfinite{OnNonfinite::Skip, OnNonfinite::Abort};
constexpr std::array kTransports{Transport::MPI, Transport::NCCL};
constexpr std::array kDevices{Device::CPU, Device::CUDA};
std::string_view device_key_name(Device d) {
  return device_name(d);
}
constexpr std::array kDTypes{DType::F32, DType::BF16};

// The accepted spellings of an enum, from its name function, so a choice cannot be documented
// under one name and parsed under another.
template <typename E, size_t N, typename NameFn>
std::vector<std::string> names(const std::array<E, N>& all, NameFn name) {
  std::vector<std::string> out;
  for (E e : all) out.emplace_back(name(e));
  return out;
}

template <typename E, size_t N, typename NameFn>
E from_name(const std::array<E, N>& all, NameFn name, const std::string& s) {
  for (E e : all)
    if (name(e) == s) return e;
  RA_FAIL("internal: '{}' is not a known choice", s);  // the schema checked it already
}

ConfigSchema make_schema() {
  const TrainConfig d;  // the defaults
  ConfigSchema s;
  s.add_string("run_dir", d.run_dir,
               "Directory of the run: `metrics.jsonl` and `checkpoints/step_<N>/` go here.");
  s.add_int("seed", int64_t(d.seed),
            "Seed of everything random (initial weights, data); same seed and config, same run.")
      .at_least(0);
  s.add_float("memory_limit_gb", d.memory_limit_gb,
              "Memory limit per rank in GiB, checked by the memory plan before training and by "
              "the allocator; 0: no limit.")
      .at_least(0);
  s.add_enum("device", std::string(device_name(d.device)), names(kDevices, device_key_name),
             "Where the model computes: `cpu` (OpenBLAS) or `cuda` (GPU builds; each rank takes "
             "GPU local_rank mod GPUs on its node). Memory limits and peak bytes are then the "
             "GPU's.");
  s.add_float("peak_tflops", d.peak_tflops,
              "Peak TFLOP/s of one rank, for MFU; 0: measured (sgemm) at start.")
      .at_least(0);
  s.add_enum("log_level", d.log_level, {"trace", "debug", "info", "warn", "error", "off"},
             "Logging verbosity (`ringattn --log-level` overrides it). Errors print whatever the "
             "level (even `off`): a job that ends non-zero always says why.");
  s.add_enum("on_nonfinite", std::string(on_nonfinite_name(d.on_nonfinite)),
             names(kNonfinite, on_nonfinite_name),
             "A non-finite loss or gradient: `skip` the step (counted in the metrics) or "
             "`abort` the run.");

  const ModelConfig& m = d.model;
  // Model dimensions are GEMM dimensions and 32-bit token ids: larger ones would wrap.
  constexpr double kMaxDim = 2147483647.0;
  s.add_int("model.vocab_size", m.vocab_size, "Vocabulary size (embedding and LM head rows).")
      .at_least(2)
      .at_most(kMaxDim);
  s.add_int("model.hidden_size", m.hidden_size, "Width of the residual stream.")
      .at_least(1)
      .at_most(kMaxDim);
  s.add_int("model.intermediate_size", m.intermediate_size, "Width of the SwiGLU FFN.")
      .at_least(1)
      .at_most(kMaxDim);
  s.add_int("model.num_layers", m.num_layers, "Number of transformer blocks.")
      .at_least(1)
      .at_most(kMaxDim);
  s.add_int("model.num_heads", m.num_heads, "Query heads.").at_least(1).at_most(kMaxDim);
  s.add_int("model.num_kv_heads", m.num_kv_heads,
            "Key/value heads (grouped-query attention); 0: `num_heads`.")
      .at_least(0)
      .at_most(kMaxDim);
  s.add_int("model.head_dim", m.head_dim, "Dimension of one head; 0: `hidden_size / num_heads`.")
      .at_least(0)
      .at_most(kMaxDim);
  s.add_float("model.rope_theta", m.rope_theta, "RoPE base frequency.").above(0);
  s.add_float("model.rms_norm_eps", m.rms_norm_eps, "Epsilon of RMSNorm.").above(0);
  s.add_bool("model.tie_embeddings", m.tie_embeddings,
             "Share the token embedding with the LM head.");
  s.add_int("model.ffn_chunk", m.ffn_chunk,
            "Tokens the FFN processes at a time (blockwise FFN); bounds its activation memory.")
      .at_least(1);
  s.add_int("model.loss_chunk", m.loss_chunk,
            "Tokens whose logits exist at a time (blockwise LM head and loss).")
      .at_least(1);
  s.add_enum("model.checkpointing", std::string(checkpointing_name(m.checkpointing)),
             names(kCheckpointing, checkpointing_name),
             "Activation checkpointing: `layer` keeps only block inputs and recomputes the rest "
             "in backward (less memory, same results).");
  s.add_enum("model.dtype", std::string(model_dtype_name(m.dtype)),
             names(kDTypes, model_dtype_name),
             "`bf16`: mixed precision. FSDP gathers the weights as bfloat16 (half the traffic "
             "and half the gathered units' memory; the GEMMs read them as gathered, only the "
             "norms' weights and the embedding rows are widened); "
             "the projection, FFN, LM-head and attention-tile GEMMs take bfloat16 operands "
             "(float32 accumulation and results; tensor cores on a GPU), and the ring's key/value "
             "blocks travel as bfloat16 (half the bytes, the same results). The activations "
             "that only feed GEMMs (normalised inputs, q, k, v) are kept in bfloat16, which the "
             "GEMMs would round them to anyway. Master weights, gradients, optimizer state, the "
             "residual stream, the softmax and its statistics stay float32.");

  const AttentionConfig& a = d.attention;
  s.add_enum("attention.impl", std::string(impl_name(a.impl)), names(kImpls, impl_name),
             "`vanilla` (full score matrix), `blockwise` (tiles, online softmax) or `ring` "
             "(sequence split over `mesh.sp` ranks).");
  s.add_enum("attention.layout", std::string(layout_name(a.layout)), names(kLayouts, layout_name),
             "How a sequence is spread over the `mesh.sp` ranks.");
  s.add_int("attention.q_chunk", a.q_chunk, "Query tile length (blockwise and ring).").at_least(1);
  s.add_int("attention.k_chunk", a.k_chunk, "Key/value tile length (blockwise and ring).")
      .at_least(1);
  s.add_int("attention.ring_pieces", a.ring_pieces,
            "Ring: each rank's key/value shard travels the ring in this many pieces, one ring "
            "pass each; the ring's buffers (two K/V blocks in flight, three float32 dK/dV blocks "
            "in backward) shrink by this factor, for as many times more, smaller messages. Best "
            "when each piece is a multiple of `attention.k_chunk`.")
      .at_least(1)
      .at_most(1 << 20);
  s.add_enum("attention.kernel", std::string(kernel_name(a.kernel)), names(kKernels, kernel_name),
             "How the tile steps run. `tiles`: GEMMs (cuBLAS on a GPU) around softmax kernels. "
             "`fused` (model.dtype = bf16 only): on device = cuda, kernels that keep each 64 x 64 "
             "score tile in shared memory, so it never makes a round trip through GPU memory "
             "(the flash-attention way; head dimension a multiple of 16, at most 128). The same "
             "function, summed in other orders. The CPU runs its tiles either way.");

  // Mesh axes: -1 infers one axis from the world size; 0 is rejected by validate().
  const MeshConfig& mesh = d.mesh;
  constexpr int kMaxAxis = 1 << 20;
  s.add_int("mesh.dp", mesh.dp, "Data-parallel replicas; -1: inferred from the world size.")
      .at_least(-1)
      .at_most(kMaxAxis);
  s.add_int("mesh.fsdp", mesh.fsdp,
            "Data-parallel ranks that shard parameters, gradients and optimizer state (FSDP); "
            "-1: inferred.")
      .at_least(-1)
      .at_most(kMaxAxis);
  s.add_int("mesh.sp", mesh.sp,
            "Sequence-parallel ranks (the ring); -1: inferred. Parameters are sharded over "
            "fsdp x sp.")
      .at_least(-1)
      .at_most(kMaxAxis);
  s.add_int("mesh.tp", mesh.tp,
            "Tensor parallelism: must be 1 (the project has no tensor parallelism yet).")
      .at_least(-1)
      .at_most(kMaxAxis);

  const TrainLoopConfig& t = d.train;
  s.add_int("train.steps", t.steps, "Optimizer steps.").at_least(1);
  s.add_int("train.seq_len", t.seq_len, "Tokens per training sequence (the context length).")
      .at_least(1);
  s.add_int("train.batch_size", t.batch_size, "Global batch, in sequences per optimizer step.")
      .at_least(1);
  s.add_int("train.micro_batches", t.micro_batches,
            "Gradient accumulation: each step runs this many micro-batches.")
      .at_least(1);
  s.add_int("train.warmup_steps", t.warmup_steps,
            "Linear learning-rate warm-up, then cosine decay to `optim.min_lr`.")
      .at_least(0);
  s.add_int("train.log_every", t.log_every,
            "Log a progress line (percent done, loss, throughput, elapsed time and ETA) every N "
            "steps; eval steps, skipped steps and the last step are always logged.")
      .at_least(1);
  s.add_int_list("train.curriculum_seq_lens", t.curriculum_seq_lens,
                 "Sequence-length curriculum: train first at these lengths (each for the matching "
                 "`train.curriculum_steps`), then at `train.seq_len`; tokens per step stay "
                 "`batch_size x seq_len`, so a shorter stage takes more sequences. Short contexts "
                 "teach what long ones need (e.g. retrieval) in far fewer FLOPs.")
      .at_least(1);
  s.add_int_list("train.curriculum_steps", t.curriculum_steps,
                 "Steps of each stage of `train.curriculum_seq_lens` (same length).")
      .at_least(1);
  s.add_float("train.grad_clip", t.grad_clip, "Clip the global gradient norm to this; 0: off.")
      .at_least(0);

  const OptimConfig& o = d.optim;
  s.add_float("optim.lr", o.lr, "Peak learning rate (AdamW).").at_least(0);
  s.add_float("optim.min_lr", o.min_lr, "Learning rate at the end of the cosine decay.")
      .at_least(0);
  s.add_float("optim.beta1", o.beta1, "AdamW first-moment decay.").at_least(0).below(1);
  s.add_float("optim.beta2", o.beta2, "AdamW second-moment decay.").at_least(0).below(1);
  s.add_float("optim.eps", o.eps, "AdamW epsilon.").above(0);
  s.add_float("optim.weight_decay", o.weight_decay, "Decoupled weight decay.").at_least(0);

  const DataConfig& data = d.data;
  s.add_enum("data.source", std::string(data_source_name(data.source)),
             names(kSources, data_source_name),
             "`retrieval`: the synthetic key-value retrieval task (no files); `text`: bytes of "
             "`data.text_files`; `tokens`: a pre-tokenized `data.token_file`.");
  s.add_string_list("data.text_files", data.text_files,
                    "Text files read as bytes (`data.source = text`).");
  s.add_string("data.token_file", data.token_file, "Pre-tokenized file (`data.source = tokens`).");
  s.add_int("data.retrieval.num_records", data.retrieval.num_records,
            "Key-value records per sample; 0: as many as fit in the sequence.")
      .at_least(0);
  s.add_int("data.retrieval.key_digits", data.retrieval.key_digits, "Digits of each key.")
      .at_least(1)
      .at_most(18);
  s.add_int("data.retrieval.value_digits", data.retrieval.value_digits, "Digits of each value.")
      .at_least(1)
      .at_most(18);
  s.add_int("data.retrieval.key_vocab", data.retrieval.key_vocab,
            "0: keys are `key_digits` decimal digits; N > 0: each key is one token out of N key "
            "tokens (needs model.vocab_size >= 17 + N and N >= records per sample). One-token "
            "keys are much faster to learn.")
      .at_least(0)
      .at_most(int64_t(1) << 24);
  s.add_int(
       "data.retrieval.value_vocab", data.retrieval.value_vocab,
       "0: values are `value_digits` decimal digits; N > 0: each value (so each answer) is one "
       "token out of N value tokens (needs model.vocab_size >= 17 + key_vocab + N).")
      .at_least(0)
      .at_most(int64_t(1) << 24);
  s.add_bool("data.retrieval.loss_on_all_tokens", data.retrieval.loss_on_all_tokens,
             "false: the loss counts only the answer tokens (the task); true: every predictable "
             "token too (record structure, keys after markers), which gives the model more signal "
             "to learn the format. Accuracy is always measured on the answers.");
  s.add_enum("data.retrieval.record_format",
             std::string(record_format_name(data.retrieval.record_format)),
             names(kRecordFormats, record_format_name),
             "`line`: records read `line <key>: <value>` and a newline; `value_key`: just the "
             "value then the key, no delimiters, which a small model learns to look up in "
             "hundreds of steps where `line` records stall (docs/demo-learnability.md).");
  s.add_bool("data.retrieval.answer_marker", data.retrieval.answer_marker,
             "true: a question reads `question <key> answer <value>`; false: `question <key> "
             "<value>`, the value right after its key (one lookup step less to learn).");
  s.add_int("data.retrieval.questions", data.retrieval.questions,
            "Questions at the end of each sample, each about a different record (each answer is "
            "scored whole by eval). More questions give more training signal per token.")
      .at_least(1)
      .at_most(kMaxAnswers);

  s.add_int("checkpoint.every", d.checkpoint.every,
            "Save a checkpoint every N steps; 0: none but those always written, after the last "
            "step and on a stop signal.")
      .at_least(0);
  s.add_int("checkpoint.keep_last", d.checkpoint.keep_last,
            "Keep the newest K complete checkpoints; 0: keep all.")
      .at_least(0);

  s.add_int("eval.every", d.eval.every, "Evaluate every N steps and after the last step; 0: never.")
      .at_least(0);
  s.add_int("eval.batches", d.eval.batches, "Held-out batches per evaluation.").at_least(1);
  s.add_int_list("eval.seq_lens", d.eval.seq_lens,
                 "Context lengths to evaluate at; empty: `train.seq_len`.")
      .at_least(1);

  s.add_float("comm.timeout_s", d.comm.timeout_s,
              "Seconds without progress before a collective is declared hung (names the rank "
              "and operation, then exits non-zero); at least 1 (a healthy job's steps and "
              "startup take longer than less).")
      .at_least(1);
  s.add_enum("comm.transport", std::string(transport_name(d.comm.transport)),
             names(kTransports, transport_name), "`mpi` (host memory) or `nccl` (GPU builds).");
  return s;
}

// Reads keys and remembers which, so a key declared in the schema but never copied into
// TrainConfig is caught (by the defaults test) instead of being silently ignored.
class Reader {
 public:
  explicit Reader(const JsonConfig& json) : json_(json) {}
  int64_t i(const std::string& k) {
    mark(k);
    return json_.get_int(k);
  }
  double f(const std::string& k) {
    mark(k);
    return json_.get_float(k);
  }
  bool b(const std::string& k) {
    mark(k);
    return json_.get_bool(k);
  }
  std::string s(const std::string& k) {
    mark(k);
    return json_.get_string(k);
  }
  std::vector<int64_t> ints(const std::string& k) {
    mark(k);
    return json_.get_int_list(k);
  }
  std::vector<std::string> strings(const std::string& k) {
    mark(k);
    return json_.get_string_list(k);
  }
  void finish() const {
    for (const ConfigKey& key : json_.schema().keys())
      RA_CHECK(seen_.count(key.name), "internal: config key '{}' is never read into TrainConfig",
               key.name);
  }

 private:
  void mark(const std::string& k) { seen_.insert(k); }
  const JsonConfig& json_;
  std::set<std::string> seen_;
};

// The length of each run of consecutive tokens a rank holds: attention tiles are cut within runs
// (core/cpu/cpu_attention.cpp), so this is what a tile size must divide.
int64_t run_length(RingLayout layout, int64_t seq_len, int sp) {
  if (sp == 1) return seq_len;
  return layout == RingLayout::Zigzag ? seq_len / (2 * int64_t(sp)) : seq_len / sp;
}

// `key` = seq_len must split over the sp ranks by the layout, and the attention tiles must
// divide each rank's runs.
void check_seq_split(const TrainConfig& cfg, int sp, const std::string& key, int64_t seq_len) {
  const RingLayout layout = cfg.attention.layout;
  if (sp > 1) {
    try {
      check_layout_split(layout, seq_len, sp);
    } catch (const Error& e) {
      RA_FAIL("{} = {}: {} (attention.layout = {}, mesh.sp = {})", key, seq_len, e.what(),
              layout_name(layout), sp);
    }
  }
  if (cfg.attention.impl == AttentionImpl::Vanilla) return;  // one whole tile
  const int64_t run = run_length(layout, seq_len, sp);
  for (const auto& [name, chunk] : {std::pair{"attention.q_chunk", cfg.attention.q_chunk},
                                    std::pair{"attention.k_chunk", cfg.attention.k_chunk}}) {
    // A tile longer than the run is cut to it, which is a full tile too.
    RA_CHECK(chunk >= run || run % chunk == 0,
             "{} = {} does not tile {} = {}: with attention.layout = {} over mesh.sp = {} each "
             "rank holds runs of {} consecutive tokens, which must be a multiple of {} (or set "
             "{} >= {}) so that every attention tile is full",
             name, chunk, key, seq_len, layout_name(layout), sp, run, name, name, run);
  }
}

}  // namespace

MeshShape MeshConfig::shape() const {
  MeshShape s;
  s.dp = dp, s.fsdp = fsdp, s.sp = sp, s.tp = tp;
  return s;
}

size_t TrainConfig::memory_limit_bytes() const {
  return gib_to_bytes(memory_limit_gb);
}

int64_t TrainLoopConfig::seq_len_at(int64_t step) const {
  for (size_t i = 0; i < curriculum_seq_lens.size() && i < curriculum_steps.size(); ++i) {
    if (step < curriculum_steps[i]) return curriculum_seq_lens[i];
    step -= curriculum_steps[i];
  }
  return seq_len;
}

int64_t TrainLoopConfig::batch_size_at(int64_t step) const {
  return batch_size * seq_len / seq_len_at(step);
}

std::vector<int64_t> TrainConfig::eval_seq_lens() const {
  return eval.seq_lens.empty() ? std::vector<int64_t>{train.seq_len} : eval.seq_lens;
}

std::string_view checkpointing_name(Checkpointing c) {
  return c == Checkpointing::Layer ? "layer" : "none";
}
std::string_view data_source_name(DataSource s) {
  switch (s) {
    case DataSource::Retrieval:
      return "retrieval";
    case DataSource::Text:
      return "text";
    case DataSource::Tokens:
      return "tokens";
  }
  return "?";
}
std::string_view on_nonfinite_name(OnNonfinite o) {
  return o == OnNonfinite::Skip ? "skip" : "abort";
}
std::string_view transport_name(Transport t) {
  return t == Transport::NCCL ? "nccl" : "mpi";
}
std::string_view model_dtype_name(DType t) {
  return t == DType::BF16 ? "bf16" : "f32";
}

const ConfigSchema& train_schema() {
  static const ConfigSchema schema = make_schema();
  return schema;
}

JsonConfig load_train_json(const std::string& file, const std::vector<std::string>& sets) {
  JsonConfig json(train_schema());
  if (!file.empty()) json.load_file(file);
  for (const std::string& s : sets) json.set(s);
  return json;
}

TrainConfig to_train_config(const JsonConfig& json) {
  Reader r(json);
  TrainConfig c;
  c.run_dir = r.s("run_dir");
  c.seed = uint64_t(r.i("seed"));
  c.memory_limit_gb = r.f("memory_limit_gb");
  c.peak_tflops = r.f("peak_tflops");
  c.log_level = r.s("log_level");
  c.on_nonfinite = from_name(kNonfinite, on_nonfinite_name, r.s("on_nonfinite"));
  c.device = from_name(kDevices, device_key_name, r.s("device"));

  ModelConfig& m = c.model;
  m.vocab_size = r.i("model.vocab_size");
  m.hidden_size = r.i("model.hidden_size");
  m.intermediate_size = r.i("model.intermediate_size");
  m.num_layers = r.i("model.num_layers");
  m.num_heads = r.i("model.num_heads");
  m.num_kv_heads = r.i("model.num_kv_heads");
  m.head_dim = r.i("model.head_dim");
  m.rope_theta = r.f("model.rope_theta");
  m.rms_norm_eps = r.f("model.rms_norm_eps");
  m.tie_embeddings = r.b("model.tie_embeddings");
  m.ffn_chunk = r.i("model.ffn_chunk");
  m.loss_chunk = r.i("model.loss_chunk");
  m.checkpointing = from_name(kCheckpointing, checkpointing_name, r.s("model.checkpointing"));
  m.dtype = from_name(kDTypes, model_dtype_name, r.s("model.dtype"));

  c.attention.impl = from_name(kImpls, impl_name, r.s("attention.impl"));
  c.attention.layout = from_name(kLayouts, layout_name, r.s("attention.layout"));
  c.attention.q_chunk = r.i("attention.q_chunk");
  c.attention.k_chunk = r.i("attention.k_chunk");
  c.attention.ring_pieces = r.i("attention.ring_pieces");
  c.attention.kernel = from_name(kKernels, kernel_name, r.s("attention.kernel"));

  c.mesh.dp = int(r.i("mesh.dp"));  // the schema bounds axes to int range
  c.mesh.fsdp = int(r.i("mesh.fsdp"));
  c.mesh.sp = int(r.i("mesh.sp"));
  c.mesh.tp = int(r.i("mesh.tp"));

  c.train.steps = r.i("train.steps");
  c.train.seq_len = r.i("train.seq_len");
  c.train.batch_size = r.i("train.batch_size");
  c.train.micro_batches = r.i("train.micro_batches");
  c.train.warmup_steps = r.i("train.warmup_steps");
  c.train.grad_clip = r.f("train.grad_clip");
  c.train.log_every = r.i("train.log_every");
  c.train.curriculum_seq_lens = r.ints("train.curriculum_seq_lens");
  c.train.curriculum_steps = r.ints("train.curriculum_steps");

  c.optim.lr = r.f("optim.lr");
  c.optim.min_lr = r.f("optim.min_lr");
  c.optim.beta1 = r.f("optim.beta1");
  c.optim.beta2 = r.f("optim.beta2");
  c.optim.eps = r.f("optim.eps");
  c.optim.weight_decay = r.f("optim.weight_decay");

  c.data.source = from_name(kSources, data_source_name, r.s("data.source"));
  c.data.text_files = r.strings("data.text_files");
  c.data.token_file = r.s("data.token_file");
  c.data.retrieval.num_records = r.i("data.retrieval.num_records");
  c.data.retrieval.key_digits = r.i("data.retrieval.key_digits");
  c.data.retrieval.value_digits = r.i("data.retrieval.value_digits");
  c.data.retrieval.questions = r.i("data.retrieval.questions");
  c.data.retrieval.key_vocab = r.i("data.retrieval.key_vocab");
  c.data.retrieval.value_vocab = r.i("data.retrieval.value_vocab");
  c.data.retrieval.loss_on_all_tokens = r.b("data.retrieval.loss_on_all_tokens");
  c.data.retrieval.answer_marker = r.b("data.retrieval.answer_marker");
  c.data.retrieval.record_format =
      from_name(kRecordFormats, record_format_name, r.s("data.retrieval.record_format"));

  c.checkpoint.every = r.i("checkpoint.every");
  c.checkpoint.keep_last = r.i("checkpoint.keep_last");

  c.eval.every = r.i("eval.every");
  c.eval.batches = r.i("eval.batches");
  c.eval.seq_lens = r.ints("eval.seq_lens");

  c.comm.timeout_s = r.f("comm.timeout_s");
  c.comm.transport = from_name(kTransports, transport_name, r.s("comm.transport"));
  r.finish();
  return c;
}

MeshShape validate(const TrainConfig& cfg, int world_size) {
  RA_CHECK(!cfg.run_dir.empty(),
           "run_dir is empty: set it to the directory for the run's checkpoints and metrics");
  const ModelConfig& m = cfg.model;
  // Model shape.
  RA_CHECK(m.num_heads % m.kv_heads() == 0,
           "model.num_kv_heads = {} must divide model.num_heads = {} (grouped-query attention "
           "shares each key/value head among num_heads / num_kv_heads query heads)",
           m.num_kv_heads, m.num_heads);
  if (m.head_dim > 0) {
    RA_CHECK(m.hidden_size == m.num_heads * m.head_dim,
             "model.hidden_size = {} must equal model.num_heads x model.head_dim = {} x {} = {} "
             "(or set model.head_dim = 0 to derive it)",
             m.hidden_size, m.num_heads, m.head_dim, m.num_heads * m.head_dim);
  } else {
    RA_CHECK(m.hidden_size % m.num_heads == 0,
             "model.hidden_size = {} must be a multiple of model.num_heads = {} when "
             "model.head_dim = 0 (the head dimension is hidden_size / num_heads)",
             m.hidden_size, m.num_heads);
  }
  RA_CHECK(m.head_size() % 2 == 0,
           "the head dimension ({} = {}) must be even: RoPE rotates pairs of dimensions",
           m.head_dim > 0 ? "model.head_dim" : "model.hidden_size / model.num_heads",
           m.head_size());

  // Device and transport.
  RA_CHECK(cfg.comm.transport != Transport::NCCL || cfg.device == Device::CUDA,
           "comm.transport = nccl moves GPU memory: it needs device = cuda (the CPU model uses "
           "comm.transport = mpi)");
  RA_CHECK(m.dtype != DType::BF16 || cfg.device != Device::CUDA || m.head_size() % 8 == 0,
           "model.dtype = bf16 on device = cuda needs a head dimension that is a multiple of 8 "
           "({} = {}): cuBLAS's bf16 attention GEMMs read 16-byte aligned head slices",
           m.head_dim > 0 ? "model.head_dim" : "model.hidden_size / model.num_heads",
           m.head_size());

  RA_CHECK(cfg.attention.kernel != AttentionKernel::Fused || m.dtype == DType::BF16,
           "attention.kernel = fused runs bf16 tensor-core kernels: it needs model.dtype = bf16 "
           "(model.dtype = f32 here; use attention.kernel = tiles)");
  RA_CHECK(cfg.attention.kernel != AttentionKernel::Fused || cfg.device != Device::CUDA ||
               (m.head_size() % 16 == 0 && m.head_size() <= 128),
           "attention.kernel = fused on device = cuda needs a head dimension that is a multiple "
           "of 16 and at most 128 ({} = {}); use attention.kernel = tiles",
           m.head_dim > 0 ? "model.head_dim" : "model.hidden_size / model.num_heads",
           m.head_size());

  // Mesh.
  RA_CHECK(cfg.mesh.tp == 1 || cfg.mesh.tp == -1,
           "mesh.tp = {}: the project has no tensor parallelism yet; set mesh.tp = 1", cfg.mesh.tp);
  const MeshShape mesh = resolve_mesh(cfg.mesh.shape(), world_size);
  RA_CHECK(
      mesh.tp == 1,
      "mesh.tp = -1 resolves to {} on {} ranks: the project has no tensor parallelism yet; set "
      "mesh.tp = 1",
      mesh.tp, world_size);
  RA_CHECK(cfg.attention.impl == AttentionImpl::Ring || mesh.sp == 1,
           "attention.impl = {} keeps the whole sequence on every rank, so it needs mesh.sp = 1 "
           "(mesh.sp = {} here); use attention.impl = ring to split sequences over mesh.sp ranks",
           impl_name(cfg.attention.impl), mesh.sp);

  // Sequence lengths: split by the layout over sp, tiled by the attention chunks.
  check_seq_split(cfg, mesh.sp, "train.seq_len", cfg.train.seq_len);
  for (size_t i = 0; i < cfg.eval.seq_lens.size(); ++i)
    check_seq_split(cfg, mesh.sp, fmt::format("eval.seq_lens[{}]", i), cfg.eval.seq_lens[i]);
  const TrainLoopConfig& t = cfg.train;
  RA_CHECK(t.curriculum_seq_lens.size() == t.curriculum_steps.size(),
           "train.curriculum_seq_lens has {} stage(s) but train.curriculum_steps has {}: give "
           "one step count per length",
           t.curriculum_seq_lens.size(), t.curriculum_steps.size());
  for (size_t i = 0; i < t.curriculum_seq_lens.size(); ++i) {
    const int64_t s = t.curriculum_seq_lens[i];
    const std::string key = fmt::format("train.curriculum_seq_lens[{}]", i);
    check_seq_split(cfg, mesh.sp, key, s);
    RA_CHECK(s <= t.seq_len && (t.batch_size * t.seq_len) % s == 0,
             "{} = {} must be <= train.seq_len = {} and divide the {} tokens of a step "
             "(train.batch_size x train.seq_len), so a stage keeps the tokens per step",
             key, s, t.seq_len, t.batch_size * t.seq_len);
    const int64_t stage_batch = t.batch_size * t.seq_len / s;
    const int64_t stage_parts = int64_t(mesh.dp) * mesh.fsdp * t.micro_batches;
    RA_CHECK(stage_batch % stage_parts == 0,
             "{} = {} gives {} sequences per step, which must be a multiple of mesh.dp x "
             "mesh.fsdp x train.micro_batches = {}",
             key, s, stage_batch, stage_parts);
  }

  // Batch: every data-parallel group (dp x fsdp of them) takes an equal share, in equal
  // micro-batches of whole sequences.
  const int64_t parts = int64_t(mesh.dp) * mesh.fsdp * cfg.train.micro_batches;
  RA_CHECK(cfg.train.batch_size % parts == 0,
           "train.batch_size = {} must be a multiple of mesh.dp x mesh.fsdp x train.micro_batches "
           "= {} x {} x {} = {}: each of the dp x fsdp data-parallel groups takes an equal share "
           "of the global batch, in train.micro_batches equal micro-batches",
           cfg.train.batch_size, mesh.dp, mesh.fsdp, cfg.train.micro_batches, parts);

  // Schedule.
  // warmup_steps may exceed steps (short test runs of a preset): the rate then stays in warm-up.
  RA_CHECK(cfg.optim.min_lr <= cfg.optim.lr,
           "optim.min_lr = {} must be <= optim.lr = {} (the cosine schedule decays from lr to "
           "min_lr)",
           cfg.optim.min_lr, cfg.optim.lr);

  // Data.
  const DataConfig& d = cfg.data;
  if (d.source == DataSource::Text) {
    RA_CHECK(!d.text_files.empty(), "data.source = text needs data.text_files (a list of files)");
    // 256 byte values plus the separator token placed between files (model/data/file_source.h).
    RA_CHECK(m.vocab_size >= 257,
             "data.source = text reads bytes (and a file separator), so model.vocab_size must be "
             ">= 257, got {}",
             m.vocab_size);
  }
  if (d.source == DataSource::Tokens)
    RA_CHECK(!d.token_file.empty(), "data.source = tokens needs data.token_file");
  if (d.source == DataSource::Retrieval && d.retrieval.num_records > 0) {
    int64_t keys = 1;  // 10^key_digits (key_digits <= 18 keeps it in range), or key_vocab
    for (int64_t i = 0; i < d.retrieval.key_digits; ++i) keys *= 10;
    if (d.retrieval.key_vocab > 0) keys = d.retrieval.key_vocab;
    RA_CHECK(d.retrieval.num_records <= keys,
             "data.retrieval.num_records = {} needs distinct keys, but {} gives only {}",
             d.retrieval.num_records,
             d.retrieval.key_vocab > 0
                 ? fmt::format("data.retrieval.key_vocab = {}", d.retrieval.key_vocab)
                 : fmt::format("data.retrieval.key_digits = {}", d.retrieval.key_digits),
             keys);
    RA_CHECK(d.retrieval.num_records >= d.retrieval.questions,
             "data.retrieval.questions = {} ask different records, so data.retrieval.num_records "
             "must be at least {}, got {}",
             d.retrieval.questions, d.retrieval.questions, d.retrieval.num_records);
  }
  return mesh;
}

AttentionOptions attention_options(const TrainConfig& cfg) {
  AttentionOptions o;
  o.impl = cfg.attention.impl;
  o.layout = cfg.attention.layout;
  o.causal = true;
  o.q_chunk = cfg.attention.q_chunk;
  o.k_chunk = cfg.attention.k_chunk;
  o.ring_pieces = cfg.attention.ring_pieces;
  o.bf16 = cfg.model.dtype == DType::BF16;
  o.kernel = cfg.attention.kernel;
  return o;
}

}  // namespace ringattn
