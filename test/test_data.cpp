// The data pipeline (model/data): determinism, sharding over sp ranks in every layout, next-token
// targets across shard boundaries, the retrieval task's structure, and text and token files with
// their errors. Several sp ranks are simulated in one process: a source is a pure function of the
// request, so no MPI is needed (ctest still runs this group on 1, 2 and 4 processes).
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "model/data/data_source.h"
#include "model/data/file_source.h"
#include "model/data/make_source.h"
#include "model/data/retrieval.h"
#include "model/data/token_file.h"
#include "test_util.h"

using namespace ringattn;
using Catch::Contains;

namespace {

struct TempFile : test::TempPath {
  explicit TempFile(const std::string& tag) : TempPath("data", tag) {}
};
using test::write_bytes;

std::string random_text(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = char(rng() & 0xff);
  return s;
}

std::string le(uint64_t v, int bytes) {
  std::string s;
  for (int i = 0; i < bytes; ++i) s += char((v >> (8 * i)) & 0xff);
  return s;
}

std::string token_header(const std::string& magic, uint32_t version, uint32_t width,
                         uint64_t count) {
  return magic + le(version, 4) + le(width, 4) + le(count, 8);
}

std::vector<int32_t> row(const Tensor& t, int64_t b) {
  const int64_t n = t.dim(1);
  const int32_t* p = t.data<int32_t>() + b * n;
  return std::vector<int32_t>(p, p + n);
}

std::vector<float> row_f(const Tensor& t, int64_t b) {
  const int64_t n = t.dim(1);
  const float* p = t.data<float>() + b * n;
  return std::vector<float>(p, p + n);
}

std::vector<uint8_t> row_u8(const Tensor& t, int64_t b) {
  const int64_t n = t.dim(1);
  const uint8_t* p = t.data<uint8_t>() + b * n;
  return std::vector<uint8_t>(p, p + n);
}

BatchRequest request(int64_t step, int64_t seq_len, int64_t batch = 2) {
  BatchRequest r;
  r.step = step;
  r.seq_len = seq_len;
  r.batch_per_rank = batch;
  return r;
}

// The whole sequences (one sp rank) of a request.
Batch whole(const BatchSource& src, BatchRequest r) {
  r.sp_rank = 0;
  r.sp_size = 1;
  return src.get(r);
}

// Every sp rank's shard, put back in global order, must equal the one-rank batch; each shard's
// targets must be the global next tokens, wherever those live.
void check_reassembly(const BatchSource& src, int64_t seq_len) {
  const BatchRequest base = request(3, seq_len, 2);
  const Batch full = whole(src, base);
  for (RingLayout layout : {RingLayout::Contiguous, RingLayout::Zigzag, RingLayout::Striped}) {
    for (int n : {1, 2, 3, 4}) {
      const int64_t parts = layout == RingLayout::Zigzag ? 2 * n : n;
      if (seq_len % parts != 0) continue;
      INFO("layout " << layout_name(layout) << ", " << n << " sp ranks, S = " << seq_len);
      std::vector<std::vector<int32_t>> tok(2, std::vector<int32_t>(size_t(seq_len), -7));
      auto tgt = tok, seg = tok;
      std::vector<std::vector<float>> loss(2, std::vector<float>(size_t(seq_len), -7.f));
      std::vector<std::vector<uint8_t>> ans(2, std::vector<uint8_t>(size_t(seq_len), 7));
      for (int r = 0; r < n; ++r) {
        BatchRequest req = base;
        req.layout = layout;
        req.sp_rank = r;
        req.sp_size = n;
        const Batch shard = src.get(req);
        REQUIRE(shard.positions == layout_positions(layout, seq_len, n, r));
        REQUIRE(shard.samples == full.samples);
        REQUIRE(shard.tokens.shape() == Shape{2, seq_len / n});
        for (int64_t b = 0; b < 2; ++b) {
          const auto t = row(shard.tokens, b), g = row(shard.targets, b);
          const auto l = row_f(shard.loss_mask, b);
          const auto a = row_u8(shard.answer_mask, b);
          const auto sg = src.has_segments() ? row(shard.segment_ids, b) : std::vector<int32_t>();
          const auto ft = row(full.tokens, b), fg = row(full.targets, b);
          for (size_t i = 0; i < shard.positions.size(); ++i) {
            const size_t p = size_t(shard.positions[i]);
            tok[b][p] = t[i];
            tgt[b][p] = g[i];
            loss[b][p] = l[i];
            ans[b][p] = a[i];
            if (src.has_segments()) seg[b][p] = sg[i];
            // The next token, wherever it lives (another rank in zigzag and striped).
            if (p + 1 < size_t(seq_len)) REQUIRE(g[i] == ft[p + 1]);
            if (p + 1 == size_t(seq_len)) REQUIRE(g[i] == fg[p]);
          }
        }
      }
      for (int64_t b = 0; b < 2; ++b) {
        REQUIRE(tok[b] == row(full.tokens, b));
        REQUIRE(tgt[b] == row(full.targets, b));
        REQUIRE(loss[b] == row_f(full.loss_mask, b));
        REQUIRE(ans[b] == row_u8(full.answer_mask, b));
        if (src.has_segments()) REQUIRE(seg[b] == row(full.segment_ids, b));
      }
    }
  }
}

// A retrieval sample parsed back from its decoded text (independently of the generator).
struct Parsed {
  std::vector<std::pair<std::string, std::string>> records;    // key, value
  std::string question_key, answer;                            // the first question
  std::vector<std::pair<std::string, std::string>> questions;  // key, answer of each
  size_t padding = 0;
};

Parsed parse_retrieval(const std::string& text) {
  Parsed p;
  REQUIRE(text.rfind("<bos>", 0) == 0);
  size_t i = 5;
  while (i < text.size() && text[i] == '_') ++i, ++p.padding;
  while (text.compare(i, 5, "line ") == 0) {
    const size_t colon = text.find(": ", i), nl = text.find('\n', i);
    REQUIRE(colon != std::string::npos);
    REQUIRE(nl != std::string::npos);
    p.records.emplace_back(text.substr(i + 5, colon - i - 5),
                           text.substr(colon + 2, nl - colon - 2));
    i = nl + 1;
  }
  REQUIRE(text.compare(i, 9, "question ") == 0);
  while (i < text.size()) {
    REQUIRE(text.compare(i, 9, "question ") == 0);
    const size_t ans = text.find(" answer ", i);
    REQUIRE(ans != std::string::npos);
    size_t end = text.find("question ", ans);
    if (end == std::string::npos) end = text.size();
    p.questions.emplace_back(text.substr(i + 9, ans - i - 9), text.substr(ans + 8, end - ans - 8));
    i = end;
  }
  p.question_key = p.questions.front().first;
  p.answer = p.questions.front().second;
  return p;
}

// The whole sample as text: tokens then the last target (absent for retrieval: ignore index).
std::string sample_text(const RetrievalSource& src, const Batch& full, int64_t b) {
  return src.decode(row(full.tokens, b));
}

}  // namespace

