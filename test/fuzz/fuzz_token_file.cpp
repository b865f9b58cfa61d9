// Fuzzes the token file reader (model/data/token_file.h): header validation against the file
// size, whole-file reads, and ranged reads with the vocabulary check of TokenStream.
#include <cstdint>

#include "core/error.h"
#include "model/data/token_file.h"
#include "test/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ringattn;
  const std::string& path = fuzz::as_file(data, size);
  try {
    const TokenFileHeader h = read_token_file_header(path);
    const std::vector<uint32_t> all = read_token_file(path);
    if (all.size() != h.count) __builtin_trap();
    // A stream with a separator and a small vocabulary, read in two overlapping ranges.
    TokenStream s("token file");
    s.add_file(path, kTokenFileHeaderBytes, int64_t(h.count), int(h.token_bytes), 300);
    s.add_separator(7);
    std::vector<uint32_t> out(size_t(s.size()));
    s.read(0, s.size(), out.data());
    if (s.size() > 2) s.read(1, s.size() - 2, out.data());
  } catch (const Error&) {
  }
  try {
    // The same bytes as a text file (1-byte tokens, whole file).
    TokenStream t("text file");
    t.add_file(path, 0, -1, 1, 0);
    std::vector<uint32_t> out(size_t(t.size()));
    t.read(0, t.size(), out.data());
  } catch (const Error&) {
  }
  return 0;
}
