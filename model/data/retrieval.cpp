#include "model/data/retrieval.h"

#include <fmt/format.h>

#include <algorithm>

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

std::string_view record_format_name(RecordFormat f) {
  return f == RecordFormat::Line ? "line" : "value_key";
}

RetrievalSource::RetrievalSource(RetrievalOptions options, uint64_t seed)
    : opt_(options), seed_(seed) {
  // 18 digits: 10^18 < 2^60, so keys fit the Feistel network's two 30-bit halves and every
  // count stays far from overflow.
  RA_CHECK(opt_.key_vocab >= 0 && opt_.key_vocab <= (int64_t(1) << 24),
           "retrieval: key_vocab must be in [0, 2^24] (0: digit keys), got {}", opt_.key_vocab);
  RA_CHECK(opt_.value_vocab >= 0 && opt_.value_vocab <= (int64_t(1) << 24),
           "retrieval: value_vocab must be in [0, 2^24] (0: digit values), got {}",
           opt_.value_vocab);
  RA_CHECK(opt_.key_digits >= 1 && opt_.key_digits <= 18,
           "retrieval: key_digits must be in [1, 18], got {}", opt_.key_digits);
  RA_CHECK(opt_.value_digits >= 1 && opt_.value_digits <= 18,
           "retrieval: value_digits must be in [1, 18], got {}", opt_.value_digits);
  RA_CHECK(opt_.num_records >= 0, "retrieval: num_records must be >= 0 (0: fill), got {}",
           opt_.num_records);
  RA_CHECK(opt_.questions >= 1 && opt_.questions <= kMaxAnswers,
           "retrieval: questions must be in [1, {}], got {}", kMaxAnswers, opt_.questions);
  key_space_ = opt_.key_vocab > 0 ? uint64_t(opt_.key_vocab) : pow10(opt_.key_digits);
  value_space_ = opt_.value_vocab > 0 ? uint64_t(opt_.value_vocab) : pow10(opt_.value_digits);
}

std::string RetrievalSource::describe() const {
  const int key_len = opt_.key_vocab > 0 ? 1 : opt_.key_digits;
  const int value_len = opt_.value_vocab > 0 ? 1 : opt_.value_digits;
  const int delimiters = opt_.record_format == RecordFormat::Line ? 3 : 0;
  return fmt::format(
      "retrieval (keys {}, values {}, {} records of {} tokens, {} records, {} question{} "
      "per sample, loss on {})",
      opt_.key_vocab > 0 ? fmt::format("1 token of {}", opt_.key_vocab)
                         : fmt::format("{} digits", opt_.key_digits),
      opt_.value_vocab > 0 ? fmt::format("1 token of {}", opt_.value_vocab)
                           : fmt::format("{} digits", opt_.value_digits),
      record_format_name(opt_.record_format), key_len + value_len + delimiters,
      opt_.num_records == 0 ? std::string("as many as fit") : std::to_string(opt_.num_records),
      opt_.questions, opt_.questions == 1 ? "" : "s",
      opt_.loss_on_all_tokens ? "all tokens" : "answer tokens");
}

RetrievalLayout RetrievalSource::layout(int64_t seq_len) const {
  RetrievalLayout l;
  l.key_digits = opt_.key_vocab > 0 ? 1 : opt_.key_digits;
  l.value_digits = opt_.value_vocab > 0 ? 1 : opt_.value_digits;
  l.answer_marker = opt_.answer_marker;
  l.record_format = opt_.record_format;
  l.seq_len = seq_len;
  l.num_questions = opt_.questions;
  const int64_t R = l.record_len(), Q = l.question_len();
  // Filling the sequence, a length too short for every question asks as many as it holds
  // records (each record asked once), so one config serves a curriculum of lengths.
  if (opt_.num_records == 0)
    l.num_questions = std::max<int64_t>(1, std::min(l.num_questions, (seq_len - 1) / (R + Q)));
  const int64_t m = l.num_questions;
  const int64_t room = seq_len - 1 - m * Q;  // after BOS and the questions
  // Each question asks a different record, so there are at least as many records as questions.
  const int64_t want = std::max<int64_t>(opt_.num_records, m);
  RA_CHECK(opt_.num_records == 0 || opt_.num_records >= m,
           "retrieval: {} questions per sample ask {} different records, but num_records is {}", m,
           m, opt_.num_records);
  RA_CHECK(room >= want * R,
           "retrieval: sequence length {} is too short for {} record{} and {} question{}: it "
           "needs at least {} tokens (BOS, {} x {}-token records, {} x {}-token questions)",
           seq_len, want, want == 1 ? "" : "s", m, m == 1 ? "" : "s", 1 + m * Q + want * R, want, R,
           m, Q);
  l.num_records = opt_.num_records == 0 ? room / R : opt_.num_records;
  l.padding = room - l.num_records * R;
  RA_CHECK(uint64_t(l.num_records) <= key_space_,
           "retrieval: {} records at sequence length {} need distinct keys, but {} allow only {}; "
           "raise {} or set num_records",
           l.num_records, seq_len,
           opt_.key_vocab > 0 ? fmt::format("{} key tokens", opt_.key_vocab)
                              : fmt::format("{} key digits", opt_.key_digits),
           key_space_, opt_.key_vocab > 0 ? "key_vocab" : "key_digits");
  return l;
}

void RetrievalSource::check_seq_len(int64_t seq_len) const {
  (void)layout(seq_len);
}