TEST_CASE("data: retrieval batches are deterministic in seed, split and step", "[data]") {
  RetrievalSource a(RetrievalOptions{}, 42), same(RetrievalOptions{}, 42),
      other(RetrievalOptions{}, 43);
  const Batch x = whole(a, request(5, 512, 3)), y = whole(same, request(5, 512, 3));
  for (int64_t b = 0; b < 3; ++b) {
    REQUIRE(row(x.tokens, b) == row(y.tokens, b));
    REQUIRE(row(x.targets, b) == row(y.targets, b));
    REQUIRE(row_f(x.loss_mask, b) == row_f(y.loss_mask, b));
  }
  REQUIRE(x.samples == std::vector<int64_t>{15, 16, 17});
  const Batch next = whole(a, request(6, 512, 3)), seeded = whole(other, request(5, 512, 3));
  BatchRequest val = request(5, 512, 3);
  val.split = Split::Validation;
  const Batch held_out = whole(a, val);
  for (int64_t b = 0; b < 3; ++b) {
    REQUIRE(row(x.tokens, b) != row(next.tokens, b));
    REQUIRE(row(x.tokens, b) != row(seeded.tokens, b));
    REQUIRE(row(x.tokens, b) != row(held_out.tokens, b));
  }
  // Rows of one batch are different samples.
  REQUIRE(row(x.tokens, 0) != row(x.tokens, 1));
}

TEST_CASE("data: retrieval record length and count (>= 64 records at 2048 tokens)", "[data]") {
  RetrievalSource src(RetrievalOptions{}, 1);
  const RetrievalLayout l = src.layout(2048);
  CHECK(l.record_len() == 9);    // LINE k k k COLON v v v NEWLINE
  CHECK(l.question_len() == 8);  // QUESTION k k k ANSWER v v v
  CHECK(l.num_records == 226);   // floor((2048 - 1 - 8) / 9)
  CHECK(l.padding == 5);
  CHECK(l.num_records >= 64);
  for (int k : {1, 2, 3, 4})
    for (int v : {1, 2, 5}) {
      RetrievalOptions o;
      o.key_digits = k;
      o.value_digits = v;
      RetrievalSource s(o, 1);
      for (int64_t S : {int64_t(30), int64_t(97), int64_t(1000)}) {
        const int64_t R = k + v + 3, Q = k + v + 2, n = (S - 1 - Q) / R;
        if (n < 1 || n > int64_t(std::pow(10, k))) continue;
        const RetrievalLayout sl = s.layout(S);
        CHECK(sl.num_records == n);
        CHECK(1 + sl.padding + sl.num_records * R + Q == S);
        const Parsed p = parse_retrieval(sample_text(s, whole(s, request(0, S, 1)), 0));
        CHECK(int64_t(p.records.size()) == n);
        CHECK(int64_t(p.padding) == sl.padding);
      }
    }
}

TEST_CASE("data: retrieval question key appears once and the answer is its value", "[data]") {
  RetrievalSource src(RetrievalOptions{}, 7);
  for (int64_t S : {int64_t(64), int64_t(2048)}) {
    const Batch full = whole(src, request(2, S, 4));
    for (int64_t b = 0; b < 4; ++b) {
      const Parsed p = parse_retrieval(sample_text(src, full, b));
      INFO(sample_text(src, full, b));
      std::set<std::string> keys;
      int found = 0;
      for (const auto& [key, value] : p.records) {
        CHECK(key.size() == 3);
        CHECK(value.size() == 3);
        keys.insert(key);
        if (key == p.question_key) {
          ++found;
          CHECK(value == p.answer);
        }
      }
      CHECK(keys.size() == p.records.size());  // keys are distinct within a sample
      CHECK(found == 1);
      CHECK(int64_t(p.records.size()) == src.layout(S).num_records);
    }
  }
  // The asked record is spread over the context, not always the same one.
  std::set<std::string> answers_at;
  const Batch many = whole(src, request(0, 2048, 16));
  for (int64_t b = 0; b < 16; ++b) {
    const Parsed p = parse_retrieval(sample_text(src, many, b));
    for (size_t r = 0; r < p.records.size(); ++r)
      if (p.records[r].first == p.question_key) answers_at.insert(std::to_string(r));
  }
  CHECK(answers_at.size() >= 8);
}

