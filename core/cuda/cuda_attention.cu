// CUDA attention tiles. The host plans the tiles exactly as the CPU backend does (the same chunks,
// the same skip / full / masked classification, the same statistics); the device runs them in
// wavefronts of (query chunk, key chunk) pairs (plan_launches below), each launch holding the
// tiles of every (batch row, head) that is not skipped of several pairs:
//
//   forward    S = scale Q K^T            cublasSgemmBatched, into workspace from the allocator
//              mask, online softmax       forward_softmax_kernel: P = exp(S - m'), rescales acc
//                                         and updates m, l
//              acc += P V                 cublasSgemmBatched
//   backward   P = exp(scale Q K^T - lse) batched GEMM, then backward_probs_kernel
//              dV += P^T dO               batched GEMM
//              dP = dO V^T                batched GEMM
//              dS = P (dP - delta)        backward_dscores_kernel
//              dQ += scale dS K           batched GEMM
//              dK += scale dS^T Q         batched GEMM
//
// AttentionTileProblem::fused (bf16) replaces all of that by the fused kernels of
// core/cuda/fused_attention.cu: the same plan and statistics, positions uploaded, one launch.
//
// A batched GEMM must never have two of its problems write the same output: a launch holds at
// most one pair per query chunk and per key chunk, so in the forward every tile owns its (batch,
// query head) rows of acc; in the backward the query heads of one group share dK and dV, so a
// backward launch holds only one query head per kv head (the group's heads go in separate
// launches, one after the other on the stream). The GEMMs' pointer arrays are written on the
// device, per launch, from the tiles' items (tile_pointers_kernel).
//
// The element mask (causal by global positions, segment ids) is applied to every computed tile of
// a problem that has one, so the result never depends on the classification; the classification
// only decides what is skipped and what the statistics say (the CPU applies it to "masked" tiles
// only, which computes the same values).
#include "core/cuda/cuda_attention.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <vector>

#include "core/attention_plan.h"
#include "core/cuda/cuda_common.cuh"
#include "core/cuda/cuda_layers.h"
#include "core/cuda/cuda_optim.h"
#include "core/cuda/fused_attention.h"
#include "core/cuda/pinned_upload.h"
#include "core/error.h"

namespace ringattn::cuda {

namespace {

// Score workspace per buffer (forward: S; backward: P and dP). A launch holds the tiles of one
// group of heads of one chunk pair at least (B x H forward, B x Hkv backward: what a launch held
// when it ran one pair), more of its wavefront's pairs while they fit in kWavefrontScoreFloats,
// and never more than kMaxScoreFloats (beyond, that pair's tiles go in several launches). Whole-
// shard tiles (vanilla) of one head are never split: a single tile may exceed both. The memory
// plan does not count this workspace (model/trainer.cpp): a wavefront's share stays small.
constexpr int64_t kMaxScoreFloats = int64_t(1) << 26;        // 256 MiB of floats
constexpr int64_t kWavefrontScoreFloats = int64_t(1) << 23;  // 32 MiB of floats
// The grid's y dimension indexes the tiles of a launch.
constexpr int64_t kMaxTilesPerLaunch = 65535;

int64_t round_up(int64_t x, int64_t a) {
  return (x + a - 1) / a * a;
}

// ---- host planning: the shared tile plan (core/attention_plan.h) plus the CUDA strides ----------

struct Plan : TilePlan {
  const AttentionTileProblem& p;
  int64_t D = 0, G = 0, ldq = 0, ldk = 0;
  int64_t ld_s = 0;

  // Positions and segment ids may be in host or device memory: host_copy reads either.
  Plan(cudaStream_t stream, const AttentionTileProblem& prob)
      : TilePlan(prob, maybe_copy(stream, prob.q_pos, prob.sq),
                 maybe_copy(stream, prob.k_pos, prob.sk),
                 maybe_copy(stream, prob.q_seg, prob.batch * prob.sq),
                 maybe_copy(stream, prob.k_seg, prob.batch * prob.sk)),
        p(prob) {
    RA_CHECK(int64_t(p.heads) * p.head_dim <= INT_MAX && p.sq <= INT_MAX && p.sk <= INT_MAX &&
                 p.batch <= INT_MAX,
             "attention tile: sizes exceed the cuBLAS int range");
    D = p.head_dim;
    G = p.heads / p.kv_heads;
    ldq = int64_t(p.heads) * D;
    ldk = int64_t(p.kv_heads) * D;
    ld_s = round_up(std::max<int64_t>(max_k, 1), 32);  // 128-byte rows: coalesced row access
    RA_CHECK(ld_s <= INT_MAX, "attention tile: key block of {} exceeds the cuBLAS int range",
             max_k);
  }

  // A host copy of what a problem pointer holds; empty when it is null (TilePlan's "not given").
  template <typename T>
  static std::vector<T> maybe_copy(cudaStream_t stream, const T* src, int64_t n) {
    return src && n > 0 ? host_copy(stream, src, n) : std::vector<T>();
  }

