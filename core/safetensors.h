// safetensors files: the checkpoint and tensor exchange format of the project.
//
// Layout: an 8-byte little-endian u64 N, N bytes of JSON header, then the data section.
//   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value"}}            (metadata optional, string values only)
// Offsets are bytes relative to the start of the data section. Supported dtypes: F32, BF16, F16,
// I32, I64, U8 (see core/dtype.h).
//
// Files come from outside the program, so the reader trusts nothing: every size is checked against
// the file size before anything is allocated, and every problem is a ringattn::Error whose message
// starts with "safetensors file '<path>': " and names what was expected.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace ringattn {

// Writes host tensors in the given order, packed back to back (no gaps, which the reference
// implementation requires), with the header padded with spaces so the data section starts at a
// multiple of 8. Non-contiguous tensors are packed first. The file is written to `path + ".tmp"`,
// flushed to disk and renamed, so `path` is either the old file or the complete new one.
// Names must be unique and not "__metadata__".
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

struct TensorInfo {
  DType dtype = DType::F32;
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte range within the data section
  uint64_t nbytes() const { return end - begin; }
};

// A validated safetensors file. open() reads and checks only the header; load() reads only the
// requested tensor's bytes. Copies share one open file descriptor; concurrent loads are safe.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  // Tensor names in header order (the order save_safetensors wrote them).
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const { return infos_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // Error when absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Host tensor of the stored dtype and shape. `what` names the allocation in memory-limit errors
  // (default: the tensor name).
  Tensor load(const std::string& name, std::string_view what = {}) const;
  // Host F32 tensor; BF16 and F16 are converted. Integer tensors are an Error.
  Tensor load_f32(const std::string& name, std::string_view what = {}) const;

 private:
  struct Fd;
  void read_exact(uint64_t file_offset, void* dst, uint64_t n, const std::string& name) const;

  std::string path_;
  std::shared_ptr<Fd> fd_;
  uint64_t data_start_ = 0;  // 8 + N
  std::vector<std::string> names_;
  std::map<std::string, TensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace ringattn