TEST_CASE("data: retrieval loss mask covers exactly the answer tokens", "[data]") {
  using namespace retrieval_tokens;
  RetrievalOptions o;
  o.value_digits = 4;
  RetrievalSource src(o, 3);
  const int64_t S = 300;
  const Batch full = whole(src, request(1, S, 2));
  for (int64_t b = 0; b < 2; ++b) {
    const auto tok = row(full.tokens, b), tgt = row(full.targets, b);
    const auto loss = row_f(full.loss_mask, b);
    const auto ans = row_u8(full.answer_mask, b);
    CHECK(tok[0] == kBos);
    CHECK(tgt[S - 1] == kIgnoreIndex);
    CHECK(tok[S - 5] == kAnswer);
    for (int64_t p = 0; p < S; ++p) {
      const bool answer = p >= S - 5 && p <= S - 2;  // targets: the 4 answer digits
      CHECK(loss[p] == (answer ? 1.0f : 0.0f));
      CHECK(ans[p] == (answer ? 1 : 0));
      if (answer) CHECK((tgt[p] >= 0 && tgt[p] <= 9));
    }
    // The masked targets spell the answer.
    const Parsed parsed = parse_retrieval(src.decode(tok));
    std::string spelled;
    for (int64_t p = S - 5; p <= S - 2; ++p) spelled += char('0' + tgt[p]);
    CHECK(spelled == parsed.answer);
  }
  const std::vector<AnswerSlot> slots = answer_slots(full);
  REQUIRE(slots.size() == 8);
  CHECK(slots[0].row == 0);
  CHECK(slots[0].position == S - 5);
  CHECK(slots[7].row == 1);
  CHECK(slots[7].position == S - 2);

  // Predictions equal to the targets score every answer token; all-zero predictions only the
  // zero digits.
  Tensor pred = full.targets.clone();
  AnswerTally t = tally_answers(full, pred);
  REQUIRE(t.total.size() == size_t(2 * kMaxAnswers));
  CHECK(t.total[0] == 4);            // row 0, answer 1
  CHECK(t.total[kMaxAnswers] == 4);  // row 1, answer 1
  CHECK(t.correct[0] == 4);
  CHECK(t.correct[kMaxAnswers] == 4);
  CHECK(t.answers() == 2);
  CHECK(t.exact() == 2);
  pred.fill_zero();
  t = tally_answers(full, pred);
  int64_t all_right = 0;
  for (int64_t b = 0; b < 2; ++b) {
    int64_t zeros = 0;
    for (int64_t p = S - 5; p <= S - 2; ++p) zeros += row(full.targets, b)[p] == 0;
    CHECK(t.correct[size_t(b * kMaxAnswers)] == zeros);
    all_right += zeros == 4 ? 1 : 0;
  }
  CHECK(t.answers() == 2);
  CHECK(t.exact() == all_right);

  // loss_on_all_tokens: every position with a real, non-padding target; answers still marked.
  o.loss_on_all_tokens = true;
  o.num_records = 10;  // leaves padding after BOS
  RetrievalSource all(o, 3);
  const Batch fa = whole(all, request(1, S, 1));
  const auto tgt = row(fa.targets, 0);
  const auto loss = row_f(fa.loss_mask, 0);
  const auto ans = row_u8(fa.answer_mask, 0);
  int64_t counted = 0;
  for (int64_t p = 0; p < S; ++p) {
    CHECK(loss[p] == ((tgt[p] == kIgnoreIndex || tgt[p] == kPad) ? 0.0f : 1.0f));
    CHECK(ans[p] == ((p >= S - 5 && p <= S - 2) ? 1 : 0));
    counted += loss[p] > 0;
  }
  CHECK(counted == S - 1 - all.layout(S).padding);
}

TEST_CASE("data: retrieval with several questions per sample", "[data]") {
  using namespace retrieval_tokens;
  RetrievalOptions o;
  o.questions = 16;
  RetrievalSource src(o, 11);
  const int64_t S = 2048;
  const RetrievalLayout l = src.layout(S);
  CHECK(l.num_questions == 16);
  CHECK(l.num_records == (S - 1 - 16 * 8) / 9);  // 213
  CHECK(1 + l.padding + l.num_records * 9 + 16 * 8 == S);
  const Batch full = whole(src, request(2, S, 3));
  for (int64_t b = 0; b < 3; ++b) {
    const Parsed parsed = parse_retrieval(sample_text(src, full, b));
    REQUIRE(int64_t(parsed.records.size()) == l.num_records);
    REQUIRE(parsed.questions.size() == 16);
    std::set<std::string> asked;
    for (const auto& [key, answer] : parsed.questions) {
      asked.insert(key);
      const auto it = std::find_if(parsed.records.begin(), parsed.records.end(),
                                   [&](const auto& r) { return r.first == key; });
      REQUIRE(it != parsed.records.end());
      CHECK(answer == it->second);  // each answer is the value of the record asked
    }
    CHECK(asked.size() == 16);  // distinct records: no answer can be copied from another question
    // Answer j + 1 marks the 3 slots whose targets are the digits of question j's answer; the loss
    // counts exactly those.
    const auto ans = row_u8(full.answer_mask, b);
    const auto loss = row_f(full.loss_mask, b);
    const auto tgt = row(full.targets, b);
    for (int64_t j = 0; j < 16; ++j) {
      std::string spelled;
      for (int64_t p = l.first_answer_slot(j); p < l.first_answer_slot(j) + 3; ++p) {
        CHECK(ans[p] == j + 1);
        spelled += char('0' + tgt[p]);
      }
      CHECK(spelled == parsed.questions[size_t(j)].second);
    }
    int64_t marked = 0;
    for (int64_t p = 0; p < S; ++p) {
      marked += ans[p] != 0;
      CHECK(loss[p] == (ans[p] != 0 ? 1.0f : 0.0f));
    }
    CHECK(marked == 16 * 3);
  }
  // A wrong digit in one answer fails that answer only.
  Tensor pred = full.targets.clone();
  pred.data<int32_t>()[l.first_answer_slot(5) + 1] = kPad;
  const AnswerTally t = tally_answers(full, pred);
  CHECK(t.answers() == 3 * 16);
  CHECK(t.exact() == 3 * 16 - 1);

  // More questions than records cannot be asked.
  RetrievalOptions few = o;
  few.num_records = 8;
  CHECK_THROWS_WITH(RetrievalSource(few, 1).layout(S),
                    Contains("16 questions per sample ask 16 different records"));
  RetrievalOptions none = o;
  none.questions = 0;
  CHECK_THROWS_WITH(RetrievalSource(none, 1), Contains("questions must be in [1, 255]"));
}

