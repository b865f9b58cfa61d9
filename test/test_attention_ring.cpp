// Ring attention across ranks: on N = 1, 2, 4 ranks, with every layout, causal or not, GQA and
// packed documents, the gathered ring results equal blockwise (and vanilla) attention computed on
// the whole sequence on one rank. Also checks the memory claims with the allocator's counts.
#include <mpi.h>
#include <catch2/catch.hpp>

#include <cmath>

#include "comm/mesh.h"
#include "core/allocator.h"
#include "core/random.h"
#include "model/attention/attention.h"
#include "model/attention/sequence_shard.h"
#include "reference_attention.h"

using namespace ringattn;

namespace {

struct FullInput {
  Tensor q, k, v, dout, seg;
};

FullInput make_full(int64_t B, int64_t S, int64_t H, int64_t Hkv, int64_t D, bool segments,
                    uint64_t seed) {
  FullInput f;
  f.q = Tensor::empty({B, S, H, D}, DType::F32);
  f.k = Tensor::empty({B, S, Hkv, D}, DType::F32);
  f.v = Tensor::empty({B, S, Hkv, D}, DType::F32);
  f.dout = Tensor::empty({B, S, H, D}, DType::F32);
  fill_normal(f.q, seed + 1);
  fill_normal(f.k, seed + 2);
  fill_normal(f.v, seed + 3);
  fill_normal(f.dout, seed + 4);
  if (segments) {
    // Three documents of unequal lengths per sequence, different cuts per batch row.
    f.seg = Tensor::empty({B, S}, DType::I32);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < S; ++i)
        f.seg.data<int32_t>()[b * S + i] =
            int32_t(i < S / 3 + b * 5 ? 0 : (i < (2 * S) / 3 ? 1 : 2));
  }
  return f;
}

// One rank's shard of the full input: the tokens at `pos` (and their segment ids, if any).
AttentionInput shard_input(const FullInput& f, const std::vector<int64_t>& pos) {
  AttentionInput in;
  in.q = take_positions(f.q, 1, pos);
  in.k = take_positions(f.k, 1, pos);
  in.v = take_positions(f.v, 1, pos);
  in.positions = pos;
  if (f.seg.defined()) in.segment_ids = take_positions(f.seg, 1, pos);
  return in;
}

AttentionInput whole_input(const FullInput& f) {
  AttentionInput in;
  in.q = f.q;
  in.k = f.k;
  in.v = f.v;
  in.segment_ids = f.seg;
  in.positions.resize(size_t(f.q.dim(1)));
  for (size_t i = 0; i < in.positions.size(); ++i) in.positions[i] = int64_t(i);
  return in;
}

// Blockwise attention over the whole sequence on this rank alone (with `opt`'s other settings):
// the reference the ring is compared with.
struct WholeRun {
  AttentionOutput out;
  AttentionGrads grads;
};
WholeRun blockwise_whole(AttentionOptions opt, const FullInput& f) {
  opt.impl = AttentionImpl::Blockwise;
  Attention whole(opt, cpu_backend());
  const AttentionInput in = whole_input(f);
  WholeRun r;
  r.out = whole.forward(in);
  r.grads = whole.backward(in, r.out, f.dout);
  return r;
}

// max |a - b| over elements, treating equal infinities as equal.
double max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.data<float>()[i], y = b.data<float>()[i];
    if (std::isinf(x) && x == y) continue;
    const double d = std::abs(x - y);
    m = std::isnan(d) ? INFINITY : std::max(m, d);
  }
  return m;
}

std::vector<int64_t> iota(int64_t begin, int64_t len) {
  std::vector<int64_t> v(static_cast<size_t>(len));
  for (int64_t i = 0; i < len; ++i) v[size_t(i)] = begin + i;
  return v;
}

std::vector<float> as_vector(const Tensor& t) {
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

// max |got - want| / (1 + |want|) against the float64 reference; -inf must match -inf.
double max_rel_error(const Tensor& got, const std::vector<double>& want) {
  REQUIRE(size_t(got.numel()) == want.size());
  double m = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double x = got.data<float>()[i], y = want[i];
    if (std::isinf(y)) {
      if (x != y) m = INFINITY;
      continue;
    }
    const double e = std::abs(x - y) / (1 + std::abs(y));
    m = std::isnan(e) ? INFINITY : std::max(m, e);
  }
  return m;
}

