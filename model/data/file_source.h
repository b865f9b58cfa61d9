// Data from files: byte-level text and pre-tokenized token files (model/data/token_file.h).
//
// The files form one stream of T tokens. Sample n of a split is the window of S + 1 tokens that
// starts at a pseudo-random offset hash(seed, split, n) mod (span - S) in the split's part of the
// stream: tokens are window[0..S), targets window[1..S]. Unlike the retrieval task, the last
// position has a real target (the window's extra token), so every position's loss counts.
//
// Held-out data: with val_fraction f > 0 the stream's first floor(T * (1 - f)) tokens are the
// training part and the rest the validation part, each at least S + 1 tokens. With f = 0 both
// splits sample the whole stream (validation then is not held out).
//
// Reads: a rank reads only the tokens at its positions and the ones right after them (its
// targets), with pread, merging ranges less than kMergeGapTokens apart into one read; so a
// contiguous or zigzag shard costs one or two reads of about S/N tokens, and a striped shard
// (every N-th token) reads its window's whole span in one go, which is cheaper than S/N reads.
#pragma once

#include <memory>

#include "model/data/data_source.h"
#include "model/data/token_file.h"

namespace ringattn {

class FileStreamSource : public BatchSource {
 public:
  static constexpr int64_t kMergeGapTokens = 4096;

  void check_seq_len(int64_t seq_len) const override;
  const TokenStream& stream() const { return *stream_; }
  // Stream index of token 0 of a sample (what fill_sample uses; tests check reads against it).
  int64_t sample_offset(int64_t sample, Split split, int64_t seq_len) const;

 protected:
  // kind names the source in errors ("text files"), file_kind one of its files ("text file").
  FileStreamSource(std::string kind, std::string file_kind, uint64_t seed, double val_fraction);
  void fill_sample(int64_t sample, Split split, int64_t seq_len,
                   const std::vector<int64_t>& positions, const SampleSlots& out) const override;
  // The split's part of the stream: [begin, end).
  std::pair<int64_t, int64_t> split_range(Split split) const;

  std::string kind_;  // "text files", "token files"
  std::unique_ptr<TokenStream> stream_;
  uint64_t seed_;
  double val_fraction_;
};

// Byte-level text: tokens are bytes 0..255; files are joined with kSeparator (256) between them,
// so the model can tell where one file ends. Vocabulary 257.
class TextFileSource : public FileStreamSource {
 public:
  static constexpr int32_t kSeparator = 256;
  // Missing, unreadable or empty files raise an Error naming the file. `segments`: segment ids
  // count the separators before each position in the window, so attention stays within a file
  // (computed from the file sizes; no extra reads).
  TextFileSource(const std::vector<std::string>& paths, uint64_t seed, double val_fraction = 0.0,
                 bool segments = false);
  int64_t vocab_size() const override { return 257; }
  std::string describe() const override;
  std::string decode(std::span<const int32_t> tokens) const override;
  bool has_segments() const override { return segments_; }

 private:
  size_t nfiles_;
  bool segments_;
};

// Pre-tokenized files, concatenated as they are (put document separators in the files).
// Headers are validated against the file sizes when opened; token ids are checked against
// `vocab_size` as they are read (see TokenStream), so a huge file is never scanned up front.
class TokenFileSource : public FileStreamSource {
 public:
  TokenFileSource(const std::vector<std::string>& paths, int64_t vocab_size, uint64_t seed,
                  double val_fraction = 0.0);
  int64_t vocab_size() const override { return vocab_; }
  std::string describe() const override;
  std::string decode(std::span<const int32_t> tokens) const override;  // "12 7 512 ..."

 private:
  int64_t vocab_;
  size_t nfiles_;
};

}  // namespace ringattn
