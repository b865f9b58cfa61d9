// Pre-tokenized token files, and the random-access reader both file sources stand on.
//
// Token file format (all integers little-endian):
//   offset  size  field
//   0       8     magic "RATOKENS"
//   8       4     version (u32) = 1
//   12      4     token width in bytes (u32): 2 (uint16 tokens) or 4 (uint32 tokens)
//   16      8     token count N (u64), N >= 1
//   24      N*w   the tokens
// The file size must be exactly 24 + N*w: a shorter file is truncated, a longer one has trailing
// garbage; both are errors, as are a wrong magic, version or width.
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ringattn {

inline constexpr char kTokenFileMagic[9] = "RATOKENS";
inline constexpr uint32_t kTokenFileVersion = 1;
inline constexpr int64_t kTokenFileHeaderBytes = 24;

struct TokenFileHeader {
  uint32_t version = kTokenFileVersion;
  uint32_t token_bytes = 0;  // 2 or 4
  uint64_t count = 0;
};

// Writes `tokens` as a token file of width `token_bytes` (2 or 4). Raises an Error naming the file
// when it cannot be written, and the index and value of a token that does not fit in 16 bits.
void write_token_file(const std::string& path, std::span<const uint32_t> tokens, int token_bytes);
// Reads and validates the header against the file size (errors name the file and the numbers).
TokenFileHeader read_token_file_header(const std::string& path);
// The whole file's tokens (tests and tools; the trainer reads ranges through TokenStream).
std::vector<uint32_t> read_token_file(const std::string& path);

// A read-only concatenation of files (and separator tokens between them) addressed as one stream
// of tokens, read with pread: a reader asks for a range and only those bytes are read. Files stay
// open for the stream's lifetime (one descriptor each). Thread-safe (pread has no file position).
class TokenStream {
 public:
  // kind names the files in errors ("text file", "token file").
  explicit TokenStream(std::string kind) : kind_(std::move(kind)) {}
  ~TokenStream();
  TokenStream(const TokenStream&) = delete;
  TokenStream& operator=(const TokenStream&) = delete;

  // Appends `count` tokens of `token_bytes` bytes starting at byte `data_offset` of `path`,
  // opened here. Missing, unreadable or non-regular files raise an Error naming the file.
  // count < 0: every whole token from data_offset to the end of the file.
  // `vocab_limit` > 0: every token read from this file must be below it (checked as read).
  void add_file(const std::string& path, int64_t data_offset, int64_t count, int token_bytes,
                int64_t vocab_limit);
  void add_separator(uint32_t token);  // one synthetic token (e.g. a document boundary)

  int64_t size() const { return total_; }
  size_t files() const { return fds_.size(); }
  // Tokens [start, start + count) into out; the range must lie inside the stream.
  void read(int64_t start, int64_t count, uint32_t* out) const;
  // Stream positions of the separators, ascending (for segment ids: no file read needed).
  const std::vector<int64_t>& separator_positions() const { return separators_; }
  // Tokens read from files so far (separators not counted): lets tests check that a rank reads
  // only its shard.
  int64_t tokens_read() const { return tokens_read_.load(std::memory_order_relaxed); }

 private:
  struct Piece {
    int64_t begin = 0, count = 0;  // stream range
    int file = -1;                 // index into fds_/paths_, or -1 for a separator
    int64_t data_offset = 0;       // byte offset of the piece's first token in the file
    int token_bytes = 1;
    int64_t vocab_limit = 0;
    uint32_t separator = 0;
  };
  void read_piece(const Piece& p, int64_t first, int64_t count, uint32_t* out) const;

  std::string kind_;
  std::vector<Piece> pieces_;
  std::vector<int> fds_;
  std::vector<std::string> paths_;
  std::vector<int64_t> separators_;
  int64_t total_ = 0;
  mutable std::atomic<int64_t> tokens_read_{0};
};

}  // namespace ringattn