test::RefResult reference_for(const FullInput& f, bool causal) {
  test::RefProblem p;
  p.batch = f.q.dim(0);
  p.sq = p.sk = f.q.dim(1);
  p.heads = int(f.q.dim(2));
  p.kv_heads = int(f.k.dim(2));
  p.head_dim = int(f.q.dim(3));
  p.scale = 1.0 / std::sqrt(double(p.head_dim));
  p.causal = causal;
  for (int64_t i = 0; i < p.sq; ++i) p.q_pos.push_back(i);
  p.k_pos = p.q_pos;
  if (f.seg.defined()) {
    p.q_seg.assign(f.seg.data<int32_t>(), f.seg.data<int32_t>() + f.seg.numel());
    p.k_seg = p.q_seg;
  }
  return test::reference_attention(p, as_vector(f.q), as_vector(f.k), as_vector(f.v),
                                   as_vector(f.dout));
}

}  // namespace

TEST_CASE("every implementation against the float64 reference, on every rank count",
          "[attention]") {
  Mesh mesh(MeshShape{1, 1, -1, 1});
  Communicator& sp = mesh.axis(Axis::SP);
  const int n = sp.size();
  const int64_t S = 48;
  for (bool causal : {false, true}) {
    const FullInput f = make_full(2, S, 4, 1, 8, true, 300 + causal);
    const test::RefResult ref = reference_for(f, causal);
    for (AttentionImpl impl :
         {AttentionImpl::Vanilla, AttentionImpl::Blockwise, AttentionImpl::Ring})
      for (RingLayout layout : {RingLayout::Contiguous, RingLayout::Zigzag, RingLayout::Striped})
        for (int64_t pieces : {1, 5}) {
          if (impl != AttentionImpl::Ring && (layout != RingLayout::Contiguous || pieces > 1))
            continue;
          CAPTURE(causal, impl_name(impl), layout_name(layout), n, pieces);
          AttentionOptions opt;
          opt.impl = impl;
          opt.layout = layout;
          opt.causal = causal;
          opt.q_chunk = 5;  // ragged on purpose
          opt.k_chunk = 7;
          opt.ring_pieces = pieces;  // 5 pieces of a 12- or 24-token shard: unequal
          const bool ring = impl == AttentionImpl::Ring;
          Attention attn(opt, cpu_backend(), ring ? &sp : nullptr);
          const int parts = ring ? n : 1, me = ring ? sp.rank() : 0;
          const std::vector<int64_t> pos = layout_positions(layout, S, parts, me);
          const AttentionInput in = shard_input(f, pos);
          const AttentionOutput out = attn.forward(in);
          const AttentionGrads g = attn.backward(in, out, take_positions(f.dout, 1, pos));
          auto whole = [&](const Tensor& t, int dim) {
            return ring ? gather_sequence(sp, t, dim, pos, S) : t;
          };
          // Float32 against float64: a few float32 ulps of accumulated rounding.
          CHECK(max_rel_error(whole(out.o, 1), ref.o) < 2e-5);
          CHECK(max_rel_error(whole(out.lse, 2), ref.lse) < 2e-5);
          CHECK(max_rel_error(whole(g.dq, 1), ref.dq) < 5e-5);
          CHECK(max_rel_error(whole(g.dk, 1), ref.dk) < 5e-5);
          CHECK(max_rel_error(whole(g.dv, 1), ref.dv) < 5e-5);
        }
  }
}

