#include "core/attention_plan.h"

#include <algorithm>
#include <utility>

#include "core/cuda/fused_attention_body.h"
#include "core/error.h"

namespace ringattn {

namespace {

// Splits [0, n) into chunks of `chunk` tokens (<= 0: as large as possible) that never straddle a
// break in the positions: a zigzag shard is two separate position ranges, and a tile across the
// jump would cover both sides of the diagonal and need the element mask everywhere. A break is a
// gap unlike the shard's step (contiguous: 1, striped: N): the smallest of its first three gaps,
// as a break skips positions and so is wider than the step, and a zigzag shard, or a ring piece
// of one, has one break, which may come first (the first gap taken as the step then made every
// later gap a break). Shards with many breaks are not a layout this project produces; they are
// chunked as if they had none (still exact, just masked).
std::vector<TileChunk> make_chunks(const std::vector<int64_t>& pos, int64_t chunk) {
  constexpr size_t kMaxRuns = 8;
  const int64_t n = int64_t(pos.size());
  std::vector<int64_t> starts{0};
  if (n > 2) {
    const auto gap = [&](int64_t i) { return pos[size_t(i + 1)] - pos[size_t(i)]; };
    int64_t step = gap(0);
    for (int64_t i = 1; i < 3 && i + 1 < n; ++i) step = std::min(step, gap(i));
    for (int64_t i = 0; i + 1 < n && starts.size() <= kMaxRuns; ++i)
      if (gap(i) != step) starts.push_back(i + 1);
    if (starts.size() > kMaxRuns) starts.assign(1, 0);
  }
  starts.push_back(n);
  std::vector<TileChunk> chunks;
  for (size_t r = 0; r + 1 < starts.size(); ++r) {
    const int64_t len = chunk > 0 ? chunk : starts[r + 1] - starts[r];
    for (int64_t b = starts[r]; b < starts[r + 1]; b += len) {
      const int64_t e = std::min(b + len, starts[r + 1]);
      chunks.push_back({b, e, pos[size_t(b)], pos[size_t(e - 1)]});
    }
  }
  return chunks;
}

std::vector<SegmentRange> segment_ranges(const std::vector<int32_t>& seg, int64_t batch,
                                         int64_t len, const std::vector<TileChunk>& chunks) {
  std::vector<SegmentRange> out;
  if (seg.empty()) return out;
  out.reserve(size_t(batch) * chunks.size());
  for (int64_t b = 0; b < batch; ++b)
    for (const TileChunk& c : chunks) {
      const auto first = seg.begin() + b * len;
      const auto [lo, hi] = std::minmax_element(first + c.begin, first + c.end);
      out.push_back({*lo, *hi});
    }
  return out;
}

// Missing positions mean 0..n-1 (a single unsharded sequence).
std::vector<int64_t> or_iota(std::vector<int64_t> pos, int64_t n) {
  if (pos.empty() && n > 0) {
    pos.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) pos[size_t(i)] = i;
  }
  return pos;
}

}  // namespace

