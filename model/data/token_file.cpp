#include "model/data/token_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "core/error.h"
#include "core/regular_file.h"

namespace ringattn {

namespace {

// Opens `path` read-only as a regular file; errors say which kind of file and why. Opened with
// O_NONBLOCK: opening a FIFO (a named pipe given by mistake) would otherwise wait for a writer
// for ever; the flag is cleared once the file is known to be regular.
int open_regular(const std::string& kind, const std::string& path, int64_t* size) {
  std::string why;
  const int fd = open_regular_file(path, size, &why);
  RA_CHECK(fd >= 0, "{} '{}': {}", kind, path, why);
  return fd;
}

struct Fd {
  int fd;
  ~Fd() { ::close(fd); }
};

// Reads exactly `n` bytes at `offset`; a short read means the file shrank after it was checked.
void pread_all(int fd, void* buf, size_t n, int64_t offset, const std::string& kind,
               const std::string& path) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t got = ::pread(fd, p, n, off_t(offset));
    if (got < 0 && errno == EINTR) continue;
    RA_CHECK(got >= 0, "{} '{}': read of {} bytes at byte {} failed: {}", kind, path, n, offset,
             std::strerror(errno));
    RA_CHECK(got > 0, "{} '{}': unexpected end of file at byte {} (truncated while in use?)", kind,
             path, offset);
    p += got;
    n -= size_t(got);
    offset += got;
  }
}

uint64_t load_le(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void store_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out += char((v >> (8 * i)) & 0xff);
}

// Printable form of the magic actually found, so a user can tell what the file is.
std::string show_bytes(const unsigned char* p, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\')
      s += char(p[i]);
    else
      s += fmt::format("\\x{:02x}", p[i]);
  }
  return s;
}

}  // namespace

