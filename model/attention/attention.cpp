#include "model/attention/attention.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <utility>

#include "comm/mpi_env.h"
#include "core/error.h"

namespace ringattn {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

Tensor as_f32(const Tensor& t) {
  if (t.dtype() == DType::F32) return t.contiguous();
  return t.to(DType::F32);
}

// A KV block as it travels around the ring: K then V in one contiguous buffer, so each step is a
// single message. Positions and segment ids do not travel with it: every rank has them on the
// host already (RingTokens). Under mixed precision (bf16) K and V travel as bfloat16, half the
// bytes: the tile GEMMs would round them to bf16 anyway, so the results are the same bit for bit.
// Backward sends float32 dK, dV in a second buffer of its own.
// Keys and values at `k` and `v` as a problem's: float32, or bf16 (used in place by the tiles).
void set_kv(AttentionTileProblem& p, const void* k, const void* v, bool bf16) {
  if (bf16) {
    p.k_bf16 = static_cast<const uint16_t*>(k);
    p.v_bf16 = static_cast<const uint16_t*>(v);
  } else {
    p.k = static_cast<const float*>(k);
    p.v = static_cast<const float*>(v);
  }
}

struct KvBlockLayout {
  size_t kv_elems = 0;  // B * len * Hkv * D
  size_t bytes = 0;
  bool bf16 = false;

  KvBlockLayout(int64_t batch, int64_t len, int kv_heads, int head_dim, bool bf16_values)
      : bf16(bf16_values) {
    kv_elems = size_t(batch * len * kv_heads * head_dim);
    bytes = 2 * kv_elems * (bf16 ? sizeof(uint16_t) : sizeof(float));
  }
  // The block as a tile problem's keys and values.
  void set_kv(AttentionTileProblem& p, const Tensor& buf) const {
    const size_t v_at = kv_elems * (bf16 ? sizeof(uint16_t) : sizeof(float));
    ringattn::set_kv(p, buf.data<char>(), buf.data<char>() + v_at, bf16);
  }
};

// A float32 tensor of zeros filled by the backend: ordered on its stream, as the allocator's
// zero() is too, and counted among the backend's operations (bench train's profile).
Tensor zeros_on(Backend& be, const Shape& shape, const char* what) {
  Tensor t = Tensor::empty(shape, DType::F32, be.device(), what);
  be.fill(t.data<float>(), t.numel(), 0.0f);
  return t;
}

// Tokens [begin, begin + len) of this rank's shard: one piece of its K/V block (ring_pieces).
struct Piece {
  int64_t begin = 0, len = 0;
};

// Piece c of P over a shard of sl tokens; the first sl % P pieces are one token longer.
Piece piece_of(int64_t c, int64_t pieces, int64_t sl) {
  const int64_t base = sl / pieces, extra = sl % pieces;
  return {c * base + std::min(c, extra), base + (c < extra ? 1 : 0)};
}

// Packs piece `pc` of this rank's own K and V ([B, Sl, Hkv, D], float32 or bf16) into `buf` (at
// least lay.bytes, on the backend's device) as the first block it sends: copied, or float32
// rounded to bf16 for a bf16 block.
void pack_kv_piece(Backend& be, const KvBlockLayout& lay, const Tensor& buf, const Tensor& k,
                   const Tensor& v, Piece pc) {
  const int64_t batch = k.dim(0), sl = k.dim(1), row = k.dim(2) * k.dim(3);
  RA_CHECK(k.dtype() == DType::F32 || (lay.bf16 && k.dtype() == DType::BF16),
           "ring: cannot pack {} keys into a {} block", dtype_name(k.dtype()),
           lay.bf16 ? "bf16" : "f32");
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t src = (b * sl + pc.begin) * row, dst = b * pc.len * row, n = pc.len * row;
    if (k.dtype() == DType::BF16) {
      uint16_t* out = buf.data<uint16_t>();
      be.copy(out + dst, k.data<uint16_t>() + src, size_t(n) * sizeof(uint16_t));
      be.copy(out + lay.kv_elems + dst, v.data<uint16_t>() + src, size_t(n) * sizeof(uint16_t));
    } else if (lay.bf16) {
      uint16_t* out = buf.data<uint16_t>();
      be.to_bf16(k.data<float>() + src, out + dst, n);
      be.to_bf16(v.data<float>() + src, out + lay.kv_elems + dst, n);
    } else {
      float* out = buf.data<float>();
      be.copy(out + dst, k.data<float>() + src, size_t(n) * sizeof(float));
      be.copy(out + lay.kv_elems + dst, v.data<float>() + src, size_t(n) * sizeof(float));
    }
  }
}

