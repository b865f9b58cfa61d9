// Moving between global token order and a rank's shard (see layout.h).
#pragma once

#include <vector>

#include "comm/communicator.h"
#include "core/tensor.h"

namespace ringattn {

// Rows `positions` of dimension `dim` of a host tensor (e.g. [B, S, H, D] with dim 1, or
// [B, H, S] with dim 2), as a new packed tensor.
Tensor take_positions(const Tensor& full, int dim, const std::vector<int64_t>& positions);

// Collective over `comm`: every rank passes its shard (positions `local_positions` of a global
// sequence of length `seq_len` along `dim`); every rank gets the whole tensor in global order.
// Shards must have equal shapes (every layout splits evenly).
Tensor gather_sequence(Communicator& comm, const Tensor& local, int dim,
                       const std::vector<int64_t>& local_positions, int64_t seq_len);

}  // namespace ringattn