TEST_CASE("data: retrieval with one-token keys and values", "[data]") {
  using namespace retrieval_tokens;
  RetrievalOptions o;
  o.key_vocab = 300;
  o.value_vocab = 50;
  o.questions = 4;
  RetrievalSource src(o, 5);
  CHECK(src.vocab_size() == 17 + 300 + 50);
  const int64_t S = 512;
  const RetrievalLayout l = src.layout(S);
  CHECK(l.record_len() == 5);    // LINE key COLON value NEWLINE
  CHECK(l.question_len() == 4);  // QUESTION key ANSWER value
  CHECK(l.num_records == (S - 1 - 4 * 4) / 5);
  const Batch full = whole(src, request(0, S, 2));
  for (int64_t b = 0; b < 2; ++b) {
    const auto tok = row(full.tokens, b);
    for (int32_t t : tok) CHECK((t >= 0 && t < src.vocab_size()));
    const Parsed parsed = parse_retrieval(sample_text(src, full, b));
    REQUIRE(int64_t(parsed.records.size()) == l.num_records);
    std::set<std::string> keys;
    for (const auto& [key, value] : parsed.records) {
      keys.insert(key);
      CHECK(key.front() == '#');
      CHECK(value.front() == '$');
    }
    CHECK(int64_t(keys.size()) == l.num_records);  // distinct one-token keys
    REQUIRE(parsed.questions.size() == 4);
    for (const auto& [key, answer] : parsed.questions) {
      const auto it = std::find_if(parsed.records.begin(), parsed.records.end(),
                                   [&](const auto& r) { return r.first == key; });
      REQUIRE(it != parsed.records.end());
      CHECK(answer == it->second);
    }
    // One answer slot per question: the ANSWER marker, whose target is the value token.
    const auto ans = row_u8(full.answer_mask, b);
    const auto tgt = row(full.targets, b);
    for (int64_t j = 0; j < 4; ++j) {
      const int64_t p = l.first_answer_slot(j);
      CHECK(tok[p] == kAnswer);
      CHECK(ans[p] == j + 1);
      CHECK(tgt[p] >= kKeyBase + 300);
    }
  }
  // Without the answer marker a question is QUESTION key value: the key predicts the value.
  RetrievalOptions bare = o;
  bare.answer_marker = false;
  RetrievalSource bsrc(bare, 5);
  const RetrievalLayout bl = bsrc.layout(S);
  CHECK(bl.question_len() == 3);
  const Batch bfull = whole(bsrc, request(0, S, 1));
  const auto btok = row(bfull.tokens, 0), btgt = row(bfull.targets, 0);
  const auto bans = row_u8(bfull.answer_mask, 0);
  for (int64_t j = 0; j < 4; ++j) {
    const int64_t p = bl.first_answer_slot(j);
    CHECK(btok[p - 1] == kQuestion);
    CHECK((btok[p] >= kKeyBase && btok[p] < kKeyBase + 300));  // the key
    CHECK(bans[p] == j + 1);
    CHECK(btgt[p] >= kKeyBase + 300);  // its value
    // The same key, then the same value, appear in a record earlier on.
    bool found = false;
    for (int64_t r = 0; r + 2 < bl.question_begin(); ++r)
      found |= btok[r] == btok[p] && btok[r + 1] == kColon && btok[r + 2] == btgt[p];
    CHECK(found);
  }

  // Keys must be distinct: more records than key tokens is an error naming key_vocab.
  RetrievalOptions small = o;
  small.key_vocab = 20;
  CHECK_THROWS_WITH(RetrievalSource(small, 1).layout(S), Contains("raise key_vocab"));
}

