// The global positions and segment ids of every sp rank's shard, in host memory.
//
// The backends plan attention tiles on the host (which to skip, which to mask), so a tile call
// handed device positions would have to copy them back: a synchronisation per ring step on a GPU.
// Instead the ring learns every rank's tokens once, by one small all-gather, and the blocks that
// travel carry K and V only. The model gathers them once per micro-batch (Attention::share_tokens)
// and every layer's ring uses the same table; without one, the ring gathers its own per call.
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "core/backend.h"

namespace ringattn {

// All-gather of `bytes` host bytes per rank into `all` (size x bytes, rank order), over any
// communicator: as they are when it takes host buffers (MPI; a host-staged one copies them
// through the device, which waits for it), else through device buffers of `be` (NCCL: two
// synchronous copies). Collective over `comm`.
void all_gather_host_bytes(Communicator& comm, Backend& be, const void* mine, size_t bytes,
                           void* all);

class RingTokens {
 public:
  // Collective over `sp` (every rank passes its own shard's tokens): `positions` [Sl] global,
  // ascending; `segments` [B, Sl] in host memory, empty without segment ids. Shards have equal
  // lengths on every rank. Gathered by all_gather_host_bytes below (Attention passes a host MPI
  // communicator over the sp ranks, so that nothing waits for the device).
  RingTokens(Communicator& sp, Backend& be, const std::vector<int64_t>& positions,
             const std::vector<int32_t>& segments, int64_t batch);

  int ranks() const { return ranks_; }
  int64_t batch() const { return batch_; }
  int64_t shard_len() const { return sl_; }
  bool segmented() const { return !seg_.empty(); }
  // Positions of `rank`'s tokens [begin, ...).
  const int64_t* positions(int rank, int64_t begin = 0) const {
    return pos_.data() + rank * sl_ + begin;
  }
  // Segment ids of `rank`'s tokens [begin, begin + len) as [B, len]; empty without segment ids.
  std::vector<int32_t> segments(int rank, int64_t begin, int64_t len) const;

 private:
  int ranks_ = 1;
  int64_t batch_ = 0, sl_ = 0;
  std::vector<int64_t> pos_;  // [N, Sl]
  std::vector<int32_t> seg_;  // [N, B, Sl]
};

}  // namespace ringattn