TilePlan::TilePlan(const AttentionTileProblem& p, std::vector<int64_t> q_positions,
                   std::vector<int64_t> k_positions, std::vector<int32_t> q_segments,
                   std::vector<int32_t> k_segments) {
  RA_CHECK(p.batch >= 0 && p.sq >= 0 && p.sk >= 0 && p.head_dim > 0,
           "attention tile: bad sizes batch={} sq={} sk={} head_dim={}", p.batch, p.sq, p.sk,
           p.head_dim);
  RA_CHECK(p.heads > 0 && p.kv_heads > 0 && p.heads % p.kv_heads == 0,
           "attention tile: {} query heads cannot share {} kv heads", p.heads, p.kv_heads);
  RA_CHECK(!p.k_bf16 == !p.v_bf16, "attention tile: bf16 keys and values come together");
  RA_CHECK((!p.k_bf16 && !p.q_bf16) || p.bf16,
           "attention tile: bf16 queries, keys and values need a bf16 problem");
  RA_CHECK((p.q || p.q_bf16) && (p.k || p.k_bf16) && (p.v || p.v_bf16),
           "attention tile: q, k and v must be given");
  RA_CHECK(!p.q_seg == !p.k_seg,
           "attention tile: segment ids must be given for both queries and keys, or neither");
  causal = p.causal;
  segmented = p.q_seg != nullptr;
  q_pos = or_iota(std::move(q_positions), p.sq);
  k_pos = or_iota(std::move(k_positions), p.sk);
  if (causal) {
    RA_CHECK(
        std::is_sorted(q_pos.begin(), q_pos.end()) && std::is_sorted(k_pos.begin(), k_pos.end()),
        "attention tile: causal positions must be ascending within a shard");
  }
  q_seg = std::move(q_segments);
  k_seg = std::move(k_segments);
  qc = make_chunks(q_pos, p.q_chunk);
  kc = make_chunks(k_pos, p.k_chunk);
  q_ranges = segment_ranges(q_seg, p.batch, p.sq, qc);
  k_ranges = segment_ranges(k_seg, p.batch, p.sk, kc);
  for (const TileChunk& c : qc) max_q = std::max(max_q, c.size());
  for (const TileChunk& c : kc) max_k = std::max(max_k, c.size());
}

TileKind TilePlan::classify(int64_t b, size_t qi, size_t ki) const {
  const TileChunk& q = qc[qi];
  const TileChunk& k = kc[ki];
  bool mask = false;
  if (causal) {
    if (k.pos_min > q.pos_max) return TileKind::Skip;
    mask = k.pos_max > q.pos_min;
  }
  if (segmented) {
    const SegmentRange& a = q_ranges[size_t(b) * qc.size() + qi];
    const SegmentRange& c = k_ranges[size_t(b) * kc.size() + ki];
    if (a.hi < c.lo || c.hi < a.lo) return TileKind::Skip;
    mask = mask || !(a.lo == a.hi && c.lo == c.hi && a.lo == c.lo);
  }
  return mask ? TileKind::Masked : TileKind::Full;
}

bool runs_fused(const AttentionTileProblem& p) {
  RA_CHECK(!p.fused || p.bf16,
           "attention: the fused kernels are bf16 kernels (AttentionTileProblem::bf16 unset)");
  RA_CHECK(!p.fused || fused::head_dim_fits(p.head_dim),
           "attention: the fused kernels need head_dim to be a multiple of 16 and at most {}, got "
           "{}",
           fused::kMaxHeadDim, p.head_dim);
  return p.fused;
}

void count_tile(AttentionTileStats& stats, TileKind kind, double flops) {
  if (kind == TileKind::Skip) {
    ++stats.tiles_skipped;
    return;
  }
  ++stats.tiles_computed;
  if (kind == TileKind::Masked) ++stats.tiles_masked;
  stats.flops += flops;
}

void add_tile_stats(AttentionTileStats* to, const AttentionTileStats& from) {
  if (!to) return;
  to->tiles_computed += from.tiles_computed;
  to->tiles_masked += from.tiles_masked;
  to->tiles_skipped += from.tiles_skipped;
  to->flops += from.flops;
}

AttentionTileStats plan_stats(const TilePlan& plan, int64_t batch, int heads, int head_dim,
                              double flops_per_elem) {
  AttentionTileStats stats;
  for (int64_t b = 0; b < batch; ++b)
    for (size_t qi = 0; qi < plan.qc.size(); ++qi)
      for (size_t ki = 0; ki < plan.kc.size(); ++ki) {
        const TileKind kind = plan.classify(b, qi, ki);
        const double flops = flops_per_elem * double(plan.qc[qi].size()) *
                             double(plan.kc[ki].size()) * double(head_dim);
        for (int h = 0; h < heads; ++h) count_tile(stats, kind, flops);
      }
  return stats;
}

}  // namespace ringattn