TEST_CASE("ring attention on all ranks equals blockwise on one rank", "[attention]") {
  Mesh mesh(MeshShape{1, 1, -1, 1});
  Communicator& sp = mesh.axis(Axis::SP);
  const int n = sp.size();
  const int64_t B = 2, S = 96, H = 4, Hkv = 2, D = 16;

  for (bool causal : {false, true})
    for (bool segments : {false, true})
      for (RingLayout layout : {RingLayout::Contiguous, RingLayout::Zigzag, RingLayout::Striped})
        for (int64_t pieces : {1, 3, 1000}) {  // 1000: capped at one piece per token
          CAPTURE(causal, segments, layout_name(layout), n, pieces);
          const FullInput f = make_full(B, S, H, Hkv, D, segments, 1000 + 10 * causal + segments);
          AttentionOptions opt;
          opt.causal = causal;
          opt.layout = layout;
          opt.q_chunk = 16;  // does not divide the 24-token shards of 4 ranks: ragged tiles
          opt.k_chunk = 8;

          const WholeRun ref = blockwise_whole(opt, f);
          const AttentionOutput& wout = ref.out;
          const AttentionGrads& wg = ref.grads;

          opt.impl = AttentionImpl::Ring;
          opt.ring_pieces = pieces;
          Attention ring(opt, cpu_backend(), &sp);
          const std::vector<int64_t> pos = layout_positions(layout, S, n, sp.rank());
          const AttentionInput in = shard_input(f, pos);
          const AttentionOutput out = ring.forward(in);
          const AttentionGrads g = ring.backward(in, out, take_positions(f.dout, 1, pos));

          // Float32 sums in a different order: agreement to a few ulps of the values (~1..10).
          CHECK(max_abs_diff(gather_sequence(sp, out.o, 1, pos, S), wout.o) < 2e-5);
          CHECK(max_abs_diff(gather_sequence(sp, out.lse, 2, pos, S), wout.lse) < 2e-5);
          CHECK(max_abs_diff(gather_sequence(sp, g.dq, 1, pos, S), wg.dq) < 1e-4);
          CHECK(max_abs_diff(gather_sequence(sp, g.dk, 1, pos, S), wg.dk) < 1e-4);
          CHECK(max_abs_diff(gather_sequence(sp, g.dv, 1, pos, S), wg.dv) < 1e-4);
        }
}

TEST_CASE("bf16 ring: K/V blocks travel as bf16, with the results of float32 blocks",
          "[attention][bf16]") {
  Mesh mesh(MeshShape{1, 1, -1, 1});
  Communicator& sp = mesh.axis(Axis::SP);
  const int n = sp.size(), r = sp.rank();
  const int64_t B = 2, S = 48, H = 4, Hkv = 2, D = 8;
  for (int64_t pieces : {1, 2}) {
    CAPTURE(n, pieces);
    const FullInput f = make_full(B, S, H, Hkv, D, /*segments=*/true, 2000 + pieces);
    AttentionOptions opt;
    opt.causal = true;
    opt.layout = RingLayout::Zigzag;
    opt.q_chunk = 8;
    opt.k_chunk = 4;
    opt.bf16 = true;

    const WholeRun ref = blockwise_whole(opt, f);
    const AttentionOutput& wout = ref.out;
    const AttentionGrads& wg = ref.grads;

    opt.impl = AttentionImpl::Ring;
    opt.ring_pieces = pieces;
    auto shard = [&](int rank) { return shard_input(f, layout_positions(opt.layout, S, n, rank)); };
    const AttentionInput in = shard(r);
    const std::vector<int64_t>& pos = in.positions;
    size_t forward_bytes[2] = {};  // float32 ring, bf16 ring
    AttentionOutput out;
    for (bool bf16 : {false, true}) {
      opt.bf16 = bf16;
      Attention ring(opt, cpu_backend(), &sp);
      out = ring.forward(in);
      forward_bytes[bf16] = ring.ring_bytes_sent();
    }
    // Forward: (N - 1) hops of every piece of K and V, 4 bytes an element in float32, 2 in bf16.
    const size_t kv_elems = size_t(B * (S / n) * Hkv * D);
    CHECK(forward_bytes[0] == size_t(n - 1) * 2 * kv_elems * sizeof(float));
    CHECK(forward_bytes[1] * 2 == forward_bytes[0]);

    // The same blocks in the ring's order, handed to the tiles as float32 on this rank: the
    // bf16 blocks that travelled give the very same bits.
    {
      Backend& be = cpu_backend();
      const int64_t sl = S / n;
      std::vector<float> acc(size_t(B * sl * H * D)), m(size_t(B * H * sl)), l(m.size());
      const AttentionForwardState st{acc.data(), m.data(), l.data()};
      be.attention_forward_init(st, B, sl, int(H), int(D));
      for (int64_t c = 0; c < pieces; ++c) {
        const int64_t len = sl / pieces + (c < sl % pieces ? 1 : 0);
        const int64_t begin = c * (sl / pieces) + std::min(c, sl % pieces);
        for (int step = 0; step < n; ++step) {
          const AttentionInput src = shard((r - step + n) % n);
          std::vector<int64_t> piece_pos(src.positions.begin() + begin,
                                         src.positions.begin() + begin + len);
          const Tensor k = take_positions(src.k, 1, iota(begin, len));
          const Tensor v = take_positions(src.v, 1, iota(begin, len));
          const Tensor kseg = take_positions(src.segment_ids, 1, iota(begin, len));
          AttentionTileProblem p;
          p.batch = B;
          p.sq = sl;
          p.sk = len;
          p.heads = int(H);
          p.kv_heads = int(Hkv);
          p.head_dim = int(D);
          p.scale = 1.0f / std::sqrt(float(D));
          p.causal = true;
          p.q_chunk = opt.q_chunk;
          p.k_chunk = opt.k_chunk;
          p.q_pos = pos.data();
          p.k_pos = piece_pos.data();
          p.q_seg = in.segment_ids.data<int32_t>();
          p.k_seg = kseg.data<int32_t>();
          p.q = in.q.data<float>();
          p.k = k.data<float>();
          p.v = v.data<float>();
          p.bf16 = true;
          be.attention_forward_block(p, st);
        }
      }
      std::vector<float> o(acc.size()), lse(m.size());
      be.attention_forward_finish(st, o.data(), lse.data(), B, sl, int(H), int(D));
      CHECK(as_vector(out.o) == o);
      CHECK(as_vector(out.lse) == lse);
    }

    // Against blockwise bf16 on one rank: the blocks arrive in another order, so the running
    // max, hence P's rounding to bf16, differs: agreement at bf16 precision, relative to each
    // tensor's largest value (seen up to 4.3e-3 on 4 ranks); lse sums the unrounded P.
    Attention ring(opt, cpu_backend(), &sp);
    const AttentionOutput o2 = ring.forward(in);
    const AttentionGrads g = ring.backward(in, o2, take_positions(f.dout, 1, pos));
    auto scaled = [&](const Tensor& got, int dim, const Tensor& want) {
      double big = 0;
      for (int64_t i = 0; i < want.numel(); ++i)
        big = std::max(big, std::abs(double(want.data<float>()[i])));
      const double d = max_abs_diff(gather_sequence(sp, got, dim, pos, S), want) / (1 + big);
      UNSCOPED_INFO("scaled difference " << d);
      return d;
    };
    CHECK(scaled(o2.o, 1, wout.o) < 1.5e-2);
    CHECK(max_abs_diff(gather_sequence(sp, o2.lse, 2, pos, S), wout.lse) < 1e-5);
    CHECK(scaled(g.dq, 1, wg.dq) < 1.5e-2);
    CHECK(scaled(g.dk, 1, wg.dk) < 1.5e-2);
    CHECK(scaled(g.dv, 1, wg.dv) < 1.5e-2);
  }
}

