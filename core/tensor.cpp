#include "core/tensor.h"

#include <fmt/format.h>

#include <cstring>
#include <limits>

namespace ringattn {

std::string shape_str(const Shape& s) {
  return fmt::format("[{}]", fmt::join(s, ", "));
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

namespace {
Shape packed_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t s = 1;
  for (int i = int(shape.size()) - 1; i >= 0; --i) {
    st[i] = s;
    s *= shape[i];
  }
  return st;
}
}  // namespace

Storage::Storage(Allocator& alloc, size_t bytes, std::string_view what)
    : alloc_(&alloc), data_(alloc.allocate(bytes, what)), bytes_(bytes) {}

Storage::~Storage() {
  alloc_->deallocate(data_, bytes_);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device, std::string_view what) {
  // The byte count must be exact: an overflowed product would allocate a tiny buffer for a huge
  // tensor. Dimensions after a zero cannot overflow shape_numel(), but they are checked too so
  // that every later product over the shape stays in range.
  uint64_t nonzero = 1;
  for (int64_t d : shape) {
    RA_CHECK(d >= 0, "tensor '{}': negative dimension in shape {}", what, shape_str(shape));
    if (d > 0)
      RA_CHECK(!__builtin_mul_overflow(nonzero, uint64_t(d), &nonzero) &&
                   nonzero <= uint64_t(std::numeric_limits<int64_t>::max()),
               "tensor '{}': shape {} has too many elements", what, shape_str(shape));
  }
  size_t bytes = 0;
  RA_CHECK(!__builtin_mul_overflow(size_t(shape_numel(shape)), dtype_size(dtype), &bytes),
           "tensor '{}': {} {} does not fit in memory", what, dtype_name(dtype), shape_str(shape));
  Tensor t;
  t.shape_ = shape;
  t.strides_ = packed_strides(shape);
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(allocator_for(device), bytes, what);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device, std::string_view what) {
  Tensor t = empty(shape, dtype, device, what);
  t.fill_zero();
  return t;
}

bool Tensor::is_contiguous() const {
  return strides_ == packed_strides(shape_);
}

void Tensor::bad_element_type(const char* type) const {
  static constexpr const char* kAs[] = {"float",   "uint16_t", "uint16_t",
                                        "int32_t", "int64_t",  "bytes"};
  RA_FAIL("tensor {}: its elements read as {}, but {} elements are read as {}", str(), type,
          dtype_name(dtype_), kAs[int(dtype_)]);
}

void* Tensor::raw() const {
  RA_CHECK(storage_, "use of an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_ * int64_t(dtype_size(dtype_));
}

Tensor Tensor::view(Shape shape) const {
  RA_CHECK(is_contiguous(), "view of a non-contiguous tensor {}", str());
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < int(shape.size()); ++i) {
    if (shape[i] == -1) {
      RA_CHECK(infer < 0, "view: more than one -1 in {}", shape_str(shape));
      infer = i;
    } else {
      // Two negative sizes would multiply to a positive count and pass the check below.
      RA_CHECK(shape[i] >= 0, "view: negative dimension in {}", shape_str(shape));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    RA_CHECK(known > 0 && numel() % known == 0, "view: cannot infer {} from {}", shape_str(shape),
             str());
    shape[infer] = numel() / known;
  }
  RA_CHECK(shape_numel(shape) == numel(), "view: {} has {} elements, {} needs {}", str(), numel(),
           shape_str(shape), shape_numel(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  t.strides_ = packed_strides(t.shape_);
  return t;
}

Tensor Tensor::slice(int dim, int64_t start, int64_t length) const {
  if (dim < 0) dim += ndim();
  RA_CHECK(dim >= 0 && dim < ndim(), "slice: dimension {} out of range for {}", dim, str());
  RA_CHECK(start >= 0 && length >= 0 && start + length <= shape_[dim],
           "slice: [{}, {}) out of range for dimension {} of {}", start, start + length, dim,
           str());
  Tensor t = *this;
  t.shape_[dim] = length;
  t.offset_ += start * strides_[dim];
  return t;
}

Tensor Tensor::select(int dim, int64_t i) const {
  if (dim < 0) dim += ndim();
  Tensor t = slice(dim, i, 1);
  t.shape_.erase(t.shape_.begin() + dim);
  t.strides_.erase(t.strides_.begin() + dim);
  return t;
}

namespace {
// Copies a strided host view element by element (innermost dimension contiguous fast path).
void copy_strided(const Tensor& src, void* dst_packed) {
  const size_t es = dtype_size(src.dtype());
  const int nd = src.ndim();
  if (src.numel() == 0) return;
  if (nd == 0) {
    std::memcpy(dst_packed, src.raw(), es);
    return;
  }
  const int64_t inner = src.dim(nd - 1);
  const bool inner_contig = src.strides()[nd - 1] == 1;
  std::vector<int64_t> idx(nd, 0);
  char* out = static_cast<char*>(dst_packed);
  const char* base = static_cast<const char*>(src.raw());
  const int64_t rows = src.numel() / inner;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t off = 0;
    for (int d = 0; d < nd - 1; ++d) off += idx[d] * src.strides()[d];
    if (inner_contig) {
      std::memcpy(out, base + off * es, inner * es);
      out += inner * es;
    } else {
      for (int64_t j = 0; j < inner; ++j, out += es)
        std::memcpy(out, base + (off + j * src.strides()[nd - 1]) * es, es);
    }
    for (int d = nd - 2; d >= 0; --d) {
      if (++idx[d] < src.dim(d)) break;
      idx[d] = 0;
    }
  }
}
}  // namespace

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  if (device() != Device::CPU) {
    // Device memory cannot be walked element by element from here: only packed views copy.
    RA_CHECK(is_contiguous(), "clone: {} is a strided view of device memory", str());
    Tensor t = empty(shape_, dtype_, device(), "clone");
    allocator().copy_within(t.raw(), raw(), nbytes());
    return t;
  }
  Tensor t = empty(shape_, dtype_, Device::CPU, "clone");
  copy_strided(*this, t.raw());
  return t;
}

Tensor Tensor::to_device(Device target, std::string_view what) const {
  if (target == device()) return contiguous();
  const Tensor src = device() == Device::CPU ? contiguous() : *this;
  RA_CHECK(src.is_contiguous(), "to_device: {} is a strided view of device memory", str());
  Tensor t = empty(shape_, dtype_, target, what);
  if (target == Device::CPU)
    src.allocator().copy_to_host(t.raw(), src.raw(), nbytes());
  else
    t.allocator().copy_from_host(t.raw(), src.raw(), nbytes());
  return t;
}

Allocator& Tensor::allocator() const {
  RA_CHECK(storage_, "use of an undefined tensor");
  return storage_->allocator();
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return clone();
  RA_CHECK(device() == Device::CPU, "to({}): dtype conversion of {} runs on the host only",
           dtype_name(dtype), str());
  Tensor src = contiguous();
  Tensor t = empty(shape_, dtype, Device::CPU, "dtype conversion");
  convert_floats(src.raw(), dtype_, t.raw(), dtype, size_t(numel()));
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  RA_CHECK(src.shape() == shape_, "copy_from: shape {} into {}", shape_str(src.shape()), str());
  if (device() != Device::CPU || src.device() != Device::CPU) {
    // Across devices (or within one): packed views of the same dtype, moved as bytes.
    RA_CHECK(src.dtype() == dtype_ && is_contiguous() && src.is_contiguous(),
             "copy_from: {} into {} needs packed tensors of one dtype when a device is involved",
             src.str(), str());
    if (numel() == 0) return;
    if (src.device() == Device::CPU)
      allocator().copy_from_host(raw(), src.raw(), nbytes());
    else if (device() == Device::CPU)
      src.allocator().copy_to_host(raw(), src.raw(), nbytes());
    else
      allocator().copy_within(raw(), src.raw(), nbytes());
    return;
  }
  Tensor packed = src.dtype() == dtype_ ? src.contiguous() : src.to(dtype_);
  // Empty views may have a zero-length innermost dimension (the row walk below divides by it).
  if (numel() == 0) return;
  if (is_contiguous()) {
    std::memcpy(raw(), packed.raw(), nbytes());
    return;
  }
  // Strided destination: walk rows of the innermost dimension.
  const size_t es = dtype_size(dtype_);
  const int nd = ndim();
  const int64_t inner = shape_[nd - 1];
  std::vector<int64_t> idx(nd, 0);
  const char* in = static_cast<const char*>(packed.raw());
  char* base = static_cast<char*>(raw());
  for (int64_t r = 0, rows = numel() / inner; r < rows; ++r) {
    int64_t off = 0;
    for (int d = 0; d < nd - 1; ++d) off += idx[d] * strides_[d];
    for (int64_t j = 0; j < inner; ++j, in += es)
      std::memcpy(base + (off + j * strides_[nd - 1]) * es, in, es);
    for (int d = nd - 2; d >= 0; --d) {
      if (++idx[d] < shape_[d]) break;
      idx[d] = 0;
    }
  }
}

void Tensor::fill_zero() {
  if (numel() == 0) return;  // zero-byte storage has a null pointer, even for memset
  if (is_contiguous()) {
    allocator().zero(raw(), nbytes());
  } else {
    RA_CHECK(device() == Device::CPU, "fill_zero: {} is a strided view of device memory", str());
    Tensor z = zeros(shape_, dtype_, Device::CPU, "zeros");
    copy_from(z);
  }
}

std::string Tensor::str() const {
  if (!defined()) return "undefined tensor";
  return fmt::format("{}{} {}", dtype_name(dtype_), shape_str(shape_), device_name(device()));
}

}  // namespace ringattn