TEST_CASE("data: retrieval value_key records (value then key, no delimiters)", "[data]") {
  using namespace retrieval_tokens;
  for (bool one_token : {true, false}) {
    CAPTURE(one_token);
    RetrievalOptions o;
    o.record_format = RecordFormat::ValueKey;
    o.answer_marker = false;
    o.questions = 6;
    if (one_token) {
      o.key_vocab = 200;
      o.value_vocab = 40;
    } else {
      o.key_digits = 2;
      o.value_digits = 3;
    }
    RetrievalSource src(o, 9);
    const int64_t S = 256;
    const RetrievalLayout l = src.layout(S);
    const int k = l.key_digits, v = l.value_digits;
    CHECK(l.record_len() == k + v);
    CHECK(l.question_len() == k + v + 1);  // QUESTION key value
    CHECK(l.num_records == (S - 1 - 6 * (k + v + 1)) / (k + v));
    CHECK_THAT(src.describe(), Contains("value_key records of " + std::to_string(k + v)));
    const Batch full = whole(src, request(2, S, 2));
    for (int64_t b = 0; b < 2; ++b) {
      const auto tok = row(full.tokens, b), tgt = row(full.targets, b);
      const auto ans = row_u8(full.answer_mask, b);
      auto span_of = [&](int64_t at, int len) {
        return std::vector<int32_t>(tok.begin() + at, tok.begin() + at + len);
      };
      std::vector<std::vector<int32_t>> keys, values;
      for (int64_t r = 0; r < l.num_records; ++r) {
        const int64_t at = l.records_begin() + r * l.record_len();
        values.push_back(span_of(at, v));
        keys.push_back(span_of(at + v, k));
        for (int32_t t : values.back())  // value tokens, never a delimiter
          CHECK((one_token ? t >= kKeyBase + 200 : (t >= 0 && t <= 9)));
        for (int32_t t : keys.back())
          CHECK((one_token ? (t >= kKeyBase && t < kKeyBase + 200) : (t >= 0 && t <= 9)));
      }
      CHECK(std::set<std::vector<int32_t>>(keys.begin(), keys.end()).size() == keys.size());
      std::set<int64_t> asked;
      for (int64_t j = 0; j < 6; ++j) {
        const int64_t q = l.question_begin() + j * l.question_len();
        CHECK(tok[q] == kQuestion);
        const auto key = span_of(q + 1, k);
        const auto it = std::find(keys.begin(), keys.end(), key);
        REQUIRE(it != keys.end());
        asked.insert(it - keys.begin());
        // The answer slots predict the asked record's value, digit by digit.
        const int64_t first = l.first_answer_slot(j);
        CHECK(first == q + k);
        for (int i = 0; i < v; ++i) {
          CHECK(ans[first + i] == j + 1);
          CHECK(tgt[first + i] == values[size_t(it - keys.begin())][size_t(i)]);
        }
        CHECK(ans[first + v] == 0);
      }
      CHECK(asked.size() == 6);  // six different records
    }
    check_reassembly(src, S);
  }
}

TEST_CASE("data: retrieval num_records, lengths and errors", "[data]") {
  RetrievalOptions o;
  o.num_records = 64;
  RetrievalSource fixed(o, 5);
  const RetrievalLayout l = fixed.layout(2048);
  CHECK(l.num_records == 64);
  CHECK(l.padding == 2048 - 1 - 8 - 64 * 9);
  const Parsed p = parse_retrieval(fixed.decode(row(whole(fixed, request(0, 2048, 1)).tokens, 0)));
  CHECK(p.records.size() == 64);
  CHECK(int64_t(p.padding) == l.padding);

  CHECK_THROWS_WITH(fixed.layout(500),
                    Contains("sequence length 500 is too short for 64 records") &&
                        Contains("at least 585 tokens"));
  RetrievalSource dflt(RetrievalOptions{}, 5);
  CHECK_THROWS_WITH(dflt.check_seq_len(10), Contains("at least 18 tokens"));
  CHECK_THROWS_WITH(whole(dflt, request(0, 16384, 1)),
                    Contains("1819 records at sequence length 16384") &&
                        Contains("3 key digits allow only 1000"));
  RetrievalOptions bad;
  bad.key_digits = 0;
  CHECK_THROWS_WITH(RetrievalSource(bad, 0), Contains("key_digits must be in [1, 18], got 0"));

  // Any length: an odd length on one rank, and one shard of a million-token sequence.
  RetrievalOptions wide;
  wide.key_digits = 6;
  RetrievalSource big(wide, 9);
  const Parsed odd = parse_retrieval(big.decode(row(whole(big, request(0, 777, 1)).tokens, 0)));
  CHECK(odd.records.size() == size_t(big.layout(777).num_records));
  BatchRequest r = request(0, int64_t(1) << 20, 1);
  r.layout = RingLayout::Striped;
  r.sp_size = 4;
  r.sp_rank = 3;
  const Batch shard = big.get(r);
  CHECK(shard.local_len() == (int64_t(1) << 18));
  CHECK(shard.positions.back() == (int64_t(1) << 20) - 1);
  CHECK(row(shard.targets, 0).back() == kIgnoreIndex);
}

TEST_CASE("data: retrieval shards of every layout reassemble to the whole sequence", "[data]") {
  RetrievalSource src(RetrievalOptions{}, 11);
  check_reassembly(src, 240);
  check_reassembly(src, 2048);
  RetrievalOptions all;
  all.loss_on_all_tokens = true;
  all.num_records = 5;
  check_reassembly(RetrievalSource(all, 11), 96);
}

