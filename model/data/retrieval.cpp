#include "model/data/retrieval.h"

#include <fmt/format.h>

#include "core/error.h"
#include "model/data/hash.h"

namespace ringattn {

namespace {

using namespace retrieval_tokens;
using data_hash::combine;

// Purposes mixed into the hashes, so keys, values and the question draw independent numbers.
constexpr uint64_t kTagKey = 1, kTagValue = 2, kTagQuestion = 3;

uint64_t pow10(int e) {
  uint64_t r = 1;
  for (int i = 0; i < e; ++i) r *= 10;
  return r;
}

// Digit `i` (0 = most significant) of `x` written with `digits` digits.
int32_t digit_of(uint64_t x, int digits, int i) {
  for (int j = digits - 1; j > i; --j) x /= 10;
  return int32_t(x % 10);
}

}  // namespace

RetrievalSource::RetrievalSource(RetrievalOptions options, uint64_t seed)
    : opt_(options), seed_(seed) {
  // 18 digits: 10^18 < 2^60, so keys fit the Feistel network's two 30-bit halves and every
  // count stays far from overflow.
  RA_CHECK(opt_.key_digits >= 1 && opt_.key_digits <= 18,
           "retrieval: key_digits must be in [1, 18], got {}", opt_.key_digits);
  RA_CHECK(opt_.value_digits >= 1 && opt_.value_digits <= 18,
           "retrieval: value_digits must be in [1, 18], got {}", opt_.value_digits);
  RA_CHECK(opt_.num_records >= 0, "retrieval: num_records must be >= 0 (0: fill), got {}",
           opt_.num_records);
  key_space_ = pow10(opt_.key_digits);
  value_space_ = pow10(opt_.value_digits);
  int bits = 1;
  while ((uint64_t(1) << bits) < key_space_) ++bits;
  half_bits_ = (bits + 1) / 2;
}

std::string RetrievalSource::describe() const {
  return fmt::format(
      "retrieval (key {} digits, value {} digits, record {} tokens, {} records, loss on {})",
      opt_.key_digits, opt_.value_digits, opt_.key_digits + opt_.value_digits + 3,
      opt_.num_records == 0 ? std::string("as many as fit") : std::to_string(opt_.num_records),
      opt_.loss_on_all_tokens ? "all tokens" : "answer tokens");
}

RetrievalLayout RetrievalSource::layout(int64_t seq_len) const {
  RetrievalLayout l;
  l.key_digits = opt_.key_digits;
  l.value_digits = opt_.value_digits;
  l.seq_len = seq_len;
  const int64_t R = l.record_len(), Q = l.question_len();
  const int64_t room = seq_len - 1 - Q;  // after BOS and the question
  const int64_t want = opt_.num_records == 0 ? 1 : opt_.num_records;
  RA_CHECK(room >= want * R,
           "retrieval: sequence length {} is too short for {} record{}: it needs at least {} "
           "tokens (BOS, {} x {}-token records, a {}-token question)",
           seq_len, want, want == 1 ? "" : "s", 1 + Q + want * R, want, R, Q);
  l.num_records = opt_.num_records == 0 ? room / R : opt_.num_records;
  l.padding = room - l.num_records * R;
  RA_CHECK(uint64_t(l.num_records) <= key_space_,
           "retrieval: {} records at sequence length {} need distinct keys, but {} key digits "
           "allow only {}; raise key_digits or set num_records",
           l.num_records, seq_len, opt_.key_digits, key_space_);
  return l;
}

void RetrievalSource::check_seq_len(int64_t seq_len) const {
  (void)layout(seq_len);
}

uint64_t RetrievalSource::sample_hash(int64_t sample, Split split) const {
  return data_hash::hash3(seed_, split == Split::Train ? 0x7261696eu : 0x76616c69u,
                          uint64_t(sample));
}

// A bijection of [0, 10^k): a 4-round Feistel network permutes [0, 2^(2h)), and re-applying it
// until the result falls below 10^k ("cycle walking") restricts it to a permutation of the
// smaller range. 2^(2h) < 4 * 10^k, so that takes fewer than 4 rounds on average.
uint64_t RetrievalSource::key_of(uint64_t h, int64_t record) const {
  const uint64_t mask = (uint64_t(1) << half_bits_) - 1;
  const uint64_t kh = combine(h, kTagKey);
  uint64_t x = uint64_t(record);
  do {
    uint64_t left = x >> half_bits_, right = x & mask;
    for (uint64_t round = 0; round < 4; ++round) {
      const uint64_t f = combine(kh, (round << 32) | right) & mask;
      const uint64_t next = left ^ f;
      left = right;
      right = next;
    }
    x = (left << half_bits_) | right;
  } while (x >= key_space_);
  return x;
}

int32_t RetrievalSource::token_at(const RetrievalLayout& l, uint64_t h, int64_t p) const {
  if (p == 0) return kBos;
  if (p < l.records_begin()) return kPad;
  const int k = l.key_digits, v = l.value_digits;
  int64_t record, offset;  // which record the token belongs to, and where in its record
  bool question = p >= l.question_begin();
  if (question) {
    offset = p - l.question_begin();
    record = int64_t(data_hash::below(combine(h, kTagQuestion), uint64_t(l.num_records)));
  } else {
    record = (p - l.records_begin()) / l.record_len();
    offset = (p - l.records_begin()) % l.record_len();
  }
  // Record:   LINE key COLON value NEWLINE      Question: QUESTION key ANSWER value
  if (offset == 0) return question ? kQuestion : kLine;
  if (offset <= k) return digit_of(key_of(h, record), k, int(offset - 1));
  if (offset == k + 1) return question ? kAnswer : kColon;
  if (offset <= k + 1 + v) {
    const uint64_t value =
        data_hash::below(combine(combine(h, kTagValue), uint64_t(record)), value_space_);
    return digit_of(value, v, int(offset - k - 2));
  }
  return kNewline;
}

void RetrievalSource::fill_sample(int64_t sample, Split split, int64_t seq_len,
                                  const std::vector<int64_t>& positions,
                                  const SampleSlots& out) const {
  const RetrievalLayout l = layout(seq_len);
  const uint64_t h = sample_hash(sample, split);
  const int64_t first_answer = l.first_answer_slot();
  for (size_t i = 0; i < positions.size(); ++i) {
    const int64_t p = positions[i];
    out.tokens[i] = token_at(l, h, p);
    // The target lives at p + 1, possibly on another rank: recomputed here, not communicated.
    const int32_t target = p + 1 < seq_len ? token_at(l, h, p + 1) : kIgnoreIndex;
    out.targets[i] = target;
    const bool answer = p >= first_answer && p + 1 < seq_len;
    out.answer_mask[i] = answer ? 1 : 0;
    const bool counts =
        opt_.loss_on_all_tokens ? (target != kIgnoreIndex && target != kPad) : answer;
    out.loss_mask[i] = counts ? 1.0f : 0.0f;
  }
}

std::string retrieval_decode(std::span<const int32_t> tokens) {
  std::string s;
  for (int32_t t : tokens) {
    if (t >= 0 && t <= 9) {
      s += char('0' + t);
      continue;
    }
    switch (t) {
      case kPad:
        s += '_';
        break;
      case kBos:
        s += "<bos>";
        break;
      case kLine:
        s += "line ";
        break;
      case kColon:
        s += ": ";
        break;
      case kNewline:
        s += '\n';
        break;
      case kQuestion:
        s += "question ";
        break;
      case kAnswer:
        s += " answer ";
        break;
      default:
        s += fmt::format("<{}>", t);
    }
  }
  return s;
}

std::string RetrievalSource::decode(std::span<const int32_t> tokens) const {
  return retrieval_decode(tokens);
}

}  // namespace ringattn
