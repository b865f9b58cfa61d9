// One attention API, three implementations (../shared/design/ring-attention.md, section 1):
//   vanilla    materialises the full score matrix of the shard (one whole tile per batch x head)
//   blockwise  q_chunk x k_chunk tiles with online softmax; never an S x S buffer (BPT)
//   ring       the sequence is split over the sp ranks; each step folds the KV block held into
//              the local queries' state while the next block travels (double buffered); backward
//              recomputes from O and the float32 LSE and passes dK, dV (float32) around the ring.
//              With ring_pieces = P > 1 a block is 1/P of a shard and the ring turns P times.
// All three compute the same function: O = softmax(scale Q K^T + mask) V, causal or not, with
// grouped-query attention and segment ids. Positions are global token positions.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "comm/communicator.h"
#include "core/backend.h"
#include "core/tensor.h"
#include "model/attention/attention_options.h"
#include "model/attention/layout.h"
#include "model/attention/ring_tokens.h"

namespace ringattn {

// One rank's shard of a batch, in local token order.
struct AttentionInput {
  // [B, Sl, H, D] and [B, Sl, Hkv, D] on the backend's device: F32, or BF16/F16 (converted once
  // on entry; under AttentionOptions::bf16 BF16 ones are used as they are).
  Tensor q;
  Tensor k, v;
  std::vector<int64_t> positions;  // [Sl] global positions, ascending
  // [B, Sl] I32 in host memory or on the backend's device, or undefined (one segment). The tiles
  // are planned on the host, so device ones are copied back (a wait for the device) per call.
  Tensor segment_ids;
  // Ring only, optional: every sp rank's positions and segment ids for this batch, from
  // share_tokens(). Without it each ring call gathers its own (a small collective and two waits
  // for the device); with it a ring call does not wait for the device at all.
  std::shared_ptr<const RingTokens> ring_tokens;
};

struct AttentionOutput {
  Tensor o;    // [B, Sl, H, D] F32
  Tensor lse;  // [B, H, Sl]    F32 (-inf for a row that sees no key)
};

struct AttentionGrads {
  Tensor dq;      // [B, Sl, H, D]   F32
  Tensor dk, dv;  // [B, Sl, Hkv, D] F32
};

// Where the time of the last forward/backward went on this rank.
struct AttentionTimings {
  // Host wall time of the call: on an asynchronous backend (CUDA) the call returns once its work is
  // queued, so synchronise the backend first to time the work itself.
  double total_s = 0;
  // Host time blocked waiting for KV (and dK/dV) blocks to arrive. A transport that orders the
  // ring on the device (NCCL) does not block the host: ~0 there, and a transfer that outlasts
  // the compute shows as a longer compute-stream time instead.
  double kv_wait_s = 0;
  AttentionTileStats tiles;
};

class Attention {
 public:
  // `sp` is the sequence-parallel communicator (ring only; may be null for vanilla/blockwise,
  // which need the whole sequence on this rank). `host_sp`, optional: the same ranks in the same
  // order over host memory (MPI), for the small tables of every rank's tokens (RingTokens), so
  // that gathering them never waits for the device (NCCL takes device buffers only; host staging
  // waits for the device at every copy). Its ranks are checked against sp's at its first use.
  Attention(AttentionOptions options, Backend& backend, Communicator* sp = nullptr,
            Communicator* host_sp = nullptr);
  ~Attention();

  AttentionOutput forward(const AttentionInput& in);
  // dout [B, Sl, H, D]; `out` is what forward returned for the same input.
  AttentionGrads backward(const AttentionInput& in, const AttentionOutput& out, const Tensor& dout);

  // Every sp rank's positions and segment ids (host or backend memory, or undefined) gathered
  // once, for several calls on the same tokens (the model's layers) to pass as
  // AttentionInput::ring_tokens. Collective over sp when the ring is in use; null otherwise.
  std::shared_ptr<const RingTokens> share_tokens(const std::vector<int64_t>& positions,
                                                 const Tensor& segment_ids, int64_t batch) const;

  const AttentionOptions& options() const { return opt_; }
  const AttentionTimings& last_timings() const { return timings_; }
  // Seconds blocked waiting for ring transfers (KV blocks, and dK/dV in backward) over every
  // call so far: the sum of the rings' RingExchange::wait_seconds(). 0 without a ring.
  double ring_wait_seconds() const;
  // Bytes this rank sent to the next over the ring (KV blocks, and dK/dV in backward) over every
  // call so far: the rings' RingExchange::bytes_moved(). 0 without a ring.
  size_t ring_bytes_sent() const;

 private:
  struct Shapes;
  // A ring of one rank is blockwise attention: no buffers, no copies.
  bool uses_ring() const { return opt_.impl == AttentionImpl::Ring && sp_->size() > 1; }
  int64_t ring_pieces(const Shapes& s) const;  // opt_.ring_pieces, at most one per token
  std::shared_ptr<const RingTokens> ring_tokens(const AttentionInput& in, const Shapes& s) const;
  Shapes check_input(const AttentionInput& in) const;
  // The local queries against `sk` keys at k_pos (their segment ids k_seg, null without); the
  // caller sets the keys and values ([B, sk, Hkv, D]).
  AttentionTileProblem make_problem(const Shapes& s, const std::vector<int64_t>& q_pos, int64_t sk,
                                    const int64_t* k_pos, const int32_t* k_seg) const;
  AttentionOutput forward_blocks(const AttentionInput& in, const Shapes& s);
  AttentionGrads backward_local(const AttentionInput& in, const AttentionOutput& out,
                                const Tensor& dout, const Tensor& delta, const Shapes& s);
  AttentionGrads backward_ring(const AttentionInput& in, const AttentionOutput& out,
                               const Tensor& dout, const Tensor& delta, const Shapes& s);

  AttentionOptions opt_;
  Backend& backend_;
  Communicator* sp_;
  Communicator* token_comm_;  // host_sp, or sp_
  // Whether token_comm_ was found to hold sp_'s ranks in sp_'s order (at its first use).
  mutable bool token_comm_checked_ = false;
  void check_token_comm() const;
  std::unique_ptr<RingExchange> kv_ring_, grad_ring_;
  AttentionTimings timings_;
};

}  // namespace ringattn
