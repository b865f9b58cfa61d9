#include "model/attention/sequence_shard.h"

#include <cstring>

#include "core/error.h"

namespace ringattn {

namespace {
// A tensor seen as [outer, len, inner] around dimension `dim`.
struct Around {
  int64_t outer = 1, len = 0, inner = 1;
};
Around around(const Shape& shape, int dim) {
  Around a;
  for (int i = 0; i < dim; ++i) a.outer *= shape[i];
  a.len = shape[dim];
  for (size_t i = size_t(dim) + 1; i < shape.size(); ++i) a.inner *= shape[i];
  return a;
}
}  // namespace

Tensor take_positions(const Tensor& full_in, int dim, const std::vector<int64_t>& positions) {
  Tensor full = full_in.contiguous();
  RA_CHECK(dim >= 0 && dim < full.ndim(), "take_positions: dimension {} of {}", dim, full.str());
  const Around a = around(full.shape(), dim);
  Shape out_shape = full.shape();
  out_shape[dim] = int64_t(positions.size());
  Tensor out = Tensor::empty(out_shape, full.dtype(), Device::CPU, "sequence shard");
  const size_t row = size_t(a.inner) * dtype_size(full.dtype());
  const char* src = full.data<char>();
  char* dst = out.data<char>();
  for (int64_t o = 0; o < a.outer; ++o)
    for (size_t i = 0; i < positions.size(); ++i) {
      RA_CHECK(positions[i] >= 0 && positions[i] < a.len, "take_positions: position {} of {}",
               positions[i], a.len);
      std::memcpy(dst + (o * int64_t(positions.size()) + int64_t(i)) * row,
                  src + (o * a.len + positions[i]) * row, row);
    }
  return out;
}

Tensor gather_sequence(Communicator& comm, const Tensor& local_in, int dim,
                       const std::vector<int64_t>& local_positions, int64_t seq_len) {
  Tensor local = local_in.contiguous();
  const int n = comm.size();
  const int64_t sl = int64_t(local_positions.size());
  RA_CHECK(local.dim(dim) == sl && sl * n == seq_len,
           "gather_sequence: shard {} with {} positions, {} ranks, sequence {}", local.str(), sl, n,
           seq_len);
  // Everyone's positions and shards, rank-ordered.
  std::vector<int64_t> all_pos(size_t(sl) * n);
  comm.all_gather(local_positions.data(), all_pos.data(), size_t(sl), DType::I64);
  Tensor all =
      Tensor::empty({int64_t(n) * local.numel()}, local.dtype(), Device::CPU, "gathered sequence");
  comm.all_gather(local.raw(), all.raw(), size_t(local.numel()), local.dtype());

  const Around a = around(local.shape(), dim);
  Shape out_shape = local.shape();
  out_shape[dim] = seq_len;
  Tensor out = Tensor::empty(out_shape, local.dtype(), Device::CPU, "gathered sequence");
  const size_t row = size_t(a.inner) * dtype_size(local.dtype());
  const char* src = all.data<char>();
  char* dst = out.data<char>();
  for (int r = 0; r < n; ++r) {
    const char* shard = src + size_t(r) * size_t(local.nbytes());
    for (int64_t o = 0; o < a.outer; ++o)
      for (int64_t i = 0; i < sl; ++i) {
        const int64_t p = all_pos[size_t(r) * sl + i];
        RA_CHECK(p >= 0 && p < seq_len, "gather_sequence: rank {} sent position {}", r, p);
        std::memcpy(dst + (o * seq_len + p) * row, shard + (o * sl + i) * row, row);
      }
  }
  return out;
}

}  // namespace ringattn
