// The embedded default task: synthetic long-context line retrieval, in the spirit of the Ring
// Attention paper's line-retrieval test. Needs no files; any length; its own 17-token vocabulary.
//
// A sample of S tokens (k = key digits, v = value digits, n records, m questions, P padding):
//
//   BOS PAD*P  { LINE k1..kk COLON v1..vv NEWLINE } x n  { QUESTION q1..qk ANSWER a1..av } x m
//
// or, with record_format = value_key, records of just the value then the key, { v1..vv k1..kk }:
// the compact format a small model learns the lookup in (docs/demo-learnability.md). A key's
// last token then sits right after its value, so the position a question's key matches by token
// identity is the one whose previous token is the answer; with `line` records the delimiters
// become attention sinks and the lookup does not form within thousands of steps.
//
// decoded: "<bos>___line 042: 917\nline 630: 005\n ... question 630 answer 005". Keys are
// distinct within a sample; each question asks for one record's key and the answer is its value.
// The m questions ask m distinct records (m <= n), so no answer can be copied from an earlier
// question: every one must be retrieved from the records.
//   record length  R = k + v + 3 tokens (k + v: value_key)   question length Q = k + v + 2 tokens
//   (Q = k + v + 1 with answer_marker = false: QUESTION q1..qk a1..av)
//   S = 1 + P + n*R + m*Q; with num_records = 0, n = floor((S - 1 - m*Q) / R) and
//   P = (S - 1 - m*Q) mod R. Defaults k = v = 3, m = 1: R = 9, Q = 8, and S = 2048 holds
//   n = 226 records (P = 5).
// Padding sits right after BOS so the questions stay last, where a causal model must answer them
// from the whole context.
//
// Keys are written either as k decimal digits (the default), or, with key_vocab = N > 0, as ONE
// token out of N key tokens (ids kKeyBase ..  kKeyBase + N - 1; decoded "#042"). One-token keys
// make the lookup a single match per answer digit instead of a match of k digits at k offsets,
// which a small model learns in minutes where digit keys take far longer (docs/demo.md); with
// them, k = 1 in every length below.
//
// Why several questions: with one, a 2048-token sample carries 3 supervised tokens, far too
// little signal to learn retrieval in minutes; m questions give m times the signal per token
// processed, at the price of m*Q tokens of the context.
//
// Loss: targets are next tokens; the last token (the last answer's last digit) has none
// (kIgnoreIndex). The answer positions of question j are the v positions whose target is one of
// its answer digits (ANSWER and a1..a(v-1)); answer_mask holds j + 1 there (so eval can score
// whole answers), loss_mask marks every answer position by default, or every position whose
// target is not PAD/ignored with loss_on_all_tokens.
//
// Generation is lazy: token p of a sample is computed from (seed, split, sample, p) in O(1), so a
// rank makes only its shard (and its targets), at any sequence length. Keys are distinct because
// record r's key is a pseudo-random permutation (a Feistel network with cycle walking over
// [0, 10^k)) of r; question j asks record perm(j) of another such permutation over [0, n);
// values are hashes.
#pragma once

#include "model/data/data_source.h"