// Copies a piece's complete dK (or dV), [B, len, Hkv, D], into rows
// [begin, begin + len) of the shard's [B, Sl, Hkv, D].
void unpack_piece(Backend& be, const float* from, const Tensor& to, Piece pc) {
  const int64_t batch = to.dim(0), sl = to.dim(1), row = to.dim(2) * to.dim(3);
  for (int64_t b = 0; b < batch; ++b)
    be.copy(to.data<float>() + (b * sl + pc.begin) * row, from + b * pc.len * row,
            size_t(pc.len * row) * sizeof(float));
}

}  // namespace

struct Attention::Shapes {
  int64_t batch = 0, sl = 0;
  int heads = 0, kv_heads = 0, head_dim = 0;
  float scale = 1;
  Tensor q, k, v;            // contiguous: float32, or bf16 when bf16_inputs
  bool bf16_inputs = false;  // opt_.bf16 with q, k, v given in bf16
  std::vector<int32_t> seg;  // [B, Sl] segment ids in host memory; empty without
};

Attention::Attention(AttentionOptions options, Backend& backend, Communicator* sp,
                     Communicator* host_sp)
    : opt_(options), backend_(backend), sp_(sp), token_comm_(host_sp ? host_sp : sp) {
  RA_CHECK(!host_sp || !sp ||
               (host_sp->size() == sp->size() && host_sp->rank() == sp->rank() &&
                host_sp->device() == Device::CPU),
           "attention: the host communicator for token tables ({}, rank {} of {}) must be a host "
           "one over the ranks of the sequence-parallel one (rank {} of {})",
           host_sp ? host_sp->name() : "", host_sp ? host_sp->rank() : 0,
           host_sp ? host_sp->size() : 0, sp ? sp->rank() : 0, sp ? sp->size() : 0);
  RA_CHECK(opt_.impl != AttentionImpl::Ring || sp_ != nullptr,
           "ring attention needs the sequence-parallel communicator");
  if (opt_.impl != AttentionImpl::Ring && sp_ != nullptr && sp_->size() > 1)
    RA_FAIL(
        "attention.impl = {} needs the whole sequence on each rank (sp = 1), but sp = {}; use "
        "ring to split the sequence over ranks",
        impl_name(opt_.impl), sp_->size());
  if (opt_.impl != AttentionImpl::Vanilla)
    RA_CHECK(opt_.q_chunk > 0 && opt_.k_chunk > 0,
             "attention chunk sizes must be positive (q_chunk = {}, k_chunk = {})", opt_.q_chunk,
             opt_.k_chunk);
  RA_CHECK(opt_.ring_pieces >= 1, "attention: ring_pieces must be at least 1, got {}",
           opt_.ring_pieces);
  RA_CHECK(opt_.kernel != AttentionKernel::Fused || opt_.bf16,
           "attention: the fused kernels are bf16 kernels; they need mixed precision (bf16)");
}

Attention::~Attention() = default;

