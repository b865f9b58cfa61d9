#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/regular_file.h"

// Tensor bytes go between memory and the file unchanged, and safetensors stores little-endian.
static_assert(std::endian::native == std::endian::little,
              "safetensors I/O assumes a little-endian host");

// Every reader error starts with the path so a user with many checkpoints knows which one is bad.
#define ST_FAIL(path, fmtstr, ...) \
  RA_FAIL("safetensors file '{}': " fmtstr, path __VA_OPT__(, ) __VA_ARGS__)

namespace ringattn {

namespace {

using ojson = nlohmann::ordered_json;

// Headers are a few KiB even for models with thousands of tensors; a larger length field means the
// file is not safetensors (or is corrupt), and we must not allocate whatever it claims.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

constexpr const char* kSupported = "F32, BF16, F16, I32, I64, U8";

// JSON excerpts in messages: enough to recognise the value, never megabytes of it.
std::string brief(const ojson& v) {
  std::string s = v.dump(-1, ' ', false, ojson::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

std::string errno_str(int e) {
  return std::strerror(e);
}

// Writes all of [p, p+n); write() may stop early (signals, pipes, >2 GiB requests).
void write_all(int fd, const void* p, size_t n, const std::string& tmp) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const size_t step = std::min<size_t>(n, size_t(1) << 30);
    const ssize_t w = ::write(fd, c, step);
    if (w < 0) {
      if (errno == EINTR) continue;
      RA_FAIL("safetensors file '{}': write failed: {}", tmp, errno_str(errno));
    }
    c += w;
    n -= size_t(w);
  }
}

// Removes the temporary file unless the rename went through, so a failed save leaves no litter.
struct TmpFile {
  std::string path;
  int fd = -1;
  bool done = false;
  ~TmpFile() {
    if (fd >= 0) ::close(fd);
    if (!done) ::unlink(path.c_str());
  }
};

}  // namespace

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  ojson header = ojson::object();
  if (!metadata.empty()) {
    ojson meta = ojson::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  std::vector<Tensor> packed;
  packed.reserve(tensors.size());
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    RA_CHECK(name != "__metadata__",
             "safetensors file '{}': '__metadata__' is reserved and cannot name a tensor", path);
    RA_CHECK(seen.insert(name).second, "safetensors file '{}': duplicate tensor name '{}'", path,
             name);
    RA_CHECK(t.defined(), "safetensors file '{}': tensor '{}' is undefined", path, name);
    RA_CHECK(t.device() == Device::CPU,
             "safetensors file '{}': tensor '{}' is {}; copy it to the host first", path, name,
             t.str());
    Tensor c = t.contiguous();
    const uint64_t n = c.nbytes();
    ojson entry = ojson::object();
    entry["dtype"] = std::string(dtype_name(c.dtype()));
    entry["shape"] = c.shape();
    entry["data_offsets"] = ojson::array({offset, offset + n});
    header[name] = std::move(entry);
    offset += n;
    packed.push_back(std::move(c));
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    RA_FAIL(
        "safetensors file '{}': cannot encode the header (names and metadata must be UTF-8): {}",
        path, e.what());
  }
  // Padding keeps the data section 8-byte aligned for readers that map the file.
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(uint64_t(text.size()) >> (8 * i));