TEST_CASE("data: each step's global batch is the same samples however it is split", "[data]") {
  RetrievalSource src(RetrievalOptions{}, 2);
  const int64_t S = 96, G = 8, step = 4;
  const Batch ref = whole(src, request(step, S, G));
  for (int ranks : {1, 2, 4})
    for (int micro_steps : {1, 2}) {
      if (G % (ranks * micro_steps) != 0) continue;
      std::set<int64_t> seen;
      for (int d = 0; d < ranks; ++d)
        for (int m = 0; m < micro_steps; ++m) {
          BatchRequest r = request(step, S, G / (ranks * micro_steps));
          r.data_rank = d;
          r.data_ranks = ranks;
          r.micro = m;
          r.micro_steps = micro_steps;
          REQUIRE(r.global_batch() == G);
          const Batch part = src.get(r);
          for (int64_t b = 0; b < part.batch(); ++b) {
            const int64_t s = part.samples[size_t(b)];
            REQUIRE(seen.insert(s).second);
            REQUIRE(row(part.tokens, b) == row(ref.tokens, s - step * G));
          }
        }
      CHECK(seen == std::set<int64_t>(ref.samples.begin(), ref.samples.end()));
    }
}

TEST_CASE("data: bad requests are clear errors", "[data]") {
  RetrievalSource src(RetrievalOptions{}, 0);
  BatchRequest r = request(0, 100, 1);
  r.sp_size = 4;
  r.layout = RingLayout::Zigzag;
  CHECK_THROWS_WITH(src.get(r), Contains("sequence length 100 cannot be split by the zigzag"));
  r = request(0, 96, 1);
  r.sp_size = 2;
  r.sp_rank = 2;
  CHECK_THROWS_WITH(src.get(r), Contains("sp rank 2 out of range for 2"));
  r = request(0, 96, 0);
  CHECK_THROWS_WITH(src.get(r), Contains("batch per rank must be >= 1, got 0"));
  r = request(-1, 96, 1);
  CHECK_THROWS_WITH(src.get(r), Contains("step must be >= 0, got -1"));
  r = request(0, 96, 1);
  r.data_rank = 3;
  r.data_ranks = 2;
  CHECK_THROWS_WITH(src.get(r), Contains("data rank 3 out of range for 2"));
}

TEST_CASE("data: text files round trip with separators and segment ids", "[data]") {
  TempFile a("a.txt"), b("b.txt");
  const std::string ta = random_text(700, 1), tb = "hello, ring attention\n" + random_text(300, 2);
  write_bytes(a.path, ta);
  write_bytes(b.path, tb);
  // The stream the source should see: a, separator, b.
  std::vector<int32_t> stream;
  for (unsigned char c : ta) stream.push_back(c);
  stream.push_back(TextFileSource::kSeparator);
  for (unsigned char c : tb) stream.push_back(c);

  TextFileSource src({a.path, b.path}, 17, 0.0, true);
  CHECK(src.vocab_size() == 257);
  CHECK(src.stream().size() == int64_t(stream.size()));
  const int64_t S = 240;
  const Batch full = whole(src, request(2, S, 2));
  for (int64_t bi = 0; bi < 2; ++bi) {
    const int64_t off = src.sample_offset(full.samples[size_t(bi)], Split::Train, S);
    REQUIRE(off >= 0);
    REQUIRE(off + S + 1 <= int64_t(stream.size()));
    const auto tok = row(full.tokens, bi), tgt = row(full.targets, bi),
               seg = row(full.segment_ids, bi);
    for (int64_t p = 0; p < S; ++p) {
      REQUIRE(tok[p] == stream[size_t(off + p)]);
      REQUIRE(tgt[p] == stream[size_t(off + p + 1)]);  // the last one too: a real next token
      REQUIRE(seg[p] == ((off + p > 700) ? 1 : 0));    // the separator (index 700) closes file a
      REQUIRE(row_f(full.loss_mask, bi)[p] == 1.0f);
      REQUIRE(row_u8(full.answer_mask, bi)[p] == 0);
    }
  }
  check_reassembly(src, S);
  check_reassembly(src, 1000);  // windows that always cross the separator

  // A rank reads its shard and the token after it, not the window: contiguous over 4 ranks reads
  // S/4 + 1 tokens per sample (less when a separator, which is no read, falls inside).
  TextFileSource fresh({a.path, b.path}, 17);
  BatchRequest r = request(2, S, 2);
  r.sp_size = 4;
  r.sp_rank = 1;
  (void)fresh.get(r);
  CHECK(fresh.stream().tokens_read() <= 2 * (S / 4 + 1));
  CHECK(fresh.stream().tokens_read() >= 2 * (S / 4));
  CHECK(src.decode(std::vector<int32_t>{'h', 'i', 256}) == "hi<sep>");
  // Determinism, and different steps start elsewhere.
  const Batch again = whole(src, request(2, S, 2)), next = whole(src, request(3, S, 2));
  CHECK(row(again.tokens, 0) == row(full.tokens, 0));
  CHECK(row(next.tokens, 0) != row(full.tokens, 0));

  // Held-out tail: validation windows lie in the last 30% of the stream, training ones before it.
  TextFileSource split({a.path, b.path}, 17, 0.3);
  const int64_t T = int64_t(stream.size()), cut = int64_t(std::floor(double(T) * 0.7));
  for (int64_t s = 0; s < 50; ++s) {
    CHECK(split.sample_offset(s, Split::Train, 200) + 200 + 1 <= cut);
    CHECK(split.sample_offset(s, Split::Validation, 200) >= cut);
  }
  CHECK_THROWS_WITH(
      split.check_seq_len(400),
      Contains(fmt::format("the validation part of the stream has {} tokens (of {}", T - cut, T)) &&
          Contains("sequence length + 1 = 401"));
}

