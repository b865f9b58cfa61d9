// The embedded default task: synthetic long-context line retrieval, in the spirit of the Ring
// Attention paper's line-retrieval test. Needs no files; any length; its own 17-token vocabulary.
//
// A sample of S tokens (k = key digits, v = value digits, n records, P padding tokens):
//
//   BOS PAD*P  { LINE k1..kk COLON v1..vv NEWLINE } x n  QUESTION q1..qk ANSWER a1..av
//
// decoded: "<bos>___line 042: 917\nline 630: 005\n ... question 630 answer 005". Keys are
// distinct within a sample; the question asks for one record's key and the answer is its value.
//   record length  R = k + v + 3 tokens        question length Q = k + v + 2 tokens
//   S = 1 + P + n*R + Q; with num_records = 0, n = floor((S - 1 - Q) / R) and P = (S-1-Q) mod R.
//   Defaults k = v = 3: R = 9, Q = 8, and S = 2048 holds n = 226 records (P = 5).
// Padding sits right after BOS so the question stays last, where a causal model must answer it
// from the whole context.
//
// Loss: targets are next tokens; the last token (the answer's last digit) has none
// (kIgnoreIndex). The answer positions are the v positions whose target is an answer digit
// (ANSWER and a1..a(v-1)); answer_mask marks them always, loss_mask marks them by default, or
// every position whose target is not PAD/ignored with loss_on_all_tokens.
//
// Generation is lazy: token p of a sample is computed from (seed, split, sample, p) in O(1), so a
// rank makes only its shard (and its targets), at any sequence length. Keys are distinct because
// record r's key is a pseudo-random permutation (a Feistel network with cycle walking over
// [0, 10^k)) of r; values and the asked record are hashes.
#pragma once

#include "model/data/data_source.h"

namespace ringattn {

// Token ids: a digit is its own value, so dumps of token ids stay readable.
namespace retrieval_tokens {
inline constexpr int32_t kPad = 10, kBos = 11, kLine = 12, kColon = 13, kNewline = 14,
                         kQuestion = 15, kAnswer = 16;
inline constexpr int64_t kVocabSize = 17;
}  // namespace retrieval_tokens

struct RetrievalOptions {
  int key_digits = 3;    // keys are unique within a sample, so records <= 10^key_digits
  int value_digits = 3;  // answer length in tokens
  // 0: as many records as fit the sequence length; else exactly this many (the rest is padding
  // after BOS), and a sequence too short for them is an error.
  int64_t num_records = 0;
  // false: the loss counts only the answer tokens (the task); true: every predictable token.
  bool loss_on_all_tokens = false;
};

// Where things are in a sample of a given length (pure arithmetic, shared by the generator,
// eval and tests).
struct RetrievalLayout {
  int key_digits = 0, value_digits = 0;
  int64_t seq_len = 0, num_records = 0, padding = 0;
  int64_t record_len() const { return key_digits + value_digits + 3; }
  int64_t question_len() const { return key_digits + value_digits + 2; }
  int64_t records_begin() const { return 1 + padding; }
  int64_t question_begin() const { return records_begin() + num_records * record_len(); }
  // First position whose target is an answer digit (the ANSWER marker); there are value_digits.
  int64_t first_answer_slot() const { return seq_len - value_digits - 1; }
};

class RetrievalSource : public BatchSource {
 public:
  RetrievalSource(RetrievalOptions options, uint64_t seed);

  int64_t vocab_size() const override { return retrieval_tokens::kVocabSize; }
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
  RetrievalOptions opt_;
  uint64_t seed_;
  uint64_t key_space_, value_space_;  // 10^k, 10^v
  int half_bits_;                     // Feistel half width: 2^(2*half_bits) >= 10^k
};

// Decodes retrieval tokens to text (what RetrievalSource::decode returns).
std::string retrieval_decode(std::span<const int32_t> tokens);

}  // namespace ringattn