  TmpFile tmp{path + ".tmp"};
  tmp.fd = ::open(tmp.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (tmp.fd < 0) {
    tmp.done = true;  // nothing was created to clean up
    RA_FAIL("safetensors file '{}': cannot create '{}': {}", path, tmp.path, errno_str(errno));
  }
  write_all(tmp.fd, len, sizeof len, tmp.path);
  write_all(tmp.fd, text.data(), text.size(), tmp.path);
  for (const Tensor& t : packed)
    if (t.nbytes() > 0) write_all(tmp.fd, t.raw(), t.nbytes(), tmp.path);
  // Without fsync a power loss after the rename could leave the new name pointing at empty blocks.
  if (::fsync(tmp.fd) != 0)
    RA_FAIL("safetensors file '{}': fsync of '{}' failed: {}", path, tmp.path, errno_str(errno));
  const int fd = tmp.fd;
  tmp.fd = -1;
  if (::close(fd) != 0)
    RA_FAIL("safetensors file '{}': close of '{}' failed: {}", path, tmp.path, errno_str(errno));
  if (::rename(tmp.path.c_str(), path.c_str()) != 0)
    RA_FAIL("safetensors file '{}': cannot rename '{}' to it: {}", path, tmp.path,
            errno_str(errno));
  tmp.done = true;
}

// ---------------------------------------------------------------------------------------------

struct SafetensorsFile::Fd {
  int fd;
  explicit Fd(int f) : fd(f) {}
  ~Fd() { ::close(fd); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

void SafetensorsFile::read_exact(uint64_t file_offset, void* dst, uint64_t n,
                                 const std::string& what) const {
  char* c = static_cast<char*>(dst);
  uint64_t done = 0;
  while (done < n) {
    const size_t step = size_t(std::min<uint64_t>(n - done, uint64_t(1) << 30));
    const ssize_t r = ::pread(fd_->fd, c + done, step, off_t(file_offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      ST_FAIL(path_, "read of {} failed: {}", what, errno_str(errno));
    }
    // The size was checked at open(), so this means the file shrank since then.
    if (r == 0)
      ST_FAIL(path_, "file ended at byte {} while reading {} (was it truncated after opening?)",
              file_offset + done, what);
    done += uint64_t(r);
  }
}

namespace {

// Parses the header, rejecting duplicate keys (nlohmann would silently keep only the last one, and
// two tensors with one name mean the file is corrupt or ambiguous).
ojson parse_header(const std::string& path, const std::string& text) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string duplicate;
  bool duplicate_is_tensor = false;
  ojson::parser_callback_t cb = [&](int depth, ojson::parse_event_t ev, ojson& parsed) {
    // A header is three levels deep: a deeper one is not a safetensors header (and a deep enough
    // one would cost the parser memory for nothing).
    if ((ev == ojson::parse_event_t::object_start || ev == ojson::parse_event_t::array_start) &&
        depth >= 16)
      ST_FAIL(path,
              "header is not a safetensors header: objects and arrays nested more than 16 "
              "deep");
    switch (ev) {
      case ojson::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case ojson::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case ojson::parse_event_t::key:
        if (!keys.empty() && !keys.back().insert(parsed.get<std::string>()).second &&
            duplicate.empty()) {
          duplicate = parsed.get<std::string>();
          duplicate_is_tensor = keys.size() == 1;
        }
        break;
      default:
        break;
    }
    return true;
  };
  ojson root;
  try {
    root = ojson::parse(text, cb);
  } catch (const nlohmann::json::exception& e) {
    ST_FAIL(path, "header is not valid JSON: {}", e.what());
  }
  if (!duplicate.empty()) {
    if (duplicate_is_tensor) ST_FAIL(path, "duplicate tensor name '{}' in the header", duplicate);
    ST_FAIL(path, "duplicate key '{}' in the header", duplicate);
  }
  if (!root.is_object())
    ST_FAIL(path, "header is a JSON {}, expected an object of tensor entries", root.type_name());
  return root;
}

const ojson& field(const std::string& path, const std::string& name, const ojson& entry,
                   const char* key, bool want_array) {
  auto it = entry.find(key);
  if (it == entry.end())
    ST_FAIL(path, "tensor '{}' has no \"{}\" (an entry needs dtype, shape and data_offsets): {}",
            name, key, brief(entry));
  if (want_array ? !it->is_array() : !it->is_string())
    ST_FAIL(path, "tensor '{}': \"{}\" is {}, expected {}", name, key, brief(*it),
            want_array ? "an array" : "a string");
  return *it;
}

// A non-negative JSON integer; what = "dimension" or "offset" for the messages.
uint64_t unsigned_value(const std::string& path, const std::string& name, const ojson& v,
                        const char* key, const char* what) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer())
    ST_FAIL(path, "tensor '{}': negative {} {} in \"{}\"", name, what, v.get<int64_t>(), key);
  ST_FAIL(path, "tensor '{}': \"{}\" must hold integers, found {}", name, key, brief(v));
}

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  int64_t size = 0;
  std::string why;
  const int fd = open_regular_file(path, &size, &why);  // never waits on a FIFO
  if (fd < 0) ST_FAIL(path, "{}", why);
  f.fd_ = std::make_shared<Fd>(fd);
  const uint64_t file_size = uint64_t(size);
  if (file_size < 8)
    ST_FAIL(path, "file is {} bytes, shorter than the 8-byte header length", file_size);

  unsigned char len[8];
  f.read_exact(0, len, 8, "the header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | len[i];
  if (n > kMaxHeaderBytes)
    ST_FAIL(path, "header length {} bytes is absurd (limit {}); not a safetensors file?", n,
            kMaxHeaderBytes);
  if (n > file_size - 8)
    ST_FAIL(path,
            "header length {} bytes is larger than the {} bytes after the length field "
            "(truncated file?)",
            n, file_size - 8);
  std::string text(size_t(n), '\0');
  f.read_exact(8, text.data(), n, "the header");
  f.data_start_ = 8 + n;
  const uint64_t data_size = file_size - f.data_start_;

  const ojson root = parse_header(path, text);
  text = std::string();  // the header can be large; the parsed form is all we need now

  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& name = it.key();
    const ojson& entry = it.value();
    if (name == "__metadata__") {
      if (!entry.is_object())
        ST_FAIL(path, "\"__metadata__\" is {}, expected an object of strings", brief(entry));
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string())
          ST_FAIL(path, "\"__metadata__\" value of '{}' is {}, expected a string", m.key(),
                  brief(m.value()));
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!entry.is_object())
      ST_FAIL(path, "tensor '{}' is {}, expected an object with dtype, shape and data_offsets",
              name, brief(entry));

    TensorInfo ti;
    const std::string dname = field(path, name, entry, "dtype", false).get<std::string>();
    const auto dt = dtype_from_name(dname);
    if (!dt)
      ST_FAIL(path, "tensor '{}' has unknown dtype '{}' (supported: {})", name, dname, kSupported);
    ti.dtype = *dt;