  int64_t tile_floats() const { return max_q * ld_s; }
};

// One computed tile: batch row b, query head h, the first query of its query chunk (in the shard)
// and the first key of its key chunk (in the block), and `slot`, its place in its launch (its
// score tile is slot * tile_stride into the launch's workspace, and it is blockIdx.y there).
struct TileItem {
  int b = 0, h = 0, q_begin = 0, k_begin = 0, slot = 0;
};

// The tiles that run together: items[first, first + count), all of one shape nq x nk (a batched
// GEMM has one shape), of chunk pairs no two of which share a query chunk or a key chunk.
struct Launch {
  int64_t nq = 0, nk = 0;
  size_t first = 0;
  int count = 0;
};

// `pair_tiles`: the tiles of one group of heads of one chunk pair (B x heads_per_group).
int64_t max_tiles_per_launch(const Plan& pl, int64_t pair_tiles) {
  const int64_t tile = std::max<int64_t>(pl.tile_floats(), 1);
  const int64_t tiles = std::max(pair_tiles, kWavefrontScoreFloats / tile);
  return std::clamp<int64_t>(std::min(tiles, kMaxScoreFloats / tile), 1, kMaxTilesPerLaunch);
}

// The computed tiles of one call, as items, cut into launches.
struct TileWork {
  std::vector<TileItem> items;
  std::vector<Launch> launches;
  int widest = 0;  // most tiles in one launch
};

// Tiles in wavefronts: wavefront w holds the chunk pairs (qi, ki) with qi + ki = w. A query chunk
// then meets its key chunks in ascending order, one wavefront after another, as in the CPU's loop
// (the online softmax and dQ's sums see them in that order), and a key chunk its query chunks in
// ascending order (dK's and dV's sums); and no two pairs of a wavefront share a query chunk or a
// key chunk, so they run in the same launches: a call of nq x nk chunk pairs is nq + nk - 1
// wavefronts, not nq * nk steps of a few launches each (at S = 128K and chunks of 256 that was
// millions of launches per call). Per wavefront, `groups` runs of launches, group g holding the
// heads head_of(g, j) for j < heads_per_group of every batch row, and of its pairs those of one
// shape (chunks cut at a break or at the end are shorter); a launch holds at most
// max_tiles_per_launch tiles. Counts every tile (skipped ones too) into `stats` with
// flops_per_elem * nq * nk * D flops.
template <typename HeadOf>
TileWork plan_launches(const Plan& pl, int64_t groups, int64_t heads_per_group, HeadOf head_of,
                       double flops_per_elem, AttentionTileStats* stats) {
  const size_t max_tiles = size_t(max_tiles_per_launch(pl, pl.p.batch * heads_per_group));
  const size_t nqc = pl.qc.size(), nkc = pl.kc.size();
  TileWork w;
  AttentionTileStats counted;
  struct Pair {
    size_t qi, ki;
    int64_t nq, nk;
  };
  std::vector<Pair> pairs;
  for (size_t wave = 0; nqc > 0 && nkc > 0 && wave + 1 < nqc + nkc; ++wave) {
    pairs.clear();
    for (size_t qi = wave >= nkc ? wave - (nkc - 1) : 0; qi <= std::min(wave, nqc - 1); ++qi)
      pairs.push_back({qi, wave - qi, pl.qc[qi].size(), pl.kc[wave - qi].size()});
    // Pairs of one shape side by side, each shape's in ascending qi (the order is free: no two
    // pairs of a wavefront touch the same rows).
    std::stable_sort(pairs.begin(), pairs.end(), [](const Pair& x, const Pair& y) {
      return x.nq != y.nq ? x.nq < y.nq : x.nk < y.nk;
    });
    for (int64_t g = 0; g < groups; ++g)
      for (size_t s = 0, e = 0; s < pairs.size(); s = e) {
        for (e = s; e < pairs.size() && pairs[e].nq == pairs[s].nq && pairs[e].nk == pairs[s].nk;)
          ++e;
        const size_t start = w.items.size();
        const double flops =
            flops_per_elem * double(pairs[s].nq) * double(pairs[s].nk) * double(pl.D);
        for (size_t x = s; x < e; ++x) {
          const Pair& pr = pairs[x];
          for (int64_t b = 0; b < pl.p.batch; ++b)
            for (int64_t j = 0; j < heads_per_group; ++j) {
              const TileKind kind = pl.classify(b, pr.qi, pr.ki);
              count_tile(counted, kind, flops);
              if (kind != TileKind::Skip)
                w.items.push_back({int(b), int(head_of(g, j)), int(pl.qc[pr.qi].begin),
                                   int(pl.kc[pr.ki].begin), 0});
            }
        }
        for (size_t at = start; at < w.items.size(); at += max_tiles) {
          const int count = int(std::min(w.items.size() - at, max_tiles));
          for (int t = 0; t < count; ++t) w.items[at + size_t(t)].slot = t;
          w.launches.push_back({pairs[s].nq, pairs[s].nk, at, count});
          w.widest = std::max(w.widest, count);
        }
      }
  }
  add_tile_stats(stats, counted);
  return w;
}

// Row-major batched C_i = alpha op(A_i) op(B_i) + beta C_i: cuBLAS is column-major, so it computes
// C_i^T = op(B_i)^T op(A_i)^T with the operands swapped (as Backend::gemm does).
void gemm_batched(cublasHandle_t h, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                  float* const* a, int64_t lda, float* const* b, int64_t ldb, float beta,
                  float* const* c, int64_t ldc, int count) {
  CUBLAS_CHECK(cublasSgemmBatched(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                  int(n), int(m), int(k), &alpha, b, int(ldb), a, int(lda), &beta,
                                  c, int(ldc), count));
}

// The same with bf16 A and B (the pointer arrays hold bf16 addresses), float32 accumulation and C:
// the tile GEMMs of AttentionTileProblem::bf16 (tensor cores).
void gemm_batched_bf16(cublasHandle_t h, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                       float alpha, float* const* a, int64_t lda, float* const* b, int64_t ldb,
                       float beta, float* const* c, int64_t ldc, int count) {
  CUBLAS_CHECK(cublasGemmBatchedEx(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(n), int(m), int(k), &alpha,
                                   reinterpret_cast<const void* const*>(b), CUDA_R_16BF, int(ldb),
                                   reinterpret_cast<const void* const*>(a), CUDA_R_16BF, int(lda),
                                   &beta, reinterpret_cast<void* const*>(c), CUDA_R_32F, int(ldc),
                                   count, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// One GEMM of a tile loop, f32 or bf16 operands (whose pointer arrays then hold bf16 addresses).
void tile_gemm(bool bf16, cublasHandle_t h, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
               float alpha, float* const* a, int64_t lda, float* const* b, int64_t ldb, float beta,
               float* const* c, int64_t ldc, int count) {
  if (bf16)
    gemm_batched_bf16(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, count);
  else
    gemm_batched(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, count);
}

// AttentionTileProblem::bf16: q, k, v (and dout) rounded to bf16 once per call, and one bf16 tile
// buffer (`tiles` tiles of `tile_stride`) that P and dS are rounded into before their GEMMs.
// Empty (no allocation) for a float32 problem.
struct Bf16Operands {
  DeviceScratch mem;
  uint16_t *q = nullptr, *k = nullptr, *v = nullptr, *dout = nullptr, *tile = nullptr;

  // A head slice starts h * head_dim elements into a row: 16-byte aligned, as cuBLAS needs for
  // bf16 operands read through pointer arrays, only when head_dim is a multiple of 8 (the config
  // check says so for device = cuda). Row strides and the tile buffer are multiples of 8 then too.
  static size_t checked_bytes(const AttentionTileProblem& p, const float* dout, size_t tile_elems) {
    RA_CHECK(!p.bf16 || p.head_dim % 8 == 0,
             "attention: bf16 tile GEMMs on CUDA need head_dim to be a multiple of 8, got {}",
             p.head_dim);
    for (const uint16_t* ptr : {p.q_bf16, p.k_bf16, p.v_bf16})
      RA_CHECK(reinterpret_cast<uintptr_t>(ptr) % 16 == 0,
               "attention: bf16 queries, keys and values on CUDA must be 16-byte aligned");
    return bytes(p, dout, tile_elems);
  }
  static size_t bytes(const AttentionTileProblem& p, const float* dout, size_t tile_elems) {
    if (!p.bf16) return 0;
    const size_t nq = size_t(p.batch * p.sq) * size_t(p.heads) * size_t(p.head_dim);
    const size_t nk = size_t(p.batch * p.sk) * size_t(p.kv_heads) * size_t(p.head_dim);
    const size_t kv = p.k_bf16 ? 0 : 2 * nk;  // given as bf16: used in place
    const size_t q = p.q_bf16 ? 0 : nq;
    return (q + (dout ? nq : 0) + kv + tile_elems) * sizeof(uint16_t) + 5 * 16;
  }
  Bf16Operands(cudaStream_t stream, const AttentionTileProblem& p, const float* dout_in,
               size_t tile_elems)
      : mem(stream, checked_bytes(p, dout_in, tile_elems), "attention bf16 operands") {
    if (!p.bf16) return;
    const int64_t nq = p.batch * p.sq * p.heads * p.head_dim;
    const int64_t nk = p.batch * p.sk * p.kv_heads * p.head_dim;
    size_t at = 0;
    auto take = [&](int64_t n) {
      uint16_t* ptr = mem.at<uint16_t>(at);
      at += (size_t(n) * sizeof(uint16_t) + 15) / 16 * 16;
      return ptr;
    };
    q = p.q_bf16 ? const_cast<uint16_t*>(p.q_bf16) : take(nq);
    if (p.k_bf16) {
      k = const_cast<uint16_t*>(p.k_bf16);  // only read (through the GEMMs' pointer arrays)
      v = const_cast<uint16_t*>(p.v_bf16);
    } else {
      k = take(nk);
      v = take(nk);
    }
    if (dout_in) dout = take(nq);
    tile = take(int64_t(tile_elems));
    if (!p.q_bf16) to_bf16(stream, p.q, q, nq);
    if (!p.k_bf16) {
      to_bf16(stream, p.k, k, nk);
      to_bf16(stream, p.v, v, nk);
    }
    if (dout_in) to_bf16(stream, dout_in, dout, nq);
  }
};

// Positions, segment ids and tile items for one call: built on the host, uploaded in one copy.
// Also the device addresses of each section.
struct Staging {
  Layout lay;
  size_t q_pos_at = 0, k_pos_at = 0, q_seg_at = 0, k_seg_at = 0, items_at = 0;
  std::vector<unsigned char> host;

  Staging(const Plan& pl, const std::vector<TileItem>& items) {
    q_pos_at = lay.add(pl.q_pos.size() * sizeof(int64_t));
    k_pos_at = lay.add(pl.k_pos.size() * sizeof(int64_t));
    q_seg_at = lay.add(pl.q_seg.size() * sizeof(int32_t));
    k_seg_at = lay.add(pl.k_seg.size() * sizeof(int32_t));
    items_at = lay.add(items.size() * sizeof(TileItem));
    host.assign(lay.bytes(), 0);
    copy_in(q_pos_at, pl.q_pos);
    copy_in(k_pos_at, pl.k_pos);
    copy_in(q_seg_at, pl.q_seg);
    copy_in(k_seg_at, pl.k_seg);
    copy_in(items_at, items);
  }
  template <typename T>
  void copy_in(size_t at, const std::vector<T>& v) {
    if (!v.empty()) std::memcpy(host.data() + at, v.data(), v.size() * sizeof(T));
  }
};

// ---- the GEMMs' pointer arrays ------------------------------------------------------------------

// What one pointer array of a launch holds for each tile: base + offset * elem_bytes, the offset
// being where the tile's rows start in a [B, S, heads, D] operand: its query rows (q, dout, acc,
// dq: batch row b, query head h) or its key rows (k, v, dk, dv: kv head h / G); or its score tile
// in a workspace (slot * tile_stride). bf16 operands (elem_bytes 2) are stored as float* all the
// same: cuBLAS reads them as bf16 (gemm_batched_bf16).
enum class RowsOf : int { Query, Key, Slot };

struct PointerArray {
  char* base = nullptr;
  int elem_bytes = 4;
  RowsOf rows = RowsOf::Query;
};

constexpr int kMaxPointerArrays = 10;

struct PointerSpec {
  PointerArray arrays[kMaxPointerArrays];
  int count = 0;
  int64_t sq = 0, sk = 0, ldq = 0, ldk = 0, D = 0, G = 1, tile_stride = 0;

  PointerSpec(const Plan& pl, int64_t tile_floats)
      : sq(pl.p.sq),
        sk(pl.p.sk),
        ldq(pl.ldq),
        ldk(pl.ldk),
        D(pl.D),
        G(pl.G),
        tile_stride(tile_floats) {}
  // Adds an array and returns its index: array i of a launch of n tiles starts at i * n.
  int add(const float* f32, RowsOf rows) { return add(f32, nullptr, rows); }
  int add(uint16_t* bf16, RowsOf rows) { return add(nullptr, bf16, rows); }
  // The operand's rounded bf16 copy when there is one, else the float32 operand.
  int add(const float* f32, uint16_t* bf16, RowsOf rows) {
    RA_CHECK(count < kMaxPointerArrays, "attention tile: too many pointer arrays");
    arrays[count] = bf16 ? PointerArray{reinterpret_cast<char*>(bf16), 2, rows}
                         : PointerArray{reinterpret_cast<char*>(const_cast<float*>(f32)), 4, rows};
    return count++;
  }
};

// Thread t < n writes tile t's entry of every array (array i at out[i * n + t]).
__global__ void tile_pointers_kernel(PointerSpec s, const TileItem* items, int n, char** out) {
  for (int64_t t = global_thread(); t < n; t += grid_stride()) {
    const TileItem it = items[t];
    const int64_t q = (int64_t(it.b) * s.sq + it.q_begin) * s.ldq + int64_t(it.h) * s.D;
    const int64_t k = (int64_t(it.b) * s.sk + it.k_begin) * s.ldk + int64_t(it.h) / s.G * s.D;
    const int64_t tile = int64_t(it.slot) * s.tile_stride;
    for (int i = 0; i < s.count; ++i) {
      const PointerArray& a = s.arrays[i];
      const int64_t off = a.rows == RowsOf::Query ? q : a.rows == RowsOf::Key ? k : tile;
      out[int64_t(i) * n + t] = a.base + off * a.elem_bytes;
    }
  }
}

// The pointer arrays of each launch in turn, in one device buffer sized for the widest launch.
class LaunchPointers {
 public:
  // Array i of a launch: its L.count entries.
  struct Arrays {
    float** base;
    int count;
    float** operator()(int i) const { return base + int64_t(i) * count; }
  };
  LaunchPointers(cudaStream_t stream, const PointerSpec& spec, int widest, const TileItem* items)
      : stream_(stream),
        spec_(spec),
        items_(items),
        mem_(stream, size_t(widest) * size_t(spec.count) * sizeof(float*),
             "attention tile pointers") {}
  // Launch L's arrays, written in stream order: after the previous launch's GEMMs have read
  // theirs from the same buffer.
  Arrays write(const Launch& L) const {
    RA_LAUNCH(grid_for(L.count), kThreads, 0, stream_, tile_pointers_kernel)
    (spec_, items_ + L.first, L.count, mem_.at<char*>());
    CUDA_CHECK(cudaGetLastError());
    return {mem_.at<float*>(), L.count};
  }

 private:
  cudaStream_t stream_;
  PointerSpec spec_;
  const TileItem* items_;
  DeviceScratch mem_;
};

// ---- kernels ------------------------------------------------------------------------------------

// What the mask of one launch's tiles needs, all in device memory (where each tile's chunks begin
// is its item's).
struct MaskArgs {
  int64_t sq = 0, sk = 0;  // shard and block lengths (rows of positions and segment ids)
  int64_t nq = 0, nk = 0;  // the launch's tile shape
  bool causal = false;
  const int64_t* q_pos = nullptr;  // [sq]
  const int64_t* k_pos = nullptr;  // [sk]
  const int32_t* q_seg = nullptr;  // [B, sq] or null
  const int32_t* k_seg = nullptr;  // [B, sk] or null
};

// Key `key` of the block is visible to a query at qpos with segment qseg in batch row b.
__device__ inline bool visible(const MaskArgs& a, int64_t b, int64_t qpos, int32_t qseg,
                               int64_t key) {
  if (a.causal && a.k_pos[key] > qpos) return false;
  if (a.q_seg && a.k_seg[b * a.sk + key] != qseg) return false;
  return true;
}

// One warp per row r of tile blockIdx.y (a block's warps take consecutive rows; grid-stride over
// rows): masks the row's scores, folds them into (m, l, acc) and leaves P = exp(S - m_new) in
// place for the P V product (0 where masked). Follows the CPU exactly: a row with nothing visible
// so far (m_new still kMaskedScore) gets P = 0 and keeps its state. A warp, not a block, per row:
// a key chunk of up to a few thousand is 32-128 floats per lane, and the row's max and sum are
// shuffles instead of a block reduction's barriers (two of them, nine barriers each, per row).
// Every lane reads m[row]; lane 0 writes it after a __syncwarp (shuffles alone do not order
// memory between lanes). The max is fmaxf's (FmaxOp): commutative even with NaN, so every lane
// gets the same m_new and takes the same branches. Under bf16 (`rounded` not null) P goes, rounded,
// into `rounded` instead (the same layout), which the P V GEMM reads: no float32 P and no second
// rounding pass; l sums the unrounded P as before.
__global__ void forward_softmax_kernel(MaskArgs a, const TileItem* items, float* scores,
                                       int64_t tile_stride, int64_t ld_s, int heads, int head_dim,
                                       float* m, float* l, float* acc, uint16_t* rounded) {
  const int lane = int(threadIdx.x % 32);
  const int64_t warps = blockDim.x / 32;  // kWarps
  const TileItem item = items[blockIdx.y];
  const int64_t b = item.b, h = item.h;
  float* tile = scores + int64_t(blockIdx.y) * tile_stride;
  uint16_t* tile16 = rounded ? rounded + int64_t(blockIdx.y) * tile_stride : nullptr;
  for (int64_t r = blockIdx.x * warps + threadIdx.x / 32; r < a.nq; r += gridDim.x * warps) {
    const int64_t i = item.q_begin + r;
    const int64_t qpos = a.q_pos[i];
    const int32_t qseg = a.q_seg ? a.q_seg[b * a.sq + i] : 0;
    float* row = tile + r * ld_s;
    uint16_t* row16 = tile16 ? tile16 + r * ld_s : nullptr;
    float mx = kMaskedScore;
    for (int64_t j = lane; j < a.nk; j += 32) {
      const float s = visible(a, b, qpos, qseg, item.k_begin + j) ? row[j] : kMaskedScore;
      row[j] = s;
      mx = fmaxf(mx, s);
    }
    mx = warp_reduce(mx, FmaxOp());
    const int64_t stat = (b * heads + h) * a.sq + i;
    const float m_old = m[stat];
    const float m_new = fmaxf(m_old, mx);
    if (m_new <= kMaskedScore) {  // the same for every lane of the warp
      for (int64_t j = lane; j < a.nk; j += 32) {
        if (row16)
          row16[j] = 0;
        else
          row[j] = 0.0f;
      }
      continue;
    }
    float sum = 0.0f;
    for (int64_t j = lane; j < a.nk; j += 32) {
      const float e = row[j] <= kMaskedScore ? 0.0f : expf(row[j] - m_new);
      if (row16)
        row16[j] = round_to_bf16(e);  // the only P the bf16 P V GEMM reads
      else
        row[j] = e;
      sum += e;
    }
    sum = warp_reduce(sum, SumOp<float>());
    const bool grows = m_new > m_old;
    const float alpha = grows ? expf(m_old - m_new) : 1.0f;
    __syncwarp();  // every lane's read of m[stat] before lane 0's write
    if (lane == 0) {
      l[stat] = grows ? l[stat] * alpha + sum : l[stat] + sum;
      m[stat] = m_new;
    }
    if (grows) {
      float* acc_row = acc + ((b * a.sq + i) * heads + h) * head_dim;
      for (int64_t d = lane; d < head_dim; d += 32) acc_row[d] *= alpha;
    }
  }
}

// One warp per row of o ([b, i, h]), its lanes over d: o = acc / l, lse = m + log(l); a row that
// saw no key: o = 0, lse = -inf. Lanes touch consecutive floats (one thread per row read its own
// row, 32 rows apart per load). o may be acc (each element is read before it is written, by the
// same lane).
__global__ void forward_finish_kernel(const float* acc, const float* m, const float* l, float* o,
                                      float* lse, int64_t batch, int64_t sq, int heads,
                                      int head_dim) {
  const int lane = int(threadIdx.x % 32);
  const int64_t rows = batch * sq * heads;
  for (int64_t r = global_thread() / 32; r < rows; r += grid_stride() / 32) {
    const int64_t h = r % heads, bi = r / heads;
    const int64_t i = bi % sq, b = bi / sq;
    const int64_t stat = (b * heads + h) * sq + i;
    const float lv = l[stat];
    const float* arow = acc + r * head_dim;
    float* orow = o + r * head_dim;
    if (lv > 0.0f) {
      const float inv = 1.0f / lv;
      for (int64_t d = lane; d < head_dim; d += 32) orow[d] = arow[d] * inv;
      if (lane == 0) lse[stat] = m[stat] + logf(lv);
    } else {
      for (int64_t d = lane; d < head_dim; d += 32) orow[d] = 0.0f;
      if (lane == 0) lse[stat] = -INFINITY;
    }
  }
}

// One warp per (b, i, h) row: delta[b, h, i] = sum_d dout * o, each lane summing d = lane,
// lane + 32, ... and the lanes' sums added by a fixed butterfly (the same bits on every run).
__global__ void backward_delta_kernel(const float* dout, const float* o, float* delta,
                                      int64_t batch, int64_t sq, int heads, int head_dim) {
  const int lane = int(threadIdx.x % 32);
  const int64_t rows = batch * sq * heads;
  for (int64_t e = global_thread() / 32; e < rows; e += grid_stride() / 32) {
    const int64_t h = e % heads, bi = e / heads;
    const int64_t i = bi % sq, b = bi / sq;
    const float* dr = dout + e * head_dim;
    const float* orow = o + e * head_dim;
    float sum = 0.0f;
    for (int64_t d = lane; d < head_dim; d += 32) sum += dr[d] * orow[d];
    sum = warp_reduce(sum, SumOp<float>());
    if (lane == 0) delta[(b * heads + h) * sq + i] = sum;
  }
}

// P = exp(S - lse) in place, 0 where masked and on rows with lse = -inf (no key anywhere: never
// exp(S + inf)). Under bf16 (`rounded` not null) also rounded into `rounded` for the dV GEMM; dS
// below needs P unrounded.
__global__ void backward_probs_kernel(MaskArgs a, const TileItem* items, float* probs,
                                      int64_t tile_stride, int64_t ld_s, int heads,
                                      const float* lse, uint16_t* rounded) {
  const TileItem item = items[blockIdx.y];
  const int64_t b = item.b, h = item.h;
  float* tile = probs + int64_t(blockIdx.y) * tile_stride;
  uint16_t* tile16 = rounded ? rounded + int64_t(blockIdx.y) * tile_stride : nullptr;
  for (int64_t r = blockIdx.x; r < a.nq; r += gridDim.x) {
    const int64_t i = item.q_begin + r;
    const int64_t qpos = a.q_pos[i];
    const int32_t qseg = a.q_seg ? a.q_seg[b * a.sq + i] : 0;
    const float lr = lse[(b * heads + h) * a.sq + i];
    const bool sees_any = lr > kMaskedScore;
    float* row = tile + r * ld_s;
    uint16_t* row16 = tile16 ? tile16 + r * ld_s : nullptr;
    for (int64_t j = threadIdx.x; j < a.nk; j += blockDim.x) {
      const float pj =
          sees_any && visible(a, b, qpos, qseg, item.k_begin + j) ? expf(row[j] - lr) : 0.0f;
      row[j] = pj;
      if (row16) row16[j] = round_to_bf16(pj);
    }
  }
}

// dS = P (dP - delta) in place of dP; exactly 0 wherever P is 0 (masked keys, empty rows), even
// if dP there were not finite. Under bf16 (`rounded` not null) dS goes, rounded, into `rounded`
// instead (the dQ and dK GEMMs read that; dP's buffer is not needed afterwards). The caller orders
// this after the GEMM that read the rounded P from the same buffer (one stream).
__global__ void backward_dscores_kernel(const TileItem* items, const float* probs, float* dprobs,
                                        int64_t tile_stride, int64_t ld_s, int64_t nq, int64_t nk,
                                        int heads, int64_t sq, const float* delta,
                                        uint16_t* rounded) {
  const TileItem item = items[blockIdx.y];
  const int64_t b = item.b, h = item.h;
  const float* ptile = probs + int64_t(blockIdx.y) * tile_stride;
  float* dtile = dprobs + int64_t(blockIdx.y) * tile_stride;
  uint16_t* tile16 = rounded ? rounded + int64_t(blockIdx.y) * tile_stride : nullptr;
  for (int64_t r = blockIdx.x; r < nq; r += gridDim.x) {
    const float dl = delta[(b * heads + h) * sq + item.q_begin + r];
    const float* prow = ptile + r * ld_s;
    float* drow = dtile + r * ld_s;
    uint16_t* row16 = tile16 ? tile16 + r * ld_s : nullptr;
    for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) {
      const float pj = prow[j];
      const float ds = pj == 0.0f ? 0.0f : pj * (drow[j] - dl);
      if (row16)
        row16[j] = round_to_bf16(ds);
      else
        drow[j] = ds;
    }
  }
}

MaskArgs mask_args(const Plan& pl, const Staging& sg, const DeviceScratch& dev, const Launch& L) {
  MaskArgs a;
  a.sq = pl.p.sq;
  a.sk = pl.p.sk;
  a.nq = L.nq;
  a.nk = L.nk;
  a.causal = pl.p.causal;
  a.q_pos = dev.at<int64_t>(sg.q_pos_at);
  a.k_pos = dev.at<int64_t>(sg.k_pos_at);
  a.q_seg = pl.segmented ? dev.at<int32_t>(sg.q_seg_at) : nullptr;
  a.k_seg = pl.segmented ? dev.at<int32_t>(sg.k_seg_at) : nullptr;
  return a;
}

// AttentionTileProblem::fused: the plan's statistics, its positions and segment ids uploaded into
// `a` (the kernels read them on the device; the upload's buffer is freed in stream order after
// the launches), then launch(stream, a). A block the plan masks entirely (a causal ring step
// whose keys all lie ahead) launches nothing, as on the cuBLAS path: the kernels would only read
// and rewrite the running state, or add zeros.
template <typename Launch>
void run_fused(cudaStream_t stream, const Plan& pl, fused::Args a, double flops_per_elem,
               AttentionTileStats* stats, Launch launch) {
  const AttentionTileStats ps =
      plan_stats(pl, pl.p.batch, pl.p.heads, pl.p.head_dim, flops_per_elem);
  add_tile_stats(stats, ps);
  if (ps.tiles_computed == 0) return;
  Staging sg(pl, {});
  DeviceScratch dev(stream, sg.lay.bytes(), "attention positions");
  upload_async(stream, dev.at<void>(), sg.host.data(), sg.host.size());
  a.p.q_pos = dev.at<int64_t>(sg.q_pos_at);
  a.p.k_pos = dev.at<int64_t>(sg.k_pos_at);
  a.p.q_seg = pl.segmented ? dev.at<int32_t>(sg.q_seg_at) : nullptr;
  a.p.k_seg = pl.segmented ? dev.at<int32_t>(sg.k_seg_at) : nullptr;
  launch(stream, a);
}

}  // namespace

void attention_forward_init(cudaStream_t stream, const AttentionForwardState& st, int64_t batch,
                            int64_t sq, int heads, int head_dim) {
  const int64_t rows = batch * sq * heads;
  if (rows <= 0) return;
  fill(stream, st.m, rows, kMaskedScore);
  CUDA_CHECK(cudaMemsetAsync(st.l, 0, size_t(rows) * sizeof(float), stream));
  CUDA_CHECK(cudaMemsetAsync(st.acc, 0, size_t(rows * head_dim) * sizeof(float), stream));
}

void attention_forward_block(cudaStream_t stream, cublasHandle_t cublas,
                             const AttentionTileProblem& p, const AttentionForwardState& st,
                             AttentionTileStats* stats) {
  if (p.batch == 0 || p.sq == 0 || p.sk == 0) return;
  const Plan pl(stream, p);
  if (runs_fused(p))
    return run_fused(stream, pl, fused::Args{p, st, {}}, 4.0, stats, launch_fused_forward);
  CUBLAS_CHECK(cublasSetStream(cublas, stream));

  // Every (batch, head) tile of a wavefront's pairs of one shape in one run of launches.
  const TileWork w = plan_launches(
      pl, 1, p.heads, [](int64_t, int64_t h) { return h; }, 4.0, stats);
  if (w.launches.empty()) return;

  // Pointer arrays, per launch: Q, K, S, V, ACC, and under bf16 the rounded P tiles (PB). Under
  // bf16, Q, K and V point into the rounded copies.
  const bool bf16 = p.bf16;
  const int64_t tile_stride = pl.tile_floats();
  DeviceScratch scores(stream, size_t(w.widest) * size_t(tile_stride) * sizeof(float),
                       "attention scores");
  const Bf16Operands ops(stream, p, nullptr, size_t(w.widest) * size_t(tile_stride));
  Staging sg(pl, w.items);
  DeviceScratch dev(stream, sg.lay.bytes(), "attention tile plan");
  upload_async(stream, dev.at<void>(), sg.host.data(), sg.host.size());

  PointerSpec spec(pl, tile_stride);
  const int iQ = spec.add(p.q, ops.q, RowsOf::Query);
  const int iK = spec.add(p.k, ops.k, RowsOf::Key);
  const int iS = spec.add(scores.at<float>(), RowsOf::Slot);
  const int iV = spec.add(p.v, ops.v, RowsOf::Key);
  const int iACC = spec.add(st.acc, RowsOf::Query);
  const int iPB = bf16 ? spec.add(ops.tile, RowsOf::Slot) : iS;
  const TileItem* ditems = dev.at<TileItem>(sg.items_at);
  const LaunchPointers pointers(stream, spec, w.widest, ditems);

  for (const Launch& L : w.launches) {
    const LaunchPointers::Arrays array = pointers.write(L);
    tile_gemm(bf16, cublas, false, true, L.nq, L.nk, pl.D, p.scale, array(iQ), pl.ldq, array(iK),
              pl.ldk, 0.0f, array(iS), pl.ld_s, L.count);
    const dim3 grid(grid_for_rows((L.nq + kWarps - 1) / kWarps), unsigned(L.count));
    RA_LAUNCH(grid, kThreads, 0, stream, forward_softmax_kernel)
    (mask_args(pl, sg, dev, L), ditems + L.first, scores.at<float>(), tile_stride, pl.ld_s, p.heads,
     p.head_dim, st.m, st.l, st.acc, bf16 ? ops.tile : nullptr);
    CUDA_CHECK(cudaGetLastError());
    // acc += P V; under bf16 the P the kernel rounded into ops.tile after summing it into l
    // unrounded.
    tile_gemm(bf16, cublas, false, false, L.nq, pl.D, L.nk, 1.0f, array(iPB), pl.ld_s, array(iV),
              pl.ldk, 1.0f, array(iACC), pl.ldq, L.count);
  }
  // Leaving without waiting: the scratch buffers are freed in stream order after the queued
  // kernels and GEMMs, and the upload was taken from a pinned copy (sg's host buffer may go).
}

void attention_forward_finish(cudaStream_t stream, const AttentionForwardState& st, float* o,
                              float* lse, int64_t batch, int64_t sq, int heads, int head_dim) {
  const int64_t rows = batch * sq * heads;
  if (rows <= 0) return;
  RA_LAUNCH(grid_for(rows * 32), kThreads, 0, stream, forward_finish_kernel)
  (st.acc, st.m, st.l, o, lse, batch, sq, heads, head_dim);
  CUDA_CHECK(cudaGetLastError());
}

void attention_backward_delta(cudaStream_t stream, const float* dout, const float* o, float* delta,
                              int64_t batch, int64_t sq, int heads, int head_dim) {
  const int64_t rows = batch * sq * heads;
  if (rows <= 0) return;
  RA_LAUNCH(grid_for(rows * 32), kThreads, 0, stream, backward_delta_kernel)
  (dout, o, delta, batch, sq, heads, head_dim);
  CUDA_CHECK(cudaGetLastError());
}

void attention_backward_block(cudaStream_t stream, cublasHandle_t cublas,
                              const AttentionTileProblem& p, const AttentionBackwardArgs& a,
                              AttentionTileStats* stats) {
  if (p.batch == 0 || p.sq == 0 || p.sk == 0) return;
  const Plan pl(stream, p);
  RA_CHECK(a.dout && a.lse && a.delta && a.dq && a.dk && a.dv,
           "attention backward: dout, lse, delta, dq, dk and dv must be given");
  if (runs_fused(p))
    return run_fused(stream, pl, fused::Args{p, {}, a}, 10.0, stats, launch_fused_backward);
  CUBLAS_CHECK(cublasSetStream(cublas, stream));

  // Per wavefront, one group of launches per query head index g within the kv groups: a launch
  // then holds at most one query head per kv head, so no two of its tiles add into the same dK, dV.
  const int64_t G = pl.G;
  const TileWork w = plan_launches(
      pl, G, p.kv_heads, [G](int64_t g, int64_t hk) { return hk * G + g; }, 10.0, stats);
  if (w.launches.empty()) return;

  // Pointer arrays, per launch: Q, K, V, dO, P, dP, dQ, dK, dV, and under bf16 the rounded P or
  // dS tiles (XB). Under bf16, Q, K, V and dO point into rounded copies.
  const bool bf16 = p.bf16;
  const int64_t tile_stride = pl.tile_floats();
  const size_t buffer_floats = size_t(w.widest) * size_t(tile_stride);
  DeviceScratch work(stream, 2 * buffer_floats * sizeof(float), "attention backward scores");
  float* probs = work.at<float>();
  float* dprobs = probs + buffer_floats;
  const Bf16Operands ops(stream, p, a.dout, buffer_floats);
  Staging sg(pl, w.items);
  DeviceScratch dev(stream, sg.lay.bytes(), "attention tile plan");
  upload_async(stream, dev.at<void>(), sg.host.data(), sg.host.size());

  PointerSpec spec(pl, tile_stride);
  const int iQ = spec.add(p.q, ops.q, RowsOf::Query);
  const int iK = spec.add(p.k, ops.k, RowsOf::Key);
  const int iV = spec.add(p.v, ops.v, RowsOf::Key);
  const int idO = spec.add(a.dout, ops.dout, RowsOf::Query);
  const int iP = spec.add(probs, RowsOf::Slot);
  const int idP = spec.add(dprobs, RowsOf::Slot);
  const int idQ = spec.add(a.dq, RowsOf::Query);
  const int idK = spec.add(a.dk, RowsOf::Key);
  const int idV = spec.add(a.dv, RowsOf::Key);
  // Under bf16 the P and dS GEMMs read their rounded copies in the bf16 tile buffer (XB).
  const int iXB = bf16 ? spec.add(ops.tile, RowsOf::Slot) : -1;
  const TileItem* ditems = dev.at<TileItem>(sg.items_at);
  const LaunchPointers pointers(stream, spec, w.widest, ditems);

  for (const Launch& L : w.launches) {
    const LaunchPointers::Arrays array = pointers.write(L);
    const int64_t nq = L.nq, nk = L.nk;
    const dim3 grid(grid_for_rows(nq), unsigned(L.count));
    // P = exp(scale Q K^T - lse), masked.
    tile_gemm(bf16, cublas, false, true, nq, nk, pl.D, p.scale, array(iQ), pl.ldq, array(iK),
              pl.ldk, 0.0f, array(iP), pl.ld_s, L.count);
    RA_LAUNCH(grid, kThreads, 0, stream, backward_probs_kernel)
    (mask_args(pl, sg, dev, L), ditems + L.first, probs, tile_stride, pl.ld_s, p.heads, a.lse,
     bf16 ? ops.tile : nullptr);
    CUDA_CHECK(cudaGetLastError());
    // dV += P^T dO (bf16: the rounded P the kernel wrote; dS below needs P unrounded)
    tile_gemm(bf16, cublas, true, false, nk, pl.D, nq, 1.0f, array(bf16 ? iXB : iP), pl.ld_s,
              array(idO), pl.ldq, 1.0f, array(idV), pl.ldk, L.count);
    // dP = dO V^T, then dS = P (dP - delta) in its place.
    tile_gemm(bf16, cublas, false, true, nq, nk, pl.D, 1.0f, array(idO), pl.ldq, array(iV), pl.ldk,
              0.0f, array(idP), pl.ld_s, L.count);
    RA_LAUNCH(grid, kThreads, 0, stream, backward_dscores_kernel)
    (ditems + L.first, probs, dprobs, tile_stride, pl.ld_s, nq, nk, p.heads, p.sq, a.delta,
     bf16 ? ops.tile : nullptr);
    CUDA_CHECK(cudaGetLastError());
    // dQ += scale dS K; dK += scale dS^T Q (bf16: the rounded dS the kernel wrote over the
    // rounded P, whose GEMM is earlier on the same stream)
    const int iDS = bf16 ? iXB : idP;
    tile_gemm(bf16, cublas, false, false, nq, pl.D, nk, p.scale, array(iDS), pl.ld_s, array(iK),
              pl.ldk, 1.0f, array(idQ), pl.ldq, L.count);
    tile_gemm(bf16, cublas, true, false, nk, pl.D, nq, p.scale, array(iDS), pl.ld_s, array(iQ),
              pl.ldq, 1.0f, array(idK), pl.ldk, L.count);
  }
}

}  // namespace ringattn::cuda
