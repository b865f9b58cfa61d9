// Tensor: a typed, shaped view of reference-counted storage from a device allocator.
//
// Shapes are row-major, strides are in elements. Views (slice, view, select) share storage;
// `contiguous()`, `clone()` and `to()` copy. The CPU backend computes in float32; BF16/F16 are
// storage types converted at the edges.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
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
  template <typename T>
  T* data() const {
    return static_cast<T*>(raw());
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
  std::shared_ptr<Storage> storage_;
  Shape shape_, strides_;
  int64_t offset_ = 0;  // in elements
  DType dtype_ = DType::F32;
};

}  // namespace ringattn