Attention::Shapes Attention::check_input(const AttentionInput& in) const {
  RA_CHECK(in.q.defined() && in.k.defined() && in.v.defined(),
           "attention: q, k and v are required");
  RA_CHECK(in.q.ndim() == 4, "attention: q must be [B, S, H, D], got {}", in.q.str());
  RA_CHECK(in.k.ndim() == 4, "attention: k must be [B, S, Hkv, D], got {}", in.k.str());
  RA_CHECK(in.k.shape() == in.v.shape(), "attention: k {} and v {} differ", in.k.str(), in.v.str());
  Shapes s;
  s.batch = in.q.dim(0);
  s.sl = in.q.dim(1);
  s.heads = int(in.q.dim(2));
  s.head_dim = int(in.q.dim(3));
  s.kv_heads = int(in.k.dim(2));
  RA_CHECK(in.k.dim(0) == s.batch && in.k.dim(1) == s.sl && in.k.dim(3) == s.head_dim,
           "attention: k {} does not match q {}", in.k.str(), in.q.str());
  RA_CHECK(s.kv_heads >= 1 && s.heads % s.kv_heads == 0,
           "attention: num_kv_heads ({}) must divide num_heads ({})", s.kv_heads, s.heads);
  RA_CHECK(int64_t(in.positions.size()) == s.sl, "attention: {} positions for {} local tokens",
           in.positions.size(), s.sl);
  for (size_t i = 1; i < in.positions.size(); ++i)
    RA_CHECK(in.positions[i] > in.positions[i - 1], "attention: positions must ascend");
  for (const Tensor* t : {&in.q, &in.k, &in.v}) {
    RA_CHECK(t->device() == backend_.device(),
             "attention: inputs must live on the backend's device ({}), got {}",
             device_name(backend_.device()), t->str());
    RA_CHECK(is_floating(t->dtype()), "attention: inputs must be F32, BF16 or F16, got {}",
             t->str());
  }
  if (in.segment_ids.defined()) {
    const Tensor& seg = in.segment_ids;
    RA_CHECK(seg.dtype() == DType::I32 && seg.shape() == Shape({s.batch, s.sl}) &&
                 (seg.device() == Device::CPU || seg.device() == backend_.device()),
             "attention: segment_ids must be I32 [{}, {}] in host memory or on the backend's "
             "device ({}), got {}",
             s.batch, s.sl, device_name(backend_.device()), seg.str());
  }
  const bool shared = uses_ring() && in.ring_tokens;
  if (shared) {
    // Checked before anything is read from it.
    const RingTokens& t = *in.ring_tokens;
    RA_CHECK(t.ranks() == sp_->size() && t.batch() == s.batch && t.shard_len() == s.sl &&
                 t.segmented() == in.segment_ids.defined() &&
                 std::equal(in.positions.begin(), in.positions.end(), t.positions(sp_->rank())),
             "attention: the shared ring tokens describe another batch than this input ({} "
             "ranks, [{}, {}]{}, for [{}, {}] here)",
             t.ranks(), t.batch(), t.shard_len(), t.segmented() ? " with segment ids" : "", s.batch,
             s.sl);
  }
  if (in.segment_ids.defined()) {
    // Needed on the host, where the tiles are planned: as they are from host memory (and then
    // checked against a shared table), from the shared table when they are on the device, or
    // else copied back from the device (which waits for it).
    const Tensor c = in.segment_ids.contiguous();
    if (c.device() == Device::CPU) {
      s.seg.assign(c.data<int32_t>(), c.data<int32_t>() + s.batch * s.sl);
      RA_CHECK(!shared || in.ring_tokens->segments(sp_->rank(), 0, s.sl) == s.seg,
               "attention: the shared ring tokens hold other segment ids than this input");
    } else if (shared) {
      s.seg = in.ring_tokens->segments(sp_->rank(), 0, s.sl);
    } else {
      s.seg.resize(size_t(s.batch * s.sl));
      backend_.copy_to_host(s.seg.data(), c.raw(), s.seg.size() * sizeof(int32_t));
    }
  }
  s.scale = opt_.scale > 0 ? opt_.scale : 1.0f / std::sqrt(float(s.head_dim));
  // Mixed precision with bf16 inputs (the model keeps q, k, v so): the tiles take them as they
  // are. Otherwise float32, which the tiles round themselves under bf16.
  s.bf16_inputs = opt_.bf16 && in.q.dtype() == DType::BF16 && in.k.dtype() == DType::BF16 &&
                  in.v.dtype() == DType::BF16;
  if (s.bf16_inputs) {
    s.q = in.q.contiguous();
    s.k = in.k.contiguous();
    s.v = in.v.contiguous();
  } else {
    s.q = as_f32(in.q);
    s.k = as_f32(in.k);
    s.v = as_f32(in.v);
  }
  return s;
}