uint64_t RetrievalSource::sample_hash(int64_t sample, Split split) const {
  return data_hash::hash3(seed_, split == Split::Train ? 0x7261696eu : 0x76616c69u,
                          uint64_t(sample));
}

namespace {

// A pseudo-random bijection of [0, n) keyed by `key`: a 4-round Feistel network permutes
// [0, 2^(2h)) with 2^(2h) >= n, and re-applying it until the result falls below n ("cycle
// walking") restricts it to a permutation of the smaller range. 2^(2h) < 4n, so that takes fewer
// than 4 rounds on average.
uint64_t permute(uint64_t key, uint64_t x, uint64_t n) {
  int bits = 1;
  while ((uint64_t(1) << bits) < n) ++bits;
  const int half = (bits + 1) / 2;
  const uint64_t mask = (uint64_t(1) << half) - 1;
  do {
    uint64_t left = x >> half, right = x & mask;
    for (uint64_t round = 0; round < 4; ++round) {
      const uint64_t f = combine(key, (round << 32) | right) & mask;
      const uint64_t next = left ^ f;
      left = right;
      right = next;
    }
    x = (left << half) | right;
  } while (x >= n);
  return x;
}

}  // namespace

uint64_t RetrievalSource::key_of(uint64_t h, int64_t record) const {
  return permute(combine(h, kTagKey), uint64_t(record), key_space_);
}

// Question j asks record perm(j) of a permutation of the n records: distinct for distinct j.
int64_t RetrievalSource::asked_record(const RetrievalLayout& l, uint64_t h, int64_t j) const {
  return int64_t(permute(combine(h, kTagQuestion), uint64_t(j), uint64_t(l.num_records)));
}

int32_t RetrievalSource::key_token(uint64_t h, int64_t record, int i) const {
  const uint64_t key = key_of(h, record);
  return opt_.key_vocab > 0 ? kKeyBase + int32_t(key) : digit_of(key, opt_.key_digits, i);
}

int32_t RetrievalSource::value_token(uint64_t h, int64_t record, int i) const {
  const uint64_t value =
      data_hash::below(combine(combine(h, kTagValue), uint64_t(record)), value_space_);
  return opt_.value_vocab > 0 ? kKeyBase + int32_t(opt_.key_vocab + value)
                              : digit_of(value, opt_.value_digits, i);
}

int32_t RetrievalSource::token_at(const RetrievalLayout& l, uint64_t h, int64_t p) const {
  if (p == 0) return kBos;
  if (p < l.records_begin()) return kPad;
  const int k = l.key_digits, v = l.value_digits;
  if (p < l.question_begin()) {
    const int64_t record = (p - l.records_begin()) / l.record_len();
    const int offset = int((p - l.records_begin()) % l.record_len());
    if (l.record_format == RecordFormat::ValueKey)  // value key
      return offset < v ? value_token(h, record, offset) : key_token(h, record, offset - v);
    // LINE key COLON value NEWLINE
    if (offset == 0) return kLine;
    if (offset <= k) return key_token(h, record, offset - 1);
    if (offset == k + 1) return kColon;
    if (offset < k + 2 + v) return value_token(h, record, offset - k - 2);
    return kNewline;
  }
  // QUESTION key [ANSWER] value
  const int64_t record = asked_record(l, h, (p - l.question_begin()) / l.question_len());
  const int offset = int((p - l.question_begin()) % l.question_len());
  if (offset == 0) return kQuestion;
  if (offset <= k) return key_token(h, record, offset - 1);
  if (l.answer_marker && offset == k + 1) return kAnswer;
  return value_token(h, record, offset - k - (l.answer_marker ? 2 : 1));
}

void RetrievalSource::fill_sample(int64_t sample, Split split, int64_t seq_len,
                                  const std::vector<int64_t>& positions,
                                  const SampleSlots& out) const {
  const RetrievalLayout l = layout(seq_len);
  const uint64_t h = sample_hash(sample, split);
  const int64_t qb = l.question_begin(), Q = l.question_len();
  for (size_t i = 0; i < positions.size(); ++i) {
    const int64_t p = positions[i];
    out.tokens[i] = token_at(l, h, p);
    // The target lives at p + 1, possibly on another rank: recomputed here, not communicated.
    const int32_t target = p + 1 < seq_len ? token_at(l, h, p + 1) : kIgnoreIndex;
    out.targets[i] = target;
    // Answer slots of question j: the v positions whose targets are its value tokens (ANSWER,
    // a1..a(v-1); or the key's last token, a1..a(v-1) without the marker).
    const int64_t offset = p >= qb ? (p - qb) % Q : -1;
    const int64_t first = l.key_digits + (l.answer_marker ? 1 : 0);
    const bool answer = offset >= first && offset < first + l.value_digits;
    out.answer_mask[i] = answer ? uint8_t(1 + (p - qb) / Q) : 0;
    const bool counts =
        opt_.loss_on_all_tokens ? (target != kIgnoreIndex && target != kPad) : answer;
    out.loss_mask[i] = counts ? 1.0f : 0.0f;
  }
}

std::string retrieval_decode(std::span<const int32_t> tokens, int64_t key_vocab) {
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
        if (t >= kKeyBase + key_vocab)
          s += fmt::format("${:03}", t - kKeyBase - key_vocab);
        else if (t >= kKeyBase)
          s += fmt::format("#{:03}", t - kKeyBase);
        else
          s += fmt::format("<{}>", t);
    }
  }
  return s;
}

std::string RetrievalSource::decode(std::span<const int32_t> tokens) const {
  return retrieval_decode(tokens, opt_.key_vocab);
}

}  // namespace ringattn