TEST_CASE("ring tokens shared once per batch: same results, and checked against the input",
          "[attention]") {
  Mesh mesh(MeshShape{1, 1, -1, 1});
  Communicator& sp = mesh.axis(Axis::SP);
  const int n = sp.size();
  const int64_t B = 2, S = 48, H = 2, Hkv = 1, D = 8;
  const FullInput f = make_full(B, S, H, Hkv, D, /*segments=*/true, 3000);
  AttentionOptions opt;
  opt.impl = AttentionImpl::Ring;
  opt.layout = RingLayout::Striped;
  opt.q_chunk = opt.k_chunk = 4;
  opt.ring_pieces = 2;
  Attention ring(opt, cpu_backend(), &sp);
  const std::vector<int64_t> pos = layout_positions(opt.layout, S, n, sp.rank());
  const AttentionInput in = shard_input(f, pos);
  const Tensor dout = take_positions(f.dout, 1, pos);
  const AttentionOutput o = ring.forward(in);
  const AttentionGrads g = ring.backward(in, o, dout);

  AttentionInput shared = in;
  shared.ring_tokens = ring.share_tokens(pos, in.segment_ids, B);
  if (n == 1) {
    CHECK(shared.ring_tokens == nullptr);  // one rank: blockwise, nothing to share
    return;
  }
  REQUIRE(shared.ring_tokens != nullptr);
  const AttentionOutput o2 = ring.forward(shared);
  const AttentionGrads g2 = ring.backward(shared, o2, dout);
  CHECK(as_vector(o2.o) == as_vector(o.o));
  CHECK(as_vector(o2.lse) == as_vector(o.lse));
  CHECK(as_vector(g2.dq) == as_vector(g.dq));
  CHECK(as_vector(g2.dk) == as_vector(g.dk));
  CHECK(as_vector(g2.dv) == as_vector(g.dv));

  // A table of another batch (other positions) is refused, not silently used.
  const std::vector<int64_t> other = layout_positions(RingLayout::Contiguous, S, n, sp.rank());
  AttentionInput wrong = in;
  wrong.ring_tokens = ring.share_tokens(other, in.segment_ids, B);
  CHECK_THROWS_WITH(ring.forward(wrong), Catch::Contains("describe another batch"));
  wrong.ring_tokens = ring.share_tokens(pos, Tensor(), B);  // without segment ids
  CHECK_THROWS_WITH(ring.forward(wrong), Catch::Contains("describe another batch"));
  // Same positions, other documents (another micro-batch): caught too, as the input's segment ids
  // are in host memory.
  Tensor other_docs = Tensor::zeros({B, int64_t(pos.size())}, DType::I32);
  wrong.ring_tokens = ring.share_tokens(pos, other_docs, B);
  CHECK_THROWS_WITH(ring.forward(wrong), Catch::Contains("other segment ids"));
}