AttentionTileProblem Attention::make_problem(const Shapes& s, const std::vector<int64_t>& q_pos,
                                             int64_t sk, const int64_t* k_pos,
                                             const int32_t* k_seg) const {
  AttentionTileProblem p;
  p.batch = s.batch;
  p.sq = s.sl;
  p.sk = sk;
  p.heads = s.heads;
  p.kv_heads = s.kv_heads;
  p.head_dim = s.head_dim;
  p.scale = s.scale;
  p.causal = opt_.causal;
  // Vanilla is one whole-shard tile per batch and head: the full score matrix, materialised.
  const bool whole = opt_.impl == AttentionImpl::Vanilla;
  p.q_chunk = whole ? 0 : opt_.q_chunk;
  p.k_chunk = whole ? 0 : opt_.k_chunk;
  p.q_pos = q_pos.data();
  p.k_pos = k_pos;
  p.q_seg = s.seg.empty() ? nullptr : s.seg.data();
  p.k_seg = k_seg;
  if (s.bf16_inputs)
    p.q_bf16 = s.q.data<uint16_t>();
  else
    p.q = s.q.data<float>();
  p.bf16 = opt_.bf16;
  p.fused = opt_.kernel == AttentionKernel::Fused;
  return p;
}

double Attention::ring_wait_seconds() const {
  return (kv_ring_ ? kv_ring_->wait_seconds() : 0.0) +
         (grad_ring_ ? grad_ring_->wait_seconds() : 0.0);
}

// Every rank's world rank gathered over both communicators must agree: the same processes in
// the same order. Once, at the first token table (a collective anyway).
void Attention::check_token_comm() const {
  if (token_comm_checked_ || token_comm_ == sp_) return;
  const int32_t me = MpiEnv::world_rank();
  std::vector<int32_t> over_host(size_t(sp_->size())), over_sp(size_t(sp_->size()));
  all_gather_host_bytes(*token_comm_, backend_, &me, sizeof(me), over_host.data());
  all_gather_host_bytes(*sp_, backend_, &me, sizeof(me), over_sp.data());
  RA_CHECK(over_host == over_sp,
           "attention: the host communicator for token tables ({}) holds world ranks [{}], the "
           "sequence-parallel one ({}) [{}]: they must be the same ranks in the same order",
           token_comm_->name(), fmt::join(over_host, ", "), sp_->name(), fmt::join(over_sp, ", "));
  token_comm_checked_ = true;
}

std::shared_ptr<const RingTokens> Attention::share_tokens(const std::vector<int64_t>& positions,
                                                          const Tensor& segment_ids,
                                                          int64_t batch) const {
  if (!uses_ring()) return nullptr;
  std::vector<int32_t> seg;
  if (segment_ids.defined()) {
    RA_CHECK(segment_ids.dtype() == DType::I32 &&
                 segment_ids.numel() == batch * int64_t(positions.size()),
             "attention: segment_ids must be I32 [{}, {}], got {}", batch, positions.size(),
             segment_ids.str());
    const Tensor c = segment_ids.contiguous();
    seg.resize(size_t(c.numel()));
    allocator_for(c.device()).copy_to_host(seg.data(), c.raw(), seg.size() * sizeof(int32_t));
  }
  check_token_comm();
  return std::make_shared<const RingTokens>(*token_comm_, backend_, positions, seg, batch);
}

// The caller's shared table (check_input checked it against this input), or one gathered for
// this call.
std::shared_ptr<const RingTokens> Attention::ring_tokens(const AttentionInput& in,
                                                         const Shapes& s) const {
  if (in.ring_tokens) return in.ring_tokens;
  check_token_comm();
  return std::make_shared<const RingTokens>(*token_comm_, backend_, in.positions, s.seg, s.batch);
}

size_t Attention::ring_bytes_sent() const {
  return (kv_ring_ ? kv_ring_->bytes_moved() : 0) + (grad_ring_ ? grad_ring_->bytes_moved() : 0);
}

AttentionOutput Attention::forward(const AttentionInput& in) {
  const auto t0 = Clock::now();
  timings_ = {};
  Shapes s = check_input(in);
  AttentionOutput out = forward_blocks(in, s);
  timings_.total_s = seconds_since(t0);
  return out;
}