    // numel stays in int64 (Shape's type) even when a zero dimension makes the product 0, so
    // shape_numel() over the stored shape can never overflow.
    uint64_t nonzero_product = 1;
    bool has_zero = false;
    for (const ojson& d : field(path, name, entry, "shape", true)) {
      const uint64_t v = unsigned_value(path, name, d, "shape", "dimension");
      if (v == 0) {
        has_zero = true;
      } else if (__builtin_mul_overflow(nonzero_product, v, &nonzero_product) ||
                 nonzero_product > uint64_t(std::numeric_limits<int64_t>::max())) {
        ST_FAIL(path, "tensor '{}': shape {} has too many elements", name,
                brief(entry.at("shape")));
      }
      ti.shape.push_back(int64_t(v));
    }
    const uint64_t numel = has_zero ? 0 : nonzero_product;

    const ojson& offs = field(path, name, entry, "data_offsets", true);
    if (offs.size() != 2)
      ST_FAIL(path, "tensor '{}': \"data_offsets\" is {}, expected [begin, end]", name,
              brief(offs));
    ti.begin = unsigned_value(path, name, offs[0], "data_offsets", "offset");
    ti.end = unsigned_value(path, name, offs[1], "data_offsets", "offset");
    if (ti.begin > ti.end)
      ST_FAIL(path, "tensor '{}': data_offsets [{}, {}] have begin > end", name, ti.begin, ti.end);
    uint64_t want = 0;
    if (__builtin_mul_overflow(numel, uint64_t(dtype_size(ti.dtype)), &want) ||
        want != ti.end - ti.begin)
      ST_FAIL(path, "tensor '{}': data_offsets [{}, {}] span {} bytes, but {}{} needs {} x {}",
              name, ti.begin, ti.end, ti.end - ti.begin, dname, shape_str(ti.shape), numel,
              dtype_size(ti.dtype));
    if (ti.end > data_size)
      ST_FAIL(path,
              "tensor '{}': data_offsets [{}, {}] go beyond the data section of {} bytes "
              "(truncated file?)",
              name, ti.begin, ti.end, data_size);

    f.names_.push_back(name);
    auto [pos, inserted] = f.infos_.emplace(name, std::move(ti));
    if (pos->second.end > pos->second.begin)
      ranges.push_back({pos->second.begin, pos->second.end, &pos->first});
    (void)inserted;  // duplicates were rejected while parsing
  }

  // Overlapping ranges would alias two tensors' bytes: a sign of corruption. Empty tensors own no
  // bytes, so they cannot overlap anything.
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    const Range& a = ranges[i - 1];
    const Range& b = ranges[i];
    if (b.begin < a.end)
      ST_FAIL(path, "tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", *a.name, a.begin, a.end,
              *b.name, b.begin, b.end);
  }
  return f;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = infos_.find(name);
  if (it != infos_.end()) return it->second;
  constexpr size_t kShown = 5;
  std::string avail;
  for (size_t i = 0; i < names_.size() && i < kShown; ++i)
    avail += (i ? ", '" : "'") + names_[i] + "'";
  if (names_.size() > kShown) avail += fmt::format(" and {} more", names_.size() - kShown);
  if (names_.empty()) avail = "none";
  ST_FAIL(path_, "no tensor named '{}' (available: {})", name, avail);
}

Tensor SafetensorsFile::load(const std::string& name, std::string_view what) const {
  const TensorInfo& ti = info(name);
  Tensor t = Tensor::empty(ti.shape, ti.dtype, Device::CPU, what.empty() ? name : what);
  if (ti.nbytes() > 0)
    read_exact(data_start_ + ti.begin, t.raw(), ti.nbytes(), fmt::format("tensor '{}'", name));
  return t;
}

Tensor SafetensorsFile::load_f32(const std::string& name, std::string_view what) const {
  const TensorInfo& ti = info(name);
  if (ti.dtype == DType::F32) return load(name, what);
  if (!is_floating(ti.dtype))
    ST_FAIL(path_, "tensor '{}' is {}; load_f32 converts only F32, BF16 and F16", name,
            dtype_name(ti.dtype));
  Tensor out = Tensor::empty(ti.shape, DType::F32, Device::CPU, what.empty() ? name : what);
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  // Converting through a bounded buffer keeps the peak at the F32 result plus 1 MiB, instead of
  // holding the whole 16-bit tensor as well.
  constexpr int64_t kChunk = int64_t(1) << 19;
  Tensor buf = Tensor::empty({std::min(numel, kChunk)}, ti.dtype, Device::CPU,
                             "safetensors conversion buffer");
  const std::string label = fmt::format("tensor '{}'", name);
  const uint64_t es = dtype_size(ti.dtype);
  for (int64_t start = 0; start < numel; start += kChunk) {
    const int64_t n = std::min(kChunk, numel - start);
    read_exact(data_start_ + ti.begin + uint64_t(start) * es, buf.raw(), uint64_t(n) * es, label);
    convert_floats(buf.raw(), ti.dtype, out.data<float>() + start, DType::F32, size_t(n));
  }
  return out;
}

}  // namespace ringattn