TEST_CASE("vanilla equals blockwise on the whole sequence", "[attention]") {
  const FullInput f = make_full(1, 80, 4, 1, 8, true, 7);
  const AttentionInput in = whole_input(f);
  for (bool causal : {false, true}) {
    AttentionOptions opt;
    opt.causal = causal;
    opt.q_chunk = 24;
    opt.k_chunk = 32;
    opt.impl = AttentionImpl::Vanilla;
    Attention van(opt, cpu_backend());
    opt.impl = AttentionImpl::Blockwise;
    Attention blk(opt, cpu_backend());
    const AttentionOutput a = van.forward(in), b = blk.forward(in);
    CHECK(max_abs_diff(a.o, b.o) < 2e-5);
    CHECK(max_abs_diff(a.lse, b.lse) < 2e-5);
    const AttentionGrads ga = van.backward(in, a, f.dout), gb = blk.backward(in, b, f.dout);
    CHECK(max_abs_diff(ga.dq, gb.dq) < 1e-4);
    CHECK(max_abs_diff(ga.dk, gb.dk) < 1e-4);
    CHECK(max_abs_diff(ga.dv, gb.dv) < 1e-4);
  }
}

TEST_CASE("peak memory: vanilla grows with S^2, blockwise with S, ring splits it", "[attention]") {
  Allocator& alloc = allocator_for(Device::CPU);
  auto workspace_peak = [&](AttentionImpl impl, int64_t S) {
    const FullInput f = make_full(1, S, 2, 2, 16, false, 3);
    const AttentionInput in = whole_input(f);
    AttentionOptions opt;
    opt.impl = impl;
    opt.q_chunk = 64;
    opt.k_chunk = 64;
    Attention attn(opt, cpu_backend());
    const size_t live = alloc.live_bytes();
    alloc.reset_peak();
    const AttentionOutput out = attn.forward(in);
    const AttentionGrads g = attn.backward(in, out, f.dout);
    return double(alloc.peak_bytes() - live);
  };
  const double v1 = workspace_peak(AttentionImpl::Vanilla, 512);
  const double v2 = workspace_peak(AttentionImpl::Vanilla, 1024);
  const double b1 = workspace_peak(AttentionImpl::Blockwise, 512);
  const double b2 = workspace_peak(AttentionImpl::Blockwise, 1024);
  CAPTURE(v1, v2, b1, b2);
  CHECK(v2 / v1 > 3.0);   // S x S scores dominate
  CHECK(b2 / b1 <= 2.1);  // only O(S) buffers (plus constant tile workspace)
  CHECK(b2 < v2 / 4);
}