namespace ringattn {

// Token ids: a digit is its own value, so dumps of token ids stay readable.
namespace retrieval_tokens {
inline constexpr int32_t kPad = 10, kBos = 11, kLine = 12, kColon = 13, kNewline = 14,
                         kQuestion = 15, kAnswer = 16;
inline constexpr int64_t kVocabSize = 17;  // without key tokens
inline constexpr int32_t kKeyBase = 17;    // first key token (key_vocab > 0)
}  // namespace retrieval_tokens

enum class RecordFormat {
  Line,      // LINE key COLON value NEWLINE
  ValueKey,  // value key
};
std::string_view record_format_name(RecordFormat f);  // "line", "value_key"

struct RetrievalOptions {
  RecordFormat record_format = RecordFormat::Line;
  int key_digits = 3;  // keys are unique within a sample, so records <= 10^key_digits
  // 0: keys in key_digits decimal digits; N > 0: each key is one of N key tokens (records <= N).
  int64_t key_vocab = 0;
  // 0: values in value_digits decimal digits; N > 0: each value is one of N value tokens (ids
  // after the key tokens), so an answer is one token.
  int64_t value_vocab = 0;
  // true: a question is QUESTION key ANSWER value; false: QUESTION key value, so the value follows
  // its key exactly as in the records minus the colon.
  bool answer_marker = true;
  int value_digits = 3;  // answer length in tokens
  // 0: as many records as fit the sequence length; else exactly this many (the rest is padding
  // after BOS), and a sequence too short for them is an error.
  int64_t num_records = 0;
  // Questions at the end of each sample, each about a different record: 1 to kMaxAnswers
  // (data_source.h). With num_records = 0, a sequence too short for them all holds as many
  // questions as records.
  int64_t questions = 1;
  // false: the loss counts only the answer tokens (the task); true: every predictable token.
  bool loss_on_all_tokens = false;
};

// Where things are in a sample of a given length (pure arithmetic, shared by the generator,
// eval and tests).
struct RetrievalLayout {
  // Tokens per key and per value (1 with key_vocab / value_vocab).
  int key_digits = 0, value_digits = 0;
  int64_t seq_len = 0, num_records = 0, num_questions = 1, padding = 0;
  bool answer_marker = true;
  RecordFormat record_format = RecordFormat::Line;
  int64_t record_len() const {
    return key_digits + value_digits + (record_format == RecordFormat::Line ? 3 : 0);
  }
  int64_t question_len() const { return key_digits + value_digits + 1 + (answer_marker ? 1 : 0); }
  int64_t records_begin() const { return 1 + padding; }
  int64_t question_begin() const { return records_begin() + num_records * record_len(); }
  // First position whose target is an answer digit of question j (its ANSWER marker); there are
  // value_digits of them.
  int64_t first_answer_slot(int64_t j) const {
    return question_begin() + j * question_len() + key_digits + (answer_marker ? 1 : 0);
  }
};

class RetrievalSource : public BatchSource {
 public:
  RetrievalSource(RetrievalOptions options, uint64_t seed);

  int64_t vocab_size() const override {
    return retrieval_tokens::kVocabSize + opt_.key_vocab + opt_.value_vocab;
  }
  std::string describe() const override;
  void check_seq_len(int64_t seq_len) const override;
  std::string decode(std::span<const int32_t> tokens) const override;

  // Raises the same errors as check_seq_len.
  RetrievalLayout layout(int64_t seq_len) const;
  // Token at global position p (0 <= p < seq_len) of a sample: what fill_sample uses.
  int32_t token_at(const RetrievalLayout& l, uint64_t sample_hash, int64_t p) const;
  uint64_t sample_hash(int64_t sample, Split split) const;

  const RetrievalOptions& options() const { return opt_; }

 protected:
  void fill_sample(int64_t sample, Split split, int64_t seq_len,
                   const std::vector<int64_t>& positions, const SampleSlots& out) const override;

 private:
  uint64_t key_of(uint64_t sample_hash, int64_t record) const;
  // Token i of record's key (or value): a digit, or the one key (value) token.
  int32_t key_token(uint64_t sample_hash, int64_t record, int i) const;
  int32_t value_token(uint64_t sample_hash, int64_t record, int i) const;
  // Record asked by question j: distinct for distinct j < num_records.
  int64_t asked_record(const RetrievalLayout& l, uint64_t sample_hash, int64_t j) const;
  RetrievalOptions opt_;
  uint64_t seed_;
  uint64_t key_space_, value_space_;  // 10^k, 10^v
};

// Decodes retrieval tokens to text (what RetrievalSource::decode returns).
// Key tokens print as "#042", value tokens (after the key_vocab key tokens) as "$017".
std::string retrieval_decode(std::span<const int32_t> tokens, int64_t key_vocab = 0);

}  // namespace ringattn
