#include "model/data/file_source.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/data/hash.h"

namespace ringattn {

FileStreamSource::FileStreamSource(std::string kind, std::string file_kind, uint64_t seed,
                                   double val_fraction)
    : kind_(std::move(kind)),
      stream_(std::make_unique<TokenStream>(std::move(file_kind))),
      seed_(seed),
      val_fraction_(val_fraction) {
  RA_CHECK(val_fraction >= 0.0 && val_fraction < 1.0, "{}: val_fraction must be in [0, 1), got {}",
           kind_, val_fraction);
}

std::pair<int64_t, int64_t> FileStreamSource::split_range(Split split) const {
  const int64_t T = stream_->size();
  if (val_fraction_ == 0.0) return {0, T};
  const int64_t cut = int64_t(std::floor(double(T) * (1.0 - val_fraction_)));
  return split == Split::Train ? std::pair{int64_t(0), cut} : std::pair{cut, T};
}

void FileStreamSource::check_seq_len(int64_t seq_len) const {
  RA_CHECK(seq_len >= 1, "{}: sequence length must be positive, got {}", kind_, seq_len);
  for (Split split : {Split::Train, Split::Validation}) {
    const auto [begin, end] = split_range(split);
    if (val_fraction_ == 0.0)
      RA_CHECK(end - begin >= seq_len + 1,
               "{}: the stream has {} tokens, shorter than sequence length + 1 = {} (each sample "
               "needs its tokens and one more for the last target)",
               kind_, end - begin, seq_len + 1);
    else
      RA_CHECK(end - begin >= seq_len + 1,
               "{}: the {} part of the stream has {} tokens (of {}, val_fraction {}), shorter "
               "than sequence length + 1 = {}",
               kind_, split_name(split), end - begin, stream_->size(), val_fraction_, seq_len + 1);
  }
}

int64_t FileStreamSource::sample_offset(int64_t sample, Split split, int64_t seq_len) const {
  const auto [begin, end] = split_range(split);
  const uint64_t starts = uint64_t(end - begin - seq_len);  // windows of S + 1 tokens that fit
  const uint64_t h =
      data_hash::hash3(seed_, split == Split::Train ? 0x74726169u : 0x76616c69u, uint64_t(sample));
  return begin + int64_t(data_hash::below(h, starts));
}

void FileStreamSource::fill_sample(int64_t sample, Split split, int64_t seq_len,
                                   const std::vector<int64_t>& positions,
                                   const SampleSlots& out) const {
  const int64_t base = sample_offset(sample, split, seq_len);
  // Window indices needed: each position and the one after it (its target), in ascending order.
  std::vector<int64_t> need;
  need.reserve(positions.size() * 2);
  for (int64_t p : positions) {
    if (need.empty() || need.back() < p) need.push_back(p);
    need.push_back(p + 1);
  }
  // Runs of needed indices, merged across small gaps: few syscalls, little unneeded data.
  std::vector<uint32_t> values(need.size());
  std::vector<uint32_t> run;
  for (size_t i = 0; i < need.size();) {
    size_t j = i + 1;
    while (j < need.size() && need[j] - need[j - 1] <= kMergeGapTokens) ++j;
    const int64_t first = need[i], last = need[j - 1];
    run.resize(size_t(last - first + 1));
    stream_->read(base + first, int64_t(run.size()), run.data());
    for (size_t k = i; k < j; ++k) values[k] = run[size_t(need[k] - first)];
    i = j;
  }
  // Walk positions and `need` together: need holds p then p + 1 (shared with the next p when
  // adjacent).
  size_t k = 0;
  for (size_t i = 0; i < positions.size(); ++i) {
    while (need[k] != positions[i]) ++k;
    out.tokens[i] = int32_t(values[k]);
    out.targets[i] = int32_t(values[k + 1]);
    out.loss_mask[i] = 1.0f;
  }
  if (out.segment_ids) {
    // Segment of window index p: separators at window indices < p (a separator closes its file).
    const std::vector<int64_t>& seps = stream_->separator_positions();
    auto first_sep = std::lower_bound(seps.begin(), seps.end(), base);
    for (size_t i = 0; i < positions.size(); ++i) {
      auto end = std::lower_bound(first_sep, seps.end(), base + positions[i]);
      out.segment_ids[i] = int32_t(end - first_sep);
    }
  }
}

TextFileSource::TextFileSource(const std::vector<std::string>& paths, uint64_t seed,
                               double val_fraction, bool segments)
    : FileStreamSource("text files", "text file", seed, val_fraction),
      nfiles_(paths.size()),
      segments_(segments) {
  RA_CHECK(!paths.empty(), "text files: no files given (data.text_files is empty)");
  for (size_t i = 0; i < paths.size(); ++i) {
    if (i > 0) stream_->add_separator(uint32_t(kSeparator));
    const int64_t before = stream_->size();
    stream_->add_file(paths[i], 0, -1, 1, 0);
    RA_CHECK(stream_->size() > before, "text file '{}' is empty", paths[i]);
  }
}

std::string TextFileSource::describe() const {
  return fmt::format("text_files ({} file{}, {} tokens with separators, byte-level, vocab 257)",
                     nfiles_, nfiles_ == 1 ? "" : "s", stream_->size());
}

std::string TextFileSource::decode(std::span<const int32_t> tokens) const {
  std::string s;
  for (int32_t t : tokens) {
    if (t >= 0 && t < 256)
      s += char(t);
    else if (t == kSeparator)
      s += "<sep>";
    else
      s += fmt::format("<{}>", t);
  }
  return s;
}

TokenFileSource::TokenFileSource(const std::vector<std::string>& paths, int64_t vocab_size,
                                 uint64_t seed, double val_fraction)
    : FileStreamSource("token files", "token file", seed, val_fraction),
      vocab_(vocab_size),
      nfiles_(paths.size()) {
  RA_CHECK(!paths.empty(), "token files: no files given (data.token_files is empty)");
  RA_CHECK(vocab_size >= 1 && vocab_size <= (int64_t(1) << 31),
           "token files: the model's vocabulary size must be in [1, 2^31], got {}", vocab_size);
  for (const std::string& path : paths) {
    const TokenFileHeader h = read_token_file_header(path);
    stream_->add_file(path, kTokenFileHeaderBytes, int64_t(h.count), int(h.token_bytes),
                      vocab_size);
  }
}

std::string TokenFileSource::describe() const {
  return fmt::format("token_files ({} file{}, {} tokens, vocab {})", nfiles_,
                     nfiles_ == 1 ? "" : "s", stream_->size(), vocab_);
}

std::string TokenFileSource::decode(std::span<const int32_t> tokens) const {
  std::string s;
  for (int32_t t : tokens) {
    if (!s.empty()) s += ' ';
    s += std::to_string(t);
  }
  return s;
}

}  // namespace ringattn
