#include "model/attention/ring_tokens.h"

#include <cstring>

#include "core/error.h"
#include "core/tensor.h"

namespace ringattn {

void all_gather_host_bytes(Communicator& comm, Backend& be, const void* mine, size_t bytes,
                           void* all) {
  if (comm.accepts_host_buffers()) {
    comm.all_gather(mine, all, bytes, DType::U8);
    return;
  }
  const int64_t n = comm.size();
  Tensor send = Tensor::empty({int64_t(bytes)}, DType::U8, be.device(), "host bytes in transit");
  Tensor recv =
      Tensor::empty({int64_t(bytes) * n}, DType::U8, be.device(), "host bytes in transit");
  be.copy_from_host(send.raw(), mine, bytes);
  comm.all_gather(send.raw(), recv.raw(), bytes, DType::U8);
  be.copy_to_host(all, recv.raw(), bytes * size_t(n));
}

RingTokens::RingTokens(Communicator& sp, Backend& be, const std::vector<int64_t>& positions,
                       const std::vector<int32_t>& segments, int64_t batch)
    : ranks_(sp.size()), batch_(batch), sl_(int64_t(positions.size())) {
  RA_CHECK(segments.empty() || int64_t(segments.size()) == batch * sl_,
           "ring tokens: {} segment ids for {} x {} tokens", segments.size(), batch, sl_);
  const int n = ranks_;
  const size_t pos_bytes = size_t(sl_) * sizeof(int64_t);
  const size_t seg_bytes = segments.size() * sizeof(int32_t);
  // One record per rank, a multiple of 8 bytes so that every record's int64s stay aligned. Every
  // rank's record has the same size: equal shards, with segment ids everywhere or nowhere.
  const size_t record = (pos_bytes + seg_bytes + 7) / 8 * 8;
  std::vector<unsigned char> mine(record, 0), all(record * size_t(n));
  std::memcpy(mine.data(), positions.data(), pos_bytes);
  if (!segments.empty()) std::memcpy(mine.data() + pos_bytes, segments.data(), seg_bytes);
  all_gather_host_bytes(sp, be, mine.data(), record, all.data());
  pos_.resize(size_t(n * sl_));
  if (!segments.empty()) seg_.resize(size_t(n) * segments.size());
  for (int q = 0; q < n; ++q) {
    const unsigned char* at = all.data() + size_t(q) * record;
    std::memcpy(pos_.data() + q * sl_, at, pos_bytes);
    if (!segments.empty())
      std::memcpy(seg_.data() + size_t(q) * segments.size(), at + pos_bytes, seg_bytes);
  }
}

std::vector<int32_t> RingTokens::segments(int rank, int64_t begin, int64_t len) const {
  std::vector<int32_t> out;
  if (seg_.empty()) return out;
  out.reserve(size_t(batch_ * len));
  for (int64_t b = 0; b < batch_; ++b) {
    const int32_t* row = seg_.data() + (rank * batch_ + b) * sl_ + begin;
    out.insert(out.end(), row, row + len);
  }
  return out;
}

}  // namespace ringattn