TEST_CASE("data: text file errors name the file and the lengths", "[data]") {
  TempFile missing("missing.txt"), empty("empty.txt"), dir("dir"), small("small.txt");
  write_bytes(empty.path, "");
  std::filesystem::create_directory(dir.path);
  write_bytes(small.path, std::string(100, 'x'));
  CHECK_THROWS_WITH(TextFileSource({missing.path}, 0), Contains(missing.path) &&
                                                           Contains("cannot open") &&
                                                           Contains("No such file or directory"));
  CHECK_THROWS_WITH(TextFileSource({small.path, empty.path}, 0),
                    Contains("text file '" + empty.path + "' is empty"));
  CHECK_THROWS_WITH(TextFileSource({dir.path}, 0), Contains(dir.path) && Contains("directory"));
  CHECK_THROWS_WITH(TextFileSource({}, 0), Contains("no files given"));
  TextFileSource src({small.path}, 0);
  CHECK_THROWS_WITH(src.check_seq_len(1024), Contains("the stream has 100 tokens") &&
                                                 Contains("sequence length + 1 = 1025"));
  CHECK_THROWS_WITH(whole(src, request(0, 100, 1)), Contains("sequence length + 1 = 101"));
  CHECK_NOTHROW(whole(src, request(0, 99, 1)));  // exactly S + 1 tokens: one possible window
}

TEST_CASE("data: token files round trip with 2- and 4-byte tokens", "[data]") {
  for (int width : {2, 4}) {
    TempFile f("tokens.bin");
    std::vector<uint32_t> tokens(5000);
    std::mt19937 rng{uint32_t(width)};
    for (auto& t : tokens) t = rng() % (width == 2 ? 65536u : 100000u);
    write_token_file(f.path, tokens, width);
    CHECK(std::filesystem::file_size(f.path) == 24 + tokens.size() * size_t(width));
    const TokenFileHeader h = read_token_file_header(f.path);
    CHECK(h.version == 1);
    CHECK(h.token_bytes == uint32_t(width));
    CHECK(h.count == tokens.size());
    CHECK(read_token_file(f.path) == tokens);

    // Little-endian on disk, whatever the machine.
    std::ifstream in(f.path, std::ios::binary);
    std::string bytes(std::istreambuf_iterator<char>(in), {});
    CHECK(bytes.substr(0, 8) == "RATOKENS");
    CHECK(uint8_t(bytes[24]) == (tokens[0] & 0xff));
    CHECK(uint8_t(bytes[25]) == ((tokens[0] >> 8) & 0xff));

    TokenFileSource src({f.path, f.path}, 100000, 4);  // two files: concatenated as they are
    CHECK(src.stream().size() == 10000);
    const int64_t S = 480;
    const Batch full = whole(src, request(1, S, 2));
    for (int64_t b = 0; b < 2; ++b) {
      const int64_t off = src.sample_offset(full.samples[size_t(b)], Split::Train, S);
      const auto tok = row(full.tokens, b), tgt = row(full.targets, b);
      for (int64_t p = 0; p < S; ++p) {
        REQUIRE(uint32_t(tok[p]) == tokens[size_t((off + p) % 5000)]);
        REQUIRE(uint32_t(tgt[p]) == tokens[size_t((off + p + 1) % 5000)]);
      }
    }
    check_reassembly(src, S);
    CHECK(src.decode(std::vector<int32_t>{1, 22, 333}) == "1 22 333");
  }
  TempFile f("bad.bin");
  const std::vector<uint32_t> wide = {1, 2, 70000};
  CHECK_THROWS_WITH(write_token_file(f.path, wide, 2),
                    Contains("token 70000 at index 2 does not fit in 2 bytes"));
  CHECK_THROWS_WITH(write_token_file(f.path, wide, 3), Contains("must be 2 or 4 bytes, got 3"));
}