// The local queries' running (m, l, acc) state folds in one KV block per call: the whole local
// sequence for vanilla and blockwise, or each block as it comes around the ring.
AttentionOutput Attention::forward_blocks(const AttentionInput& in, const Shapes& s) {
  Tensor acc = Tensor::empty({s.batch, s.sl, s.heads, s.head_dim}, DType::F32, backend_.device(),
                             "attention accumulator");
  Tensor m =
      Tensor::empty({s.batch, s.heads, s.sl}, DType::F32, backend_.device(), "attention max");
  Tensor l =
      Tensor::empty({s.batch, s.heads, s.sl}, DType::F32, backend_.device(), "attention sum");
  AttentionForwardState st{acc.data<float>(), m.data<float>(), l.data<float>()};
  backend_.attention_forward_init(st, s.batch, s.sl, s.heads, s.head_dim);

  if (!uses_ring()) {
    AttentionTileProblem p = make_problem(s, in.positions, s.sl, in.positions.data(),
                                          s.seg.empty() ? nullptr : s.seg.data());
    set_kv(p, s.k.raw(), s.v.raw(), s.bf16_inputs);
    backend_.attention_forward_block(p, st, &timings_.tiles);
  } else {
    const int n = sp_->size(), r = sp_->rank();
    const std::shared_ptr<const RingTokens> tokens = ring_tokens(in, s);
    if (!kv_ring_) kv_ring_ = sp_->make_ring(&backend_);
    const double wait0 = kv_ring_->wait_seconds();
    const int64_t pieces = ring_pieces(s);
    const size_t bytes =
        KvBlockLayout(s.batch, piece_of(0, pieces, s.sl).len, s.kv_heads, s.head_dim, opt_.bf16)
            .bytes;  // the first piece is the longest
    // Two buffers: the block being computed on (also the one being sent: both only read it) and
    // the one the next block arrives in.
    Tensor cur = Tensor::empty({int64_t(bytes)}, DType::U8, backend_.device(), "ring KV block");
    Tensor nxt = Tensor::empty({int64_t(bytes)}, DType::U8, backend_.device(), "ring KV block");
    const RingDrain drain(*kv_ring_);  // before cur and nxt go, should a tile step throw
    for (int64_t c = 0; c < pieces; ++c) {
      const Piece pc = piece_of(c, pieces, s.sl);
      const KvBlockLayout lay(s.batch, pc.len, s.kv_heads, s.head_dim, opt_.bf16);
      pack_kv_piece(backend_, lay, cur, s.k, s.v, pc);
      for (int step = 0; step < n; ++step) {
        // After step t this rank holds piece c of rank (r - t) mod N (spec section 4).
        const int src = (r - step % n + n) % n;
        const bool more = step + 1 < n;
        // The ring was made with this backend: the transfer starts after what is queued (the
        // pack, the previous step's tiles), and what is queued after wait() sees the arrival.
        if (more) kv_ring_->start(cur.raw(), nxt.raw(), lay.bytes);
        const std::vector<int32_t> k_seg = tokens->segments(src, pc.begin, pc.len);
        AttentionTileProblem p =
            make_problem(s, in.positions, pc.len, tokens->positions(src, pc.begin),
                         k_seg.empty() ? nullptr : k_seg.data());
        lay.set_kv(p, cur);
        backend_.attention_forward_block(p, st, &timings_.tiles);
        if (more) {
          kv_ring_->wait();
          std::swap(cur, nxt);
        }
      }
    }
    timings_.kv_wait_s = kv_ring_->wait_seconds() - wait0;
  }

  AttentionOutput out;
  out.o = Tensor::empty({s.batch, s.sl, s.heads, s.head_dim}, DType::F32, backend_.device(),
                        "attention O");
  out.lse = Tensor::empty({s.batch, s.heads, s.sl}, DType::F32, backend_.device(), "attention LSE");
  backend_.attention_forward_finish(st, out.o.data<float>(), out.lse.data<float>(), s.batch, s.sl,
                                    s.heads, s.head_dim);
  return out;
}

