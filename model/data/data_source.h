// The trainer's data: batches of token sequences, each sequence split over the sp ranks of a
// ring by the configured layout (model/attention/layout.h).
//
// Contract of every source:
//   * A batch is a pure function of (seed, split, step, the request's shape): no iterator state,
//     so the "data position" a checkpoint needs is just the step, and a resumed run reads the
//     same batches as a straight one.
//   * Sample n of a step is a pure function of (seed, split, n): which rank asks for it, and in
//     which layout, changes only which positions of it come back. The global batch of step s is
//     always the samples [s*G, (s+1)*G) (G = global batch in sequences), however they are split
//     over data-parallel ranks and micro-batches, so loss curves can be compared across meshes.
//   * A rank builds or reads only its own shard: the tokens at its layout positions and the
//     tokens right after them (its targets), never the whole sequence.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/attention/layout.h"

namespace ringattn {

// Target of a position whose loss never counts (the last token of a retrieval sequence).
inline constexpr int32_t kIgnoreIndex = -1;

// A sample holds at most this many separately scored answers (answer_mask is U8: 0 = none).
inline constexpr int kMaxAnswers = 255;

// Held-out data must differ from training data; each source documents how (retrieval: another
// random stream; files: the tail of the stream when `val_fraction` > 0).
enum class Split { Train, Validation };
std::string_view split_name(Split split);

// Which part of which batch a rank wants.
struct BatchRequest {
  int64_t step = 0;  // optimizer step (>= 0)
  Split split = Split::Train;
  // Ranks that hold different samples (dp x fsdp: FSDP ranks see different data too). The sp
  // ranks of one ring pass the same data_rank and get shards of the same samples.
  int data_rank = 0, data_ranks = 1;
  // Gradient accumulation: micro-batch `micro` of `micro_steps` within the step.
  int micro = 0, micro_steps = 1;
  int64_t batch_per_rank = 1;  // B: sequences in this micro-batch on this rank
  int sp_rank = 0, sp_size = 1;
  RingLayout layout = RingLayout::Contiguous;
  int64_t seq_len = 0;  // S: global sequence length

  // G = data_ranks * micro_steps * batch_per_rank sequences per step.
  int64_t global_batch() const;
  // Global index of row `b` of this micro-batch: step*G + (data_rank*micro_steps + micro)*B + b.
  int64_t sample_index(int64_t b) const;
  // Raises an Error naming the offending field (and, via check_layout_split, S and N).
  void validate() const;
};

// One rank's shard of a micro-batch. Sl = S / sp_size; local order follows `positions`.
struct Batch {
  int64_t seq_len = 0;             // S
  std::vector<int64_t> positions;  // [Sl] global positions (ascending), for RoPE and masks
  std::vector<int64_t> samples;    // [B] global sample indices (logs, tests)
  Tensor tokens;                   // [B, Sl] I32
  // [B, Sl] I32: the token at global position p+1 (wherever it lives in the ring), or
  // kIgnoreIndex where there is none (see each source).
  Tensor targets;
  Tensor loss_mask;  // [B, Sl] F32: 1 where the loss counts, 0 elsewhere (always 0 at ignore)
  // [B, Sl] U8: where the target is a token of an answer (retrieval), which one: 1..kMaxAnswers
  // (a sample may hold several answers, each scored whole); 0 elsewhere.
  Tensor answer_mask;
  Tensor segment_ids;  // [B, Sl] I32, or undefined (the whole sequence is one segment)

  int64_t batch() const { return tokens.dim(0); }
  int64_t local_len() const { return int64_t(positions.size()); }
};

// One row of a batch being filled, handed to a source (all arrays have positions.size() slots).
struct SampleSlots {
  int32_t* tokens;
  int32_t* targets;
  float* loss_mask;
  uint8_t* answer_mask;  // zero-filled before the call
  int32_t* segment_ids;  // null unless the source has_segments()
};

class BatchSource {
 public:
  virtual ~BatchSource() = default;

  // Smallest model vocabulary that can embed every token this source produces (a model may be
  // larger, e.g. rounded up; never smaller).
  virtual int64_t vocab_size() const = 0;
  // "retrieval (key 3 digits, value 3 digits)", "text_files (2 files, 12345 bytes)", ...
  virtual std::string describe() const = 0;
  // Raises a clear Error if sequences of `seq_len` tokens cannot be made (too short for the
  // task, a stream shorter than seq_len + 1, ...). Cheap: the trainer calls it before training.
  virtual void check_seq_len(int64_t seq_len) const = 0;
  // Human-readable text of tokens, for debugging and tests.
  virtual std::string decode(std::span<const int32_t> tokens) const = 0;
  virtual bool has_segments() const { return false; }

  // This rank's shard of the requested micro-batch. Validates the request; thread-safe.
  Batch get(const BatchRequest& request) const;

 protected:
  // Fills one row: sample `sample` of `split`, global length `seq_len`, at global `positions`.
  virtual void fill_sample(int64_t sample, Split split, int64_t seq_len,
                           const std::vector<int64_t>& positions, const SampleSlots& out) const = 0;
};

// Answer positions of a batch, so eval can score them: row, local index, global position and
// answer id (1..kMaxAnswers) of every slot whose answer_mask is not 0 (the prediction made there
// should equal targets[row][local]).
struct AnswerSlot {
  int64_t row, local, position;
  int answer;
};
std::vector<AnswerSlot> answer_slots(const Batch& batch);

// Per row and answer: answer tokens on this rank and how many of them `predictions` ([B, Sl]
// I32, e.g. the argmax of the logits) got right. An answer may be spread over the sp ranks
// (striped, zigzag), so sum both over the ring before scoring whole answers: answer a of row b
// is right when correct[i] == total[i] > 0, i = b * kMaxAnswers + (a - 1). Fixed size, so every
// rank of a ring reduces arrays of the same length.
struct AnswerTally {
  std::vector<int64_t> correct, total;  // [B * kMaxAnswers]
  void reset(int64_t rows);
  void add(int64_t row, int answer, bool right);
  // Answers with at least one token counted, and those whose every token is right.
  int64_t answers() const;
  int64_t exact() const;
};
AnswerTally tally_answers(const Batch& batch, const Tensor& predictions);

}  // namespace ringattn