TEST_CASE("data: corrupt token files are clear errors naming the file and numbers", "[data]") {
  TempFile f("corrupt.bin"), missing("missing.bin");
  auto header_error = [&](const std::string& bytes) -> std::string {
    write_bytes(f.path, bytes);
    try {
      TokenFileSource src({f.path}, 1000, 0);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  const std::string good_tokens = le(1, 2) + le(2, 2) + le(3, 2);
  std::string msg = header_error(token_header("RATOKENX", 1, 2, 3) + good_tokens);
  CHECK_THAT(msg, Contains(f.path) && Contains("bad magic 'RATOKENX'") && Contains("'RATOKENS'"));
  msg = header_error(token_header("RATOKENS", 2, 2, 3) + good_tokens);
  CHECK_THAT(msg,
             Contains(f.path) && Contains("unsupported version 2") && Contains("reads version 1"));
  msg = header_error(token_header("RATOKENS", 1, 3, 3) + good_tokens);
  CHECK_THAT(msg, Contains(f.path) && Contains("unsupported token width 3 bytes"));
  msg = header_error(token_header("RATOKENS", 1, 2, 4) + good_tokens);
  CHECK_THAT(msg, Contains(f.path) && Contains("header says 4 tokens of 2 bytes (32 bytes") &&
                      Contains("has 30 bytes: truncated"));
  msg = header_error(token_header("RATOKENS", 1, 2, 3) + good_tokens + "xyz");
  CHECK_THAT(msg, Contains("header says 3 tokens of 2 bytes (30 bytes") &&
                      Contains("has 33 bytes: trailing bytes"));
  msg = header_error(token_header("RATOKENS", 1, 4, 3) + good_tokens);  // 2-byte data, says 4
  CHECK_THAT(msg, Contains("3 tokens of 4 bytes (36 bytes") && Contains("truncated"));
  msg = header_error(token_header("RATOKENS", 1, 4, uint64_t(1) << 63) + good_tokens);
  CHECK_THAT(msg, Contains("more than 2^64") && Contains("truncated"));
  msg = header_error("RATOK");
  CHECK_THAT(msg, Contains(f.path) && Contains("5 bytes is shorter than the 24-byte header"));
  msg = header_error("");
  CHECK_THAT(msg, Contains("token file '" + f.path + "' is empty"));
  msg = header_error(token_header("RATOKENS", 1, 2, 0));
  CHECK_THAT(msg, Contains("is empty: its header says 0 tokens"));
  CHECK_THROWS_WITH(TokenFileSource({missing.path}, 1000, 0),
                    Contains(missing.path) && Contains("cannot open"));
  // A valid but short file: both lengths in the message.
  write_bytes(f.path, token_header("RATOKENS", 1, 2, 3) + good_tokens);
  TokenFileSource short_src({f.path}, 1000, 0);
  CHECK_THROWS_WITH(whole(short_src, request(0, 8, 1)),
                    Contains("the stream has 3 tokens") && Contains("sequence length + 1 = 9"));
}

TEST_CASE("data: a token id above the vocabulary is a clear error when read", "[data]") {
  TempFile f("vocab.bin");
  std::vector<uint32_t> tokens(4000, 5);
  tokens[3000] = 1000;
  write_token_file(f.path, tokens, 2);
  CHECK_THROWS_WITH(TokenFileSource({f.path}, 0, 0), Contains("vocabulary size must be in"));
  TokenFileSource src({f.path}, 512, 21);  // opening does not scan the tokens
  const int64_t S = 64;
  // Find one sample whose window holds index 3000 and one whose window does not.
  int64_t hit = -1, miss = -1;
  for (int64_t s = 0; s < 2000 && (hit < 0 || miss < 0); ++s) {
    const int64_t off = src.sample_offset(s, Split::Train, S);
    (off <= 3000 && 3000 <= off + S ? hit : miss) = s;
  }
  REQUIRE(hit >= 0);
  REQUIRE(miss >= 0);
  CHECK_NOTHROW(whole(src, request(miss, S, 1)));  // step = sample index when B = 1
  CHECK_THROWS_WITH(whole(src, request(hit, S, 1)), Contains(f.path) &&
                                                        Contains("token id 1000 at index 3000") &&
                                                        Contains("vocabulary size 512"));
  // A rank whose shard (and targets) do not touch the bad token reads fine.
  const int64_t off = src.sample_offset(hit, Split::Train, S);
  const int64_t bad = 3000 - off;  // window index of the bad token
  BatchRequest r = request(hit, S, 1);
  r.sp_size = 2;
  r.sp_rank = bad < S / 2 ? 1 : 0;
  if (!(bad == S / 2)) CHECK_NOTHROW(src.get(r));
  // Read as a whole file with no vocabulary limit, it is fine.
  CHECK(read_token_file(f.path)[3000] == 1000);
}

TEST_CASE("data: make_batch_source and make_batch_request follow the trainer config", "[data]") {
  TempFile t("t.txt"), k("k.bin");
  write_bytes(t.path, random_text(500, 3));
  write_token_file(k.path, std::vector<uint32_t>(500, 9), 4);
  TrainConfig cfg;
  cfg.seed = 5;
  cfg.data.retrieval.key_digits = 4;
  cfg.data.retrieval.value_digits = 2;
  auto r = make_batch_source(cfg);
  CHECK(r->vocab_size() == 17);
  CHECK_THAT(r->describe(), Contains("retrieval") && Contains("values 2 digits"));
  CHECK(dynamic_cast<RetrievalSource&>(*r).layout(2048).record_len() == 9);
  cfg.data.source = DataSource::Text;
  cfg.data.text_files = {t.path};
  cfg.model.vocab_size = 256;  // bytes and the separator need 257
  CHECK_THROWS_WITH(
      make_batch_source(cfg),
      Contains("model.vocab_size = 256 is smaller than the vocabulary of the data, 257"));
  cfg.model.vocab_size = 300;
  auto tx = make_batch_source(cfg);
  CHECK(whole(*tx, request(0, 128, 1)).tokens.shape() == Shape{1, 128});
  cfg.data.source = DataSource::Tokens;
  cfg.data.token_file = k.path;
  cfg.model.vocab_size = 32000;
  auto tk = make_batch_source(cfg);
  CHECK(tk->vocab_size() == 32000);
  CHECK(row(whole(*tk, request(0, 128, 1)).tokens, 0) == std::vector<int32_t>(128, 9));

  // The world as one sp ring (collective: every rank runs this test).
  Mesh mesh(MeshShape{1, 1, -1, 1});
  const int n = mesh.size(Axis::SP);
  cfg.train.batch_size = 4;
  cfg.train.micro_batches = 2;
  cfg.attention.layout = RingLayout::Zigzag;
  const BatchRequest req = make_batch_request(cfg, mesh, 7, 1, 64 * n);
  CHECK(req.batch_per_rank == 2);
  CHECK(req.sample_index(0) == 7 * 4 + 2);
  CHECK(req.sp_rank == mesh.coord(Axis::SP));
  CHECK(req.sp_size == n);
  CHECK(req.layout == RingLayout::Zigzag);
  cfg.train.batch_size = 3;
  CHECK_THROWS_WITH(make_batch_request(cfg, mesh, 0, 0, 64 * n),
                    Contains("train.batch_size = 3 must be a multiple"));
}