AttentionGrads Attention::backward(const AttentionInput& in, const AttentionOutput& out,
                                   const Tensor& dout_in) {
  const auto t0 = Clock::now();
  timings_ = {};
  Shapes s = check_input(in);
  RA_CHECK(dout_in.defined() && dout_in.shape() == in.q.shape(),
           "attention backward: dO must have the shape of q {}, got {}", shape_str(in.q.shape()),
           dout_in.str());
  RA_CHECK(out.o.defined() && out.o.shape() == in.q.shape() && out.lse.defined() &&
               out.lse.shape() == Shape({s.batch, s.heads, s.sl}),
           "attention backward: O and LSE must come from the forward of the same input");
  Tensor dout = as_f32(dout_in);
  Tensor o = as_f32(out.o);
  Tensor lse = out.lse.contiguous();
  Tensor delta =
      Tensor::empty({s.batch, s.heads, s.sl}, DType::F32, backend_.device(), "attention delta");
  backend_.attention_backward_delta(dout.data<float>(), o.data<float>(), delta.data<float>(),
                                    s.batch, s.sl, s.heads, s.head_dim);
  AttentionOutput saved{o, lse};
  AttentionGrads g = uses_ring() ? backward_ring(in, saved, dout, delta, s)
                                 : backward_local(in, saved, dout, delta, s);
  timings_.total_s = seconds_since(t0);
  return g;
}

AttentionGrads Attention::backward_local(const AttentionInput& in, const AttentionOutput& out,
                                         const Tensor& dout, const Tensor& delta, const Shapes& s) {
  AttentionGrads g;
  g.dq = zeros_on(backend_, {s.batch, s.sl, s.heads, s.head_dim}, "attention dQ");
  g.dk = zeros_on(backend_, {s.batch, s.sl, s.kv_heads, s.head_dim}, "attention dK");
  g.dv = zeros_on(backend_, {s.batch, s.sl, s.kv_heads, s.head_dim}, "attention dV");
  AttentionTileProblem p = make_problem(s, in.positions, s.sl, in.positions.data(),
                                        s.seg.empty() ? nullptr : s.seg.data());
  set_kv(p, s.k.raw(), s.v.raw(), s.bf16_inputs);
  AttentionBackwardArgs a{dout.data<float>(), out.lse.data<float>(), delta.data<float>(),
                          g.dq.data<float>(), g.dk.data<float>(),    g.dv.data<float>()};
  backend_.attention_backward_block(p, a, &timings_.tiles);
  return g;
}