TEST_CASE("ring_pieces shrinks the ring's own buffers by the piece count", "[attention]") {
  Mesh mesh(MeshShape{1, 1, -1, 1});
  Communicator& sp = mesh.axis(Axis::SP);
  const int n = sp.size();
  if (n == 1) return;  // a ring of one rank has no buffers (blockwise)
  const int64_t S = 512 * n, H = 2, D = 16;
  Allocator& alloc = allocator_for(Device::CPU);
  const FullInput f = make_full(1, S, H, H, D, false, 5);
  const std::vector<int64_t> pos = layout_positions(RingLayout::Zigzag, S, n, sp.rank());
  const AttentionInput in = shard_input(f, pos);
  const Tensor dout = take_positions(f.dout, 1, pos);
  auto peak = [&](int64_t pieces, AttentionGrads* grads) {
    AttentionOptions opt;
    opt.impl = AttentionImpl::Ring;
    opt.q_chunk = opt.k_chunk = 64;
    opt.ring_pieces = pieces;
    Attention attn(opt, cpu_backend(), &sp);
    const size_t live = alloc.live_bytes();
    alloc.reset_peak();
    const AttentionOutput out = attn.forward(in);
    *grads = attn.backward(in, out, dout);
    return double(alloc.peak_bytes() - live);
  };
  AttentionGrads g1, g4;
  const double p1 = peak(1, &g1), p4 = peak(4, &g4);
  // u = one float32 [Sl, Hkv, D] tensor. Backward holds two K/V blocks (4u) and three dK/dV
  // blocks (6u, one of them returned); with 4 pieces, a quarter of those (2.5u) plus the returned
  // dK, dV (2u): 5.5u less.
  const double u = double(S / n * H * D * 4);
  CAPTURE(n, p1, p4, u);
  CHECK(p1 - p4 > 5.0 * u);
  CHECK(p1 - p4 < 6.0 * u);
  // Same function: only the order of the float32 sums differs.
  CHECK(max_abs_diff(g1.dq, g4.dq) < 1e-4);
  CHECK(max_abs_diff(g1.dk, g4.dk) < 1e-4);
  CHECK(max_abs_diff(g1.dv, g4.dv) < 1e-4);
}

TEST_CASE("bf16 inputs: exact on their rounded values, close to the float32 result",
          "[attention]") {
  Mesh mesh(MeshShape{1, 1, -1, 1});
  Communicator& sp = mesh.axis(Axis::SP);
  const int n = sp.size();
  const int64_t S = 64;
  const FullInput f = make_full(1, S, 4, 2, 16, false, 21);
  AttentionOptions opt;
  opt.causal = true;
  opt.q_chunk = 16;
  opt.k_chunk = 16;

  // Float32 results on the original inputs and on the inputs rounded through bf16.
  opt.impl = AttentionImpl::Blockwise;
  Attention whole(opt, cpu_backend());
  const AttentionOutput exact = whole.forward(whole_input(f));
  FullInput rounded = f;
  for (Tensor* t : {&rounded.q, &rounded.k, &rounded.v}) *t = t->to(DType::BF16).to(DType::F32);
  const AttentionOutput on_rounded = whole.forward(whole_input(rounded));

  opt.impl = AttentionImpl::Ring;
  opt.layout = RingLayout::Zigzag;
  Attention ring(opt, cpu_backend(), &sp);
  const std::vector<int64_t> pos = layout_positions(opt.layout, S, n, sp.rank());
  AttentionInput in;
  in.q = take_positions(f.q.to(DType::BF16), 1, pos);
  in.k = take_positions(f.k.to(DType::BF16), 1, pos);
  in.v = take_positions(f.v.to(DType::BF16), 1, pos);
  in.positions = pos;
  REQUIRE(in.q.dtype() == DType::BF16);
  const AttentionOutput out = ring.forward(in);
  const Tensor o = gather_sequence(sp, out.o, 1, pos, S);
  const Tensor lse = gather_sequence(sp, out.lse, 2, pos, S);
  // The CPU computes in float32 after converting bf16 inputs once: as exact as float32 on the
  // rounded values.
  CHECK(max_abs_diff(o, on_rounded.o) < 2e-5);
  CHECK(max_abs_diff(lse, on_rounded.lse) < 2e-5);
  // Against the unrounded inputs, bf16's 8-bit mantissa (relative step 2^-8) bounds the error:
  // |q.k| * scale sums 16 products of ~N(0,1) values, so scores move by ~1e-2; stated tolerance
  // 5e-2 absolute on O (values of order 1) and LSE.
  CHECK(max_abs_diff(o, exact.o) < 5e-2);
  CHECK(max_abs_diff(lse, exact.lse) < 5e-2);
  CHECK(max_abs_diff(o, exact.o) > 0);  // the rounding really happened
}
