// Tensor: a typed, shaped view of reference-counted storage from a device allocator.
//
// Shapes are row-major, strides are in elements. Views (slice, view, select) share storage;
// `contiguous()`, `clone()` and `to()` copy. The CPU backend computes in float32; BF16/F16 are
// storage types converted at the edges.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "core/allocator.h"
#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"

namespace ringattn {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s);  // "[2, 3, 4]"
int64_t shape_numel(const Shape& s);

// Owns one allocation; frees it through the allocator that made it.
class Storage {
 public:
  Storage(Allocator& alloc, size_t bytes, std::string_view what);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return alloc_->device(); }
  Allocator& allocator() const { return *alloc_; }

 private:
  Allocator* alloc_;
  void* data_;
  size_t bytes_;
};

class Tensor {
 public:
  Tensor() = default;  // undefined tensor: defined() == false

  // Uninitialised tensor. `what` names the allocation in memory-limit errors.
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::CPU,
                      std::string_view what = "tensor");
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::CPU,
                      std::string_view what = "tensor");

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int ndim() const { return int(shape_.size()); }
  int64_t dim(int i) const { return shape_.at(i < 0 ? i + ndim() : i); }
  int64_t numel() const { return shape_numel(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::CPU; }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;

  void* raw() const;  // pointer to the first element of this view
  // The allocator of the storage: its copies move this tensor's bytes whatever the device.
  Allocator& allocator() const;
  // The elements as T, which must be the dtype's type: float for F32, uint16_t for BF16 and F16,
  // int32_t for I32, int64_t for I64. Bytes (uint8_t, char) view any tensor, and a U8 tensor is
  // a raw byte buffer any type may view (a float64 buffer, a KV block of either precision).
  // Anything else raises an Error: a float read of bf16 bits would be silently wrong.
  template <typename T>
  T* data() const {
    using E = std::remove_cv_t<T>;
    void* p = raw();  // an undefined tensor raises here first
    constexpr bool bytes = std::is_same_v<E, uint8_t> || std::is_same_v<E, char>;
    if constexpr (!bytes && !std::is_void_v<E>) {
      if (dtype_ != DType::U8 && !element_type_is<E>(dtype_))
        bad_element_type(element_type_name<E>());
    }
    return static_cast<T*>(p);
  }

  // Same storage, new shape; the view must be contiguous. One dimension may be -1.
  Tensor view(Shape shape) const;
  // Same storage, elements [start, start+length) along `dim`.
  Tensor slice(int dim, int64_t start, int64_t length) const;
  // Same storage, index `i` of `dim`, that dimension removed.
  Tensor select(int dim, int64_t i) const;

  // Copies. Device tensors (not CPU) are copied through their allocator's synchronous byte
  // copies, so only packed (contiguous) device views can be copied; strided views and dtype
  // conversions are host-only.
  Tensor contiguous() const;     // this if already contiguous, else a packed copy
  Tensor clone() const;          // always a packed copy, on the same device
  Tensor to(DType dtype) const;  // float conversion on the host (copy)
  // A packed copy on `device` (this, packed, when already there): uploads and downloads.
  Tensor to_device(Device device, std::string_view what = "device copy") const;
  // Same shape. Host to host: converts float dtypes, any strides. With a device on either side:
  // same dtype, both packed.
  void copy_from(const Tensor& src);
  void fill_zero();  // any device; strided views on the host only

  std::string str() const;  // "F32[2, 3] cpu"

 private:
  template <typename E>
  static constexpr bool element_type_is(DType t) {
    if constexpr (std::is_same_v<E, float>) return t == DType::F32;
    if constexpr (std::is_same_v<E, uint16_t>) return t == DType::BF16 || t == DType::F16;
    if constexpr (std::is_same_v<E, int32_t>) return t == DType::I32;
    if constexpr (std::is_same_v<E, int64_t>) return t == DType::I64;
    return false;
  }
  template <typename E>
  static constexpr const char* element_type_name() {
    if constexpr (std::is_same_v<E, float>) return "float";
    if constexpr (std::is_same_v<E, double>) return "double";
    if constexpr (std::is_same_v<E, uint16_t>) return "uint16_t";
    if constexpr (std::is_same_v<E, int32_t>) return "int32_t";
    if constexpr (std::is_same_v<E, int64_t>) return "int64_t";
    return "another type";
  }
  [[noreturn]] void bad_element_type(const char* type) const;

  std::shared_ptr<Storage> storage_;
  Shape shape_, strides_;
  int64_t offset_ = 0;  // in elements
  DType dtype_ = DType::F32;
};

}  // namespace ringattn