// Backward around the ring. K and V travel as in the forward (positions and segment ids known on
// the host, RingTokens) and are
// prefetched one step ahead. The float32 dK, dV of a block travel with a lag: at step t this rank
// computes its contribution to the block it holds into a fresh buffer, then adds the partial sum
// that the previous rank computed on the same block at step t-1 (it arrived during this step's
// compute), and sends the sum on. After N steps, one more hop brings each block's complete dK, dV
// home. Every gradient exchange overlaps the next step's compute. With several pieces, this runs
// once per piece and each piece's dK, dV are copied into place when they come home.
AttentionGrads Attention::backward_ring(const AttentionInput& in, const AttentionOutput& out,
                                        const Tensor& dout, const Tensor& delta, const Shapes& s) {
  const int n = sp_->size(), r = sp_->rank();
  const std::shared_ptr<const RingTokens> tokens = ring_tokens(in, s);
  if (!kv_ring_) kv_ring_ = sp_->make_ring(&backend_);
  if (!grad_ring_) grad_ring_ = sp_->make_ring(&backend_);
  const double wait0 = kv_ring_->wait_seconds() + grad_ring_->wait_seconds();
  const int64_t pieces = ring_pieces(s);
  const int64_t longest = piece_of(0, pieces, s.sl).len;
  const size_t bytes = KvBlockLayout(s.batch, longest, s.kv_heads, s.head_dim, opt_.bf16).bytes;
  Tensor cur = Tensor::empty({int64_t(bytes)}, DType::U8, backend_.device(), "ring KV block");
  Tensor nxt = Tensor::empty({int64_t(bytes)}, DType::U8, backend_.device(), "ring KV block");

  // local[t%2]: this step's partial sum (being sent while the next step computes into the other);
  // incoming: the partial sum arriving from the previous rank. One incoming buffer is enough: it
  // is consumed right after its wait() and before the next start() reuses it. At the end of a
  // piece it holds this rank's own complete dK, dV of that piece: with one piece they are
  // returned as views of it (no copy).
  const Shape piece_grads{2, s.batch, longest, s.kv_heads, s.head_dim};  // dK then dV
  Tensor local[2];
  for (Tensor& t : local)
    t = Tensor::empty(piece_grads, DType::F32, backend_.device(), "ring dK/dV");
  Tensor incoming = Tensor::empty(piece_grads, DType::F32, backend_.device(), "ring dK/dV");
  // Should a step throw, the exchanges in flight end before the buffers above are freed.
  const RingDrain kv_drain(*kv_ring_), grad_drain(*grad_ring_);

  AttentionGrads g;
  g.dq = zeros_on(backend_, {s.batch, s.sl, s.heads, s.head_dim}, "attention dQ");
  if (pieces > 1) {
    for (Tensor* t : {&g.dk, &g.dv})
      *t = Tensor::empty({s.batch, s.sl, s.kv_heads, s.head_dim}, DType::F32, backend_.device(),
                         t == &g.dk ? "attention dK" : "attention dV");
  }
  for (int64_t c = 0; c < pieces; ++c) {
    const Piece pc = piece_of(c, pieces, s.sl);
    const KvBlockLayout lay(s.batch, pc.len, s.kv_heads, s.head_dim, opt_.bf16);
    const size_t grad_elems = 2 * lay.kv_elems;  // dK then dV, packed for this piece's length
    const size_t grad_bytes = grad_elems * sizeof(float);
    pack_kv_piece(backend_, lay, cur, s.k, s.v, pc);
    bool grad_in_flight = false;
    for (int step = 0; step < n; ++step) {
      const int src = (r - step % n + n) % n;
      const bool more = step + 1 < n;
      if (more) kv_ring_->start(cur.raw(), nxt.raw(), lay.bytes);  // ordered as in the forward
      float* mine = local[step % 2].data<float>();
      backend_.fill(mine, int64_t(grad_elems), 0.0f);
      const std::vector<int32_t> k_seg = tokens->segments(src, pc.begin, pc.len);
      AttentionTileProblem p =
          make_problem(s, in.positions, pc.len, tokens->positions(src, pc.begin),
                       k_seg.empty() ? nullptr : k_seg.data());
      lay.set_kv(p, cur);
      AttentionBackwardArgs a{
          dout.data<float>(), out.lse.data<float>(), delta.data<float>(), g.dq.data<float>(), mine,
          mine + lay.kv_elems};
      backend_.attention_backward_block(p, a, &timings_.tiles);
      if (grad_in_flight) {
        grad_ring_->wait();  // the earlier ranks' partial sum for the block this rank holds
        backend_.axpy(int64_t(grad_elems), 1.0f, incoming.data<float>(), mine);
      }
      // Send this block's partial sum on; after the last step it goes to the block's owner. The
      // ring orders the send after the queued tiles and axpy that computed it.
      grad_ring_->start(mine, incoming.raw(), grad_bytes);
      grad_in_flight = true;
      if (more) {
        kv_ring_->wait();
        std::swap(cur, nxt);
      }
    }
    grad_ring_->wait();
    if (pieces > 1) {
      unpack_piece(backend_, incoming.data<float>(), g.dk, pc);
      unpack_piece(backend_, incoming.data<float>() + lay.kv_elems, g.dv, pc);
    }
  }
  if (pieces == 1) {
    g.dk = incoming.select(0, 0);
    g.dv = incoming.select(0, 1);
  }
  timings_.kv_wait_s = kv_ring_->wait_seconds() + grad_ring_->wait_seconds() - wait0;
  return g;
}

int64_t Attention::ring_pieces(const Shapes& s) const {
  return std::clamp<int64_t>(opt_.ring_pieces, 1, std::max<int64_t>(s.sl, 1));
}

}  // namespace ringattn