void write_token_file(const std::string& path, std::span<const uint32_t> tokens, int token_bytes) {
  RA_CHECK(token_bytes == 2 || token_bytes == 4,
           "token file '{}': token width must be 2 or 4 bytes, got {}", path, token_bytes);
  RA_CHECK(!tokens.empty(), "token file '{}': refusing to write a file with no tokens", path);
  std::string bytes;
  bytes.reserve(size_t(kTokenFileHeaderBytes) + tokens.size() * size_t(token_bytes));
  bytes.append(kTokenFileMagic, 8);
  store_le(bytes, kTokenFileVersion, 4);
  store_le(bytes, uint32_t(token_bytes), 4);
  store_le(bytes, tokens.size(), 8);
  for (size_t i = 0; i < tokens.size(); ++i) {
    RA_CHECK(token_bytes == 4 || tokens[i] <= 0xffffu,
             "token file '{}': token {} at index {} does not fit in 2 bytes; write 4-byte tokens",
             path, tokens[i], i);
    store_le(bytes, tokens[i], token_bytes);
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  RA_CHECK(out.good(), "token file '{}': cannot create: {}", path, std::strerror(errno));
  out.write(bytes.data(), std::streamsize(bytes.size()));
  out.close();
  RA_CHECK(!out.fail(), "token file '{}': writing {} bytes failed", path, bytes.size());
}

TokenFileHeader read_token_file_header(const std::string& path) {
  const std::string kind = "token file";
  int64_t size = 0;
  Fd fd{open_regular(kind, path, &size)};
  RA_CHECK(size > 0, "token file '{}' is empty", path);
  RA_CHECK(size >= kTokenFileHeaderBytes,
           "token file '{}': {} bytes is shorter than the {}-byte header (truncated?)", path, size,
           kTokenFileHeaderBytes);
  unsigned char h[kTokenFileHeaderBytes];
  pread_all(fd.fd, h, sizeof h, 0, kind, path);
  RA_CHECK(std::memcmp(h, kTokenFileMagic, 8) == 0,
           "token file '{}': bad magic '{}' (expected '{}'): not a token file", path,
           show_bytes(h, 8), kTokenFileMagic);
  TokenFileHeader hdr;
  hdr.version = uint32_t(load_le(h + 8, 4));
  hdr.token_bytes = uint32_t(load_le(h + 12, 4));
  hdr.count = load_le(h + 16, 8);
  RA_CHECK(hdr.version == kTokenFileVersion,
           "token file '{}': unsupported version {} (this build reads version {})", path,
           hdr.version, kTokenFileVersion);
  RA_CHECK(hdr.token_bytes == 2 || hdr.token_bytes == 4,
           "token file '{}': unsupported token width {} bytes (expected 2 or 4)", path,
           hdr.token_bytes);
  RA_CHECK(hdr.count > 0, "token file '{}' is empty: its header says 0 tokens", path);
  // A corrupt header may hold a count so large that count * width overflows: that is truncated.
  const bool fits = hdr.count <= (UINT64_MAX - uint64_t(kTokenFileHeaderBytes)) / hdr.token_bytes;
  const uint64_t expected =
      fits ? uint64_t(kTokenFileHeaderBytes) + hdr.count * hdr.token_bytes : 0;
  if (!fits || expected != uint64_t(size)) {
    RA_FAIL(
        "token file '{}': header says {} tokens of {} bytes ({} bytes with the {}-byte header) "
        "but the file has {} bytes: {}",
        path, hdr.count, hdr.token_bytes, fits ? std::to_string(expected) : "more than 2^64",
        kTokenFileHeaderBytes, size,
        !fits || expected > uint64_t(size) ? "truncated" : "trailing bytes after the last token");
  }
  return hdr;
}

std::vector<uint32_t> read_token_file(const std::string& path) {
  const TokenFileHeader hdr = read_token_file_header(path);
  TokenStream s("token file");
  s.add_file(path, kTokenFileHeaderBytes, int64_t(hdr.count), int(hdr.token_bytes), 0);
  std::vector<uint32_t> out(size_t(hdr.count));
  s.read(0, int64_t(hdr.count), out.data());
  return out;
}

TokenStream::~TokenStream() {
  for (int fd : fds_) ::close(fd);
}

void TokenStream::add_file(const std::string& path, int64_t data_offset, int64_t count,
                           int token_bytes, int64_t vocab_limit) {
  int64_t size = 0;
  const int fd = open_regular(kind_, path, &size);
  fds_.push_back(fd);  // owned from here on, so an error below still closes it
  paths_.push_back(path);
  if (count < 0) count = (size - data_offset) / token_bytes;
  RA_CHECK(data_offset + count * token_bytes <= size, "{} '{}': needs {} bytes but has {}", kind_,
           path, data_offset + count * token_bytes, size);
  Piece p;
  p.begin = total_;
  p.count = count;
  p.file = int(fds_.size()) - 1;
  p.data_offset = data_offset;
  p.token_bytes = token_bytes;
  p.vocab_limit = vocab_limit;
  pieces_.push_back(p);
  total_ += count;
}

void TokenStream::add_separator(uint32_t token) {
  Piece p;
  p.begin = total_;
  p.count = 1;
  p.separator = token;
  pieces_.push_back(p);
  separators_.push_back(total_);
  total_ += 1;
}

void TokenStream::read_piece(const Piece& p, int64_t first, int64_t count, uint32_t* out) const {
  if (p.file < 0) {
    std::fill(out, out + count, p.separator);
    return;
  }
  const std::string& path = paths_[size_t(p.file)];
  std::vector<unsigned char> buf(size_t(count * p.token_bytes));
  pread_all(fds_[size_t(p.file)], buf.data(), buf.size(), p.data_offset + first * p.token_bytes,
            kind_, path);
  tokens_read_.fetch_add(count, std::memory_order_relaxed);
  for (int64_t i = 0; i < count; ++i) {
    const uint32_t t = uint32_t(load_le(buf.data() + i * p.token_bytes, p.token_bytes));
    // Checked as read rather than by scanning whole files up front: a rank pays only for the
    // tokens it uses, and a bad id is still reported before it reaches the embedding.
    RA_CHECK(p.vocab_limit <= 0 || int64_t(t) < p.vocab_limit,
             "{} '{}': token id {} at index {} is not below the vocabulary size {}", kind_, path, t,
             first + i, p.vocab_limit);
    out[i] = t;
  }
}

void TokenStream::read(int64_t start, int64_t count, uint32_t* out) const {
  RA_CHECK(start >= 0 && count >= 0 && start + count <= total_,
           "{} stream: range [{}, {}) outside its {} tokens", kind_, start, start + count, total_);
  // The first piece that ends after `start`.
  auto it = std::upper_bound(pieces_.begin(), pieces_.end(), start,
                             [](int64_t s, const Piece& p) { return s < p.begin + p.count; });
  while (count > 0) {
    const int64_t first = start - it->begin;
    const int64_t n = std::min(count, it->count - first);
    read_piece(*it, first, n, out);
    out += n;
    start += n;
    count -= n;
    ++it;
  }
}

}  // namespace ringattn
