// Fused bf16 attention tiles (AttentionTileProblem::fused): the flash-attention way of running
// the tile steps of core/attention_tile.h. One kernel per call; each block keeps its score tile
// (64 x 64; the dK/dV kernel's float32 S and dP 64 x 32 at a time) in shared memory between the
// tensor-core products and the softmax, so no score tile makes a round trip through GPU memory (the
// cuBLAS tile path of core/cuda/cuda_attention.cu writes and reads each one several times, which is
// what limits it).
//
//   forward   block (query tile of 64 rows, batch row b, query head h): loads acc, m, l of its
//             rows, folds every visible key tile in (S = scale Q K^T, masked online softmax,
//             acc = alpha acc + bf16(P) V) and writes them back.
//   backward  two kernels, both deterministic (no atomics: each block owns the rows it adds to):
//             dk/dv  block (key tile, b, kv head): over the G query heads of its group and every
//                    visible query tile: P, dP = dO V^T, dS; dV += bf16(P)^T dO, dK += bf16(dS)^T Q
//                    in registers; adds dK (times scale) and dV into dk, dv once at the end.
//             dq     block (query tile, b, h): over every visible key tile: P, dP, dS;
//                    dQ += bf16(dS) K in registers; adds scale dQ into dq at the end.
//             Grouped-query attention costs nothing extra: a kv head's block sums its whole group.
// The numbers follow the contract of AttentionTileProblem::bf16: q, k, v, dout rounded to bf16
// (those given as bf16 used as they are), products summed in float32, P and dS rounded before
// their products, l summed from the unrounded P, masks and empty rows exactly as on the CPU. Only
// the order of the float32 sums differs from the cuBLAS path (tolerance, not bits).
//
// Written once, compiled twice: by nvcc into the CUDA kernels (core/cuda/fused_attention.cu, whose
// DeviceBlock runs it on 128 threads with wmma fragments) and by the host compiler into the tests
// (core/cuda_sim/host_block.h's HostBlock runs it on the CPU, phase by phase), so that its logic is
// checked on every machine while only its speed needs a GPU.
//
// What the body may use of a Block:
//   kThreads (128) threads in kWarps (4) warps of 32;
//   each_thread(f): f(t) for every thread t; each_warp(f): f(w) for every warp w, on all of its
//     lanes together (fragment operations are warp-collective). Between two sync()s
//     (__syncthreads) no thread reads what another thread of the block writes, no two threads
//     (or phases) write the same shared-memory byte, even with the same value, and no phase reads
//     what an earlier phase of the same interval wrote, even in the same thread (the emulation
//     runs an interval's phases in three orders, core/cuda_sim/host_block.h, and as late as its
//     closing sync(): helpers that return before it capture by value, and every kernel body ends
//     with sync()).
//   Code between phases runs in every thread on the GPU and once on the host, so it computes only
//     values that are the same for every thread, and every thread takes the same branches. It
//     reads arguments and read-only global memory, never shared memory: on the GPU one thread may
//     still be there while another already writes the next interval's shared memory.
//   Fragments of 16 x 16: A (bf16, row-major) and ACol (bf16, column-major) left operands, BRow /
//     BCol right operands, Acc (float32); fill(acc, 0), load(frag, ptr, ld), mma(acc, a, b)
//     (acc += a b), store(ptr, acc, ld) (row-major). Pointers 32-byte aligned, ld a multiple of 8
//     (bf16) or 4 (float32); bf16 fragments are loaded from shared memory only (ldmatrix).
//   PerWarp<T>: one T per warp that lives across phases (registers on the GPU): at(w).
//   smem(): the block's dynamic shared memory (kSmemAlign-aligned).
#pragma once

#include <math.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "core/attention_tile.h"

#if defined(__CUDACC__)
#define RA_FUSED_FN __host__ __device__
#else
#define RA_FUSED_FN
#endif
#if defined(__CUDA_ARCH__)  // the device pass only: the host compiler warns about the pragma
#define RA_FUSED_UNROLL _Pragma("unroll")
#else
#define RA_FUSED_UNROLL
#endif

namespace ringattn::fused {

inline constexpr int kTile = 64;  // query rows and keys of a tile
inline constexpr int kThreads = 128;
inline constexpr int kWarps = 4;  // each owns 16 rows of a 64-row tile
inline constexpr int kFrag = 16;
inline constexpr int kMaxHeadDim = 128;  // the largest head dim the kernels take
inline constexpr int kSmemAlign = 128;
inline constexpr int64_t kNoPosition = INT64_MIN;

// Whether a problem can run here: bf16, head_dim a multiple of 16 (fragments), at most 128.
RA_FUSED_FN inline bool head_dim_fits(int head_dim) {
  return head_dim > 0 && head_dim % kFrag == 0 && head_dim <= kMaxHeadDim;
}

// The blocks' register arrays (the queries, dQ, dK, dV: one fragment per 16 head columns) are
// sized at compile time by MaxD, the largest head dim a compiled kernel takes. Head dims up to
// 64 run kernels compiled for 64, the rest for kMaxHeadDim: at 64 they need fewer registers
// (ptxas's figures are in docs/benchmarks.md), so that as many blocks share an H100
// multiprocessor as shared memory allows. f(std::integral_constant<int, MaxD>) runs the one for
// head_dim (which must fit: head_dim_fits).
inline constexpr int kSmallHeadDim = 64;
template <class F>
inline void with_max_head_dim(int head_dim, F&& f) {
  if (!head_dim_fits(head_dim))
    throw std::invalid_argument("fused attention: no kernels for this head dim");
  if (head_dim <= kSmallHeadDim)
    f(std::integral_constant<int, kSmallHeadDim>());
  else
    f(std::integral_constant<int, kMaxHeadDim>());
}

// The blocks of each kernel meant to share an H100 multiprocessor (228 KiB of shared memory):
// three for the kernels of head dims up to 64, two above. The kernels' __launch_bounds__ hold
// their registers to it, and a test checks that their shared memory allows it at every head dim.
RA_FUSED_FN constexpr int blocks_per_sm_target(int max_head_dim) {
  return max_head_dim <= kSmallHeadDim ? 3 : 2;
}

// Everything a fused kernel reads and writes: the structures of core/attention_tile.h, passed
// by value to the kernels. The problem's positions and segment ids are in device memory here (the
// launcher uploads them; host memory under HostBlock); of each operand pair (q and q_bf16, ...)
// the bf16 one is used when given, as AttentionTileProblem says. A forward call uses `st`, a
// backward call `bw`.
struct Args {
  AttentionTileProblem p;
  AttentionForwardState st;
  AttentionBackwardArgs bw;
};

// core/dtype.h's f32_to_bf16 (round to nearest even, NaN kept quiet), usable on both sides.
RA_FUSED_FN inline uint16_t bf16_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

RA_FUSED_FN inline int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}
RA_FUSED_FN inline int64_t max64(int64_t a, int64_t b) {
  return a > b ? a : b;
}

// Shared-memory sections, carved in order from one base; with a null base only the size is
// computed (the launcher's dynamic shared memory). Every section starts kSmemAlign-aligned.
class Carver {
 public:
  RA_FUSED_FN explicit Carver(void* base) : base_(static_cast<unsigned char*>(base)) {}
  template <typename T>
  RA_FUSED_FN T* take(int64_t count) {
    const size_t at = used_;
    used_ += (size_t(count) * sizeof(T) + kSmemAlign - 1) / kSmemAlign * kSmemAlign;
#if defined(__CUDA_ARCH__)
    // Kernels always carve their shared memory, never a null base. Without the select nvcc can
    // tell that every section is shared memory (with it, the first section's stores were
    // generic-address ST in the SASS).
    return reinterpret_cast<T*>(base_ + at);
#else
    return base_ ? reinterpret_cast<T*>(base_ + at) : nullptr;
#endif
  }
  RA_FUSED_FN size_t used() const {
    return used_;
  }

 private:
  unsigned char* base_;
  size_t used_ = 0;
};

// Row strides in shared memory: padded so that consecutive rows start in different banks, and
// still what the fragments need (bf16: a multiple of 8 elements; float32: of 4; 32-byte rows
// starts for every 16th row).
RA_FUSED_FN inline int ld16(int head_dim) {
  return head_dim + 8;
}
// float32 score tiles of `cols` columns (all 64, or the dK/dV kernel's halves)
RA_FUSED_FN constexpr int ld_score(int cols) {
  return cols + 4;
}
inline constexpr int kLdScore = ld_score(kTile);
inline constexpr int kLdProb = kTile + 8;  // bf16 P and dS tiles

// Per-row data of a 64-row tile (queries or keys).
struct RowData {
  int64_t* pos;  // kNoPosition past the end of the shard (rows that do not exist)
  int32_t* seg;
  float* a;  // forward: m; backward: lse
  float* b;  // forward: l; backward: delta
  RA_FUSED_FN void carve(Carver& c) {
    pos = c.take<int64_t>(kTile);
    seg = c.take<int32_t>(kTile);
    a = c.take<float>(kTile);
    b = c.take<float>(kTile);
  }
};

static_assert(kTile * (kMaxHeadDim + 8) * 2 <= kTile * kLdScore * 4,
              "a bf16 tile (Q, dO) fits in a float32 score tile's bytes (s, dp) on its way in");

// The forward keeps its queries in registers (one bf16 fragment per 16 columns and warp), which
// frees a tile of shared memory: at head_dim 128 two blocks then fit on an H100 multiprocessor.
// They pass through s on their way in (a bf16 [64][ld16] tile fits in s's bytes for every head
// dim the kernels take).
struct ForwardSmem {
  uint16_t *k, *v, *p;   // [64][ld16]; p [64][kLdProb]
  float *s, *o;          // s [64][kLdScore]; o [64][head_dim + 4]
  float *red, *sum;      // [kThreads]: two partial maxima / sums per row
  float *alpha, *m_new;  // [64]
  RowData rows, keys;    // rows: m in a, l in b
  size_t bytes = 0;
  RA_FUSED_FN ForwardSmem(void* base, int head_dim) {
    Carver c(base);
    k = c.take<uint16_t>(kTile * ld16(head_dim));
    v = c.take<uint16_t>(kTile * ld16(head_dim));
    p = c.take<uint16_t>(kTile * kLdProb);
    s = c.take<float>(kTile * kLdScore);
    o = c.take<float>(kTile * (head_dim + 4));
    red = c.take<float>(kThreads);
    sum = c.take<float>(kThreads);
    alpha = c.take<float>(kTile);
    m_new = c.take<float>(kTile);
    rows.carve(c);
    keys.carve(c);
    bytes = c.used();
  }
};

// The dK/dV kernel's: Q and dO change with every query tile it visits. Its float32 S and dP
// tiles hold half the keys at a time (kScoreCols; backward_scores computes the halves in turn):
// 16 KiB less (and add_rows_out's stage kept in s: 4 KiB), which at head_dim 128 brings it to 106.5
// KiB, so that two blocks fit on an H100 multiprocessor instead of one (three at head_dim 64).
struct BackwardSmem {
  static constexpr int kScoreCols = kTile / 2;
  uint16_t *q, *dout, *k, *v;  // [64][ld16]
  uint16_t *p, *ds;            // [64][kLdProb] bf16(P), bf16(dS): all 64 keys
  float *s, *dp;               // [64][ld_score(kScoreCols)]; s is add_rows_out's stage at the end
  RowData rows, keys;          // rows: lse in a, delta in b
  size_t bytes = 0;
  RA_FUSED_FN BackwardSmem(void* base, int head_dim) {
    Carver c(base);
    q = c.take<uint16_t>(kTile * ld16(head_dim));
    dout = c.take<uint16_t>(kTile * ld16(head_dim));
    k = c.take<uint16_t>(kTile * ld16(head_dim));
    v = c.take<uint16_t>(kTile * ld16(head_dim));
    p = c.take<uint16_t>(kTile * kLdProb);
    ds = c.take<uint16_t>(kTile * kLdProb);
    s = c.take<float>(kTile * ld_score(kScoreCols));
    dp = c.take<float>(kTile * ld_score(kScoreCols));
    rows.carve(c);
    keys.carve(c);
    bytes = c.used();
  }
};
static_assert(kWarps * kFrag * kFrag <= kTile * ld_score(BackwardSmem::kScoreCols),
              "add_rows_out's stage fits in s");

// The dQ kernel's: its Q and dO stay in registers (as the forward's queries do, passing through
// s and dp on their way in), so two blocks fit on an H100 multiprocessor at head_dim 128.
struct DqSmem {
  static constexpr int kScoreCols = kTile;
  uint16_t *k, *v;        // [64][ld16]
  uint16_t* p = nullptr;  // not kept: dQ needs only dS
  uint16_t* ds;           // [64][kLdProb]
  float *s, *dp;          // [64][kLdScore]; s is add_rows_out's stage at the end
  RowData rows, keys;     // rows: lse in a, delta in b
  size_t bytes = 0;
  RA_FUSED_FN DqSmem(void* base, int head_dim) {
    Carver c(base);
    k = c.take<uint16_t>(kTile * ld16(head_dim));
    v = c.take<uint16_t>(kTile * ld16(head_dim));
    ds = c.take<uint16_t>(kTile * kLdProb);
    s = c.take<float>(kTile * kLdScore);
    dp = c.take<float>(kTile * kLdScore);
    rows.carve(c);
    keys.carve(c);
    bytes = c.used();
  }
};

// ---- phases shared by the kernels ----------------------------------------------------------

// 16 bytes from src to dst, both 16-byte aligned: one vector load and store on the GPU. The host
// (the tests' emulation) refuses unaligned addresses, which the GPU would fault on.
RA_FUSED_FN inline void copy16(void* dst, const void* src) {
#if defined(__CUDA_ARCH__)
  *static_cast<uint4*>(dst) = *static_cast<const uint4*>(src);
#else
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0)
    throw std::logic_error("fused attention body: a 16-byte move breaks its alignment");
  memcpy(dst, src, 16);
#endif
}

// Four float32 values from a 16-byte aligned address (one vector load on the GPU).
RA_FUSED_FN inline void load4(const float* src, float out[4]) {
#if defined(__CUDA_ARCH__)
  const float4 v = *reinterpret_cast<const float4*>(src);
  out[0] = v.x;
  out[1] = v.y;
  out[2] = v.z;
  out[3] = v.w;
#else
  if (reinterpret_cast<uintptr_t>(src) % 16 != 0)
    throw std::logic_error("fused attention body: a 16-byte move breaks its alignment");
  memcpy(out, src, 16);
#endif
}

// Rows [r0, r0 + 64) of a [B, S, heads, D] operand, head `head`, batch row b, into a bf16 tile
// (zeros past row n). One of f32 / b16 is given. Each thread moves 16 bytes of the operand at a
// time (8 bf16 or 4 float32 values; D is a multiple of 16, so every row slice stays 16-byte
// aligned when the operand is); an operand that is not 16-byte aligned goes value by value.
template <class Block>
RA_FUSED_FN void load_rows(Block& blk, uint16_t* tile, const float* f32, const uint16_t* b16,
                           int64_t b, int64_t seq, int64_t r0, int64_t n, int heads, int head,
                           int head_dim) {
  const int ld = ld16(head_dim);
  const void* src = b16 ? static_cast<const void*>(b16) : static_cast<const void*>(f32);
  const bool vector = reinterpret_cast<uintptr_t>(src) % 16 == 0;
  const int per = vector ? (b16 ? 8 : 4) : 1;  // values per move
  blk.each_thread([=](int t) {
    const int chunks = head_dim / per;
    for (int e = t; e < kTile * chunks; e += kThreads) {
      const int r = e / chunks, d = (e % chunks) * per;
      uint16_t* out = tile + r * ld + d;
      const int64_t g = ((b * seq + r0 + r) * heads + head) * int64_t(head_dim) + d;
      if (r >= n) {
        for (int i = 0; i < per; ++i) out[i] = 0;
      } else if (per == 8) {
        copy16(out, b16 + g);
      } else if (per == 4) {
        float x[4];
        load4(f32 + g, x);
        for (int i = 0; i < 4; ++i) out[i] = bf16_bits(x[i]);
      } else {
        out[0] = b16 ? b16[g] : bf16_bits(f32[g]);
      }
    }
  });
}

// Positions and segment ids of rows [r0, r0 + n) (kNoPosition and 0 past n).
template <class Block>
RA_FUSED_FN void load_positions(Block& blk, RowData& rd, const int64_t* pos, const int32_t* seg,
                                int64_t b, int64_t seq, int64_t r0, int64_t n) {
  blk.each_thread([=](int t) {
    if (t >= kTile) return;
    rd.pos[t] = t < n ? pos[r0 + t] : kNoPosition;
    rd.seg[t] = t < n && seg ? seg[b * seq + r0 + t] : 0;
  });
}

// Whether key j may be seen by query r (causal by position, equal segments when given). Rows and
// keys past the ends see nothing.
RA_FUSED_FN inline bool visible(const Args& a, const RowData& rows, const RowData& keys, int r,
                                int j) {
  if (rows.pos[r] == kNoPosition || keys.pos[j] == kNoPosition) return false;
  if (a.p.causal && keys.pos[j] > rows.pos[r]) return false;
  if (a.p.q_seg && keys.seg[j] != rows.seg[r]) return false;
  return true;
}

// Causal skips are decided from the positions in global memory (read-only), never from shared
// memory: the code between phases may run in one thread while another already writes the next
// interval's shared memory (a race the emulation could not show). Positions ascend within a shard
// (core/attention_tile.h; zigzag shards jump, still upwards), so a tile's first position is its
// smallest and its last its largest.
RA_FUSED_FN inline int64_t last_position(const int64_t* pos, int64_t begin, int64_t n) {
  return pos[begin + n - 1];
}
// The first index of an ascending pos[0, n) at or after `x` (n when none).
RA_FUSED_FN inline int64_t first_at_least(const int64_t* pos, int64_t n, int64_t x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (pos[mid] < x)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// out[64 x Cols] (float32, ld ld_score(Cols)) = X[64 x D] y[Cols x D]^T, warp w computing rows
// 16w..16w+15: load_x(w, dt, frag) gives the warp's fragment of X's columns 16 dt.. (from shared
// memory or registers), each loaded once against the Cols / 16 column blocks.
template <int MaxD, int Cols = kTile, class Block, class LoadX>
RA_FUSED_FN void tile_scores(Block& blk, float* out, LoadX load_x, const uint16_t* y,
                             int head_dim) {
  const int ld = ld16(head_dim);
  blk.each_warp([=](int w) {
    constexpr int kBlocks = Cols / kFrag, kLdOut = ld_score(Cols);
    typename Block::Acc c[kBlocks];
    RA_FUSED_UNROLL for (int n = 0; n < kBlocks; ++n) Block::fill(c[n], 0.0f);
    RA_FUSED_UNROLL for (int dt = 0; dt < MaxD / kFrag; ++dt) {
      if (dt >= head_dim / kFrag) break;
      typename Block::A fx;
      load_x(w, dt, fx);
      RA_FUSED_UNROLL for (int n = 0; n < kBlocks; ++n) {
        typename Block::BCol fy;
        Block::load(fy, y + n * kFrag * ld + dt * kFrag, ld);
        Block::mma(c[n], fx, fy);
      }
    }
    RA_FUSED_UNROLL for (int n = 0; n < kBlocks; ++n)
        Block::store(out + w * kFrag * kLdOut + n * kFrag, c[n], kLdOut);
  });
}

// load_x for tile_scores: rows 16w.. of a bf16 tile in shared memory.
template <class Block>
struct SmemRows {
  const uint16_t* x;
  int ld;
  RA_FUSED_FN void operator()(int w, int dt, typename Block::A& f) const {
    Block::load(f, x + w * kFrag * ld + dt * kFrag, ld);
  }
};

// Adds a warp's accumulators [16 x D] (rows 16w.. of a 64-row tile), times `factor`, into
// dst rows [r0, r0 + n) of a [B, S, heads, D] gradient, head `head`: through one 16 x 16 stage per
// warp (kWarps x 256 floats of shared memory nothing else uses by then: the kernels pass s),
// warp, one column block at a time.
template <int MaxD, class Block, class AccRow>
RA_FUSED_FN void add_rows_out(Block& blk, float* stage, AccRow& acc, float* dst, float factor,
                              int64_t b, int64_t seq, int64_t r0, int64_t n, int heads, int head,
                              int head_dim) {
  RA_FUSED_UNROLL for (int dt = 0; dt < MaxD / kFrag; ++dt) {
    if (dt >= head_dim / kFrag) break;  // unrolled to the most: fragment indices stay static
    blk.each_warp([&](int w) { Block::store(stage + w * kFrag * kFrag, acc.at(w)[dt], kFrag); });
    blk.sync();
    blk.each_thread([&](int t) {
      const int w = t / 32, lane = t % 32;
      for (int e = lane; e < kFrag * kFrag; e += 32) {
        const int r = w * kFrag + e / kFrag;
        if (r >= n) continue;
        const int64_t g =
            ((b * seq + r0 + r) * heads + head) * int64_t(head_dim) + dt * kFrag + e % kFrag;
        dst[g] += factor * stage[w * kFrag * kFrag + e];
      }
    });
    blk.sync();
  }
}

// ---- forward -------------------------------------------------------------------------

template <int MaxD, class Block>
RA_FUSED_FN void forward_block(Block& blk, const Args& a, int64_t q_tile, int64_t bh) {
  const int D = a.p.head_dim, ldo = D + 4;
  ForwardSmem sm(blk.smem(), D);
  const int64_t b = bh / a.p.heads;
  const int h = int(bh % a.p.heads), hk = h / (a.p.heads / a.p.kv_heads);
  const int64_t q0 = q_tile * kTile, nq = min64(kTile, a.p.sq - q0);

  using QFrags = typename Block::A[MaxD / kFrag];
  typename Block::template PerWarp<QFrags> qf;  // warp w: queries 16w..16w+15, all of D

  // The tile's queries (through s into registers), positions and running state (rows past the
  // shard: empty, never written).
  uint16_t* q_in = reinterpret_cast<uint16_t*>(sm.s);
  load_rows(blk, q_in, a.p.q, a.p.q_bf16, b, a.p.sq, q0, nq, a.p.heads, h, D);
  load_positions(blk, sm.rows, a.p.q_pos, a.p.q_seg, b, a.p.sq, q0, nq);
  blk.each_thread([&](int t) {
    for (int e = t; e < kTile * D; e += kThreads) {
      const int r = e / D, d = e % D;
      sm.o[r * ldo + d] =
          r < nq ? a.st.acc[((b * a.p.sq + q0 + r) * a.p.heads + h) * int64_t(D) + d] : 0;
    }
    if (t < kTile) {
      const int64_t stat = (b * a.p.heads + h) * a.p.sq + q0 + t;
      sm.rows.a[t] = t < nq ? a.st.m[stat] : kMaskedScore;
      sm.rows.b[t] = t < nq ? a.st.l[stat] : 0.0f;
    }
  });
  blk.sync();
  const int64_t q_max = last_position(a.p.q_pos, q0, nq);
  blk.each_warp([&](int w) {
    RA_FUSED_UNROLL for (int dt = 0; dt < MaxD / kFrag; ++dt) {
      if (dt >= D / kFrag) break;
      Block::load(qf.at(w)[dt], q_in + w * kFrag * ld16(D) + dt * kFrag, ld16(D));
    }
  });
  // (The loop's first sync, after the key positions, ends that load before s is written again.)
  auto q_frag = [&qf](int w, int dt, typename Block::A& f) { f = qf.at(w)[dt]; };

  for (int64_t k0 = 0; k0 < a.p.sk; k0 += kTile) {
    // This key tile, and every later one, all in the future of every query here.
    if (a.p.causal && a.p.k_pos[k0] > q_max) break;
    const int64_t nk = min64(kTile, a.p.sk - k0);
    // The positions do not touch what the last tile's products still read; the sync after them
    // ends those products before K and V are overwritten.
    load_positions(blk, sm.keys, a.p.k_pos, a.p.k_seg, b, a.p.sk, k0, nk);
    blk.sync();
    load_rows(blk, sm.k, a.p.k, a.p.k_bf16, b, a.p.sk, k0, nk, a.p.kv_heads, hk, D);
    load_rows(blk, sm.v, a.p.v, a.p.v_bf16, b, a.p.sk, k0, nk, a.p.kv_heads, hk, D);
    blk.sync();

    tile_scores<MaxD>(blk, sm.s, q_frag, sm.k, D);  // S = Q K^T (scaled below)
    blk.sync();

    // Two threads per row, 32 keys each: mask and scale, then the row's two partial maxima.
    blk.each_thread([&](int t) {
      const int r = t / 2, c0 = (t % 2) * (kTile / 2);
      float mx = kMaskedScore;
      for (int j = c0; j < c0 + kTile / 2; ++j) {
        float& s = sm.s[r * kLdScore + j];
        s = visible(a, sm.rows, sm.keys, r, j) ? a.p.scale * s : kMaskedScore;
        mx = fmaxf(mx, s);
      }
      sm.red[t] = mx;
    });
    blk.sync();

    // P = exp(S - m_new), bf16 for P V; the partial sums of the unrounded P; acc rescaled.
    // A row with nothing visible so far keeps its state and gets P = 0 (as on the CPU).
    blk.each_thread([&](int t) {
      const int r = t / 2, half = t % 2, c0 = half * (kTile / 2);
      const float m_old = sm.rows.a[r];
      const float m_new = fmaxf(m_old, fmaxf(sm.red[2 * r], sm.red[2 * r + 1]));
      float sum = 0.0f;
      for (int j = c0; j < c0 + kTile / 2; ++j) {
        const float s = sm.s[r * kLdScore + j];
        const float e = m_new <= kMaskedScore || s <= kMaskedScore ? 0.0f : expf(s - m_new);
        sm.p[r * kLdProb + j] = bf16_bits(e);
        sum += e;
      }
      sm.sum[t] = sum;
      const bool grows = m_new > m_old;
      const float alpha = grows ? expf(m_old - m_new) : 1.0f;
      if (grows)
        for (int d = half * (D / 2); d < (half + 1) * (D / 2); ++d) sm.o[r * ldo + d] *= alpha;
      if (half == 0) {
        sm.alpha[r] = alpha;
        sm.m_new[r] = m_new;
      }
    });
    blk.sync();

    // The row statistics; then acc += bf16(P) V (no sync between: disjoint data).
    blk.each_thread([&](int t) {
      if (t >= kTile) return;
      sm.rows.b[t] = sm.rows.b[t] * sm.alpha[t] + (sm.sum[2 * t] + sm.sum[2 * t + 1]);
      sm.rows.a[t] = sm.m_new[t];
    });
    blk.each_warp([&](int w) {
      // The warp's rows of P, loaded once for every column block of V.
      typename Block::A fp[kTile / kFrag];
      RA_FUSED_UNROLL for (int j = 0; j < kTile / kFrag; ++j)
          Block::load(fp[j], sm.p + w * kFrag * kLdProb + j * kFrag, kLdProb);
      for (int d0 = 0; d0 < D; d0 += kFrag) {
        typename Block::Acc c;
        Block::load(c, sm.o + w * kFrag * ldo + d0, ldo);
        RA_FUSED_UNROLL for (int j = 0; j < kTile / kFrag; ++j) {
          typename Block::BRow fv;
          Block::load(fv, sm.v + j * kFrag * ld16(D) + d0, ld16(D));
          Block::mma(c, fp[j], fv);
        }
        Block::store(sm.o + w * kFrag * ldo + d0, c, ldo);
      }
    });
  }
  blk.sync();

  blk.each_thread([&](int t) {
    for (int e = t; e < nq * D; e += kThreads) {
      const int r = e / D, d = e % D;
      a.st.acc[((b * a.p.sq + q0 + r) * a.p.heads + h) * int64_t(D) + d] = sm.o[r * ldo + d];
    }
    if (t < nq) {
      const int64_t stat = (b * a.p.heads + h) * a.p.sq + q0 + t;
      a.st.m[stat] = sm.rows.a[t];
      a.st.l[stat] = sm.rows.b[t];
    }
  });
  blk.sync();
}

// ---- backward ------------------------------------------------------------------------

// With Q, dO, K, V tiles, positions, lse and delta loaded: S = Q K^T and dP = dO V^T (warps by
// query rows), then P = exp(scale S - lse) (0 where masked and on rows that saw no key) and
// dS = P (dP - delta) (exactly 0 where P is), both rounded to bf16 for their products. S and dP
// are made Smem::kScoreCols keys at a time (the dK/dV kernel's halves: a sync more each); P and
// dS are whole. load_q and load_dout give the warps' fragments of Q and dO (tile_scores' load_x).
template <int MaxD, class Block, class Smem, class LoadQ, class LoadDout>
RA_FUSED_FN void backward_scores(Block& blk, const Args& a, Smem& sm, LoadQ load_q,
                                 LoadDout load_dout) {
  const int D = a.p.head_dim;
  constexpr int kCols = Smem::kScoreCols, kLd = ld_score(kCols);
  static_assert(kTile % kCols == 0 && kCols % (2 * kFrag) == 0, "whole fragments per thread pair");
  for (int c0 = 0; c0 < kTile; c0 += kCols) {
    tile_scores<MaxD, kCols>(blk, sm.s, load_q, sm.k + c0 * ld16(D), D);
    tile_scores<MaxD, kCols>(blk, sm.dp, load_dout, sm.v + c0 * ld16(D), D);
    blk.sync();
    // (The phase runs before this iteration's closing sync: capturing c0 by reference is safe.)
    blk.each_thread([&](int t) {
      const int r = t / 2, j0 = c0 + (t % 2) * (kCols / 2);
      const float lse = sm.rows.a[r], delta = sm.rows.b[r];
      const bool sees_any = lse > kMaskedScore;
      for (int j = j0; j < j0 + kCols / 2; ++j) {
        const float pj = sees_any && visible(a, sm.rows, sm.keys, r, j)
                             ? expf(a.p.scale * sm.s[r * kLd + j - c0] - lse)
                             : 0.0f;
        const float ds = pj == 0.0f ? 0.0f : pj * (sm.dp[r * kLd + j - c0] - delta);
        if (sm.p) sm.p[r * kLdProb + j] = bf16_bits(pj);  // (the dQ kernel keeps no P)
        sm.ds[r * kLdProb + j] = bf16_bits(ds);
      }
    });
    blk.sync();  // the products read P and dS; the next keys' S and dP overwrite s and dp
  }
}

// Query rows [q0, q0 + nq) of head h: lse and delta, and Q and dO into bf16 tiles q_to, dout_to
// (positions are the caller's).
template <class Block>
RA_FUSED_FN void load_query_tile(Block& blk, const Args& a, RowData rows, uint16_t* q_to,
                                 uint16_t* dout_to, int64_t b, int h, int64_t q0, int64_t nq) {
  blk.each_thread([=](int t) {
    if (t >= kTile) return;
    const int64_t stat = (b * a.p.heads + h) * a.p.sq + q0 + t;
    rows.a[t] = t < nq ? a.bw.lse[stat] : -INFINITY;
    rows.b[t] = t < nq ? a.bw.delta[stat] : 0.0f;
  });
  load_rows(blk, q_to, a.p.q, a.p.q_bf16, b, a.p.sq, q0, nq, a.p.heads, h, a.p.head_dim);
  load_rows(blk, dout_to, a.bw.dout, nullptr, b, a.p.sq, q0, nq, a.p.heads, h, a.p.head_dim);
}

template <int MaxD, class Block>
RA_FUSED_FN void backward_dkdv_block(Block& blk, const Args& a, int64_t k_tile, int64_t bhk) {
  using AccRow = typename Block::Acc[MaxD / kFrag];
  const int D = a.p.head_dim, G = a.p.heads / a.p.kv_heads;
  BackwardSmem sm(blk.smem(), D);
  const int64_t b = bhk / a.p.kv_heads;
  const int hk = int(bhk % a.p.kv_heads);
  const int64_t k0 = k_tile * kTile, nk = min64(kTile, a.p.sk - k0);

  load_positions(blk, sm.keys, a.p.k_pos, a.p.k_seg, b, a.p.sk, k0, nk);
  load_rows(blk, sm.k, a.p.k, a.p.k_bf16, b, a.p.sk, k0, nk, a.p.kv_heads, hk, D);
  load_rows(blk, sm.v, a.p.v, a.p.v_bf16, b, a.p.sk, k0, nk, a.p.kv_heads, hk, D);
  typename Block::template PerWarp<AccRow> dk, dv;  // warp w: keys 16w..16w+15, all of D
  blk.each_warp([&](int w) {
    RA_FUSED_UNROLL for (int dt = 0; dt < MaxD / kFrag; ++dt) {
      if (dt >= D / kFrag) break;
      Block::fill(dk.at(w)[dt], 0.0f);
      Block::fill(dv.at(w)[dt], 0.0f);
    }
  });
  blk.sync();
  // Causal: the query tiles before the first query at or after this tile's first key see none
  // of its keys; they are skipped (a prefix: positions ascend).
  const int64_t q_start =
      a.p.causal ? first_at_least(a.p.q_pos, a.p.sq, a.p.k_pos[k0]) / kTile * kTile : 0;

  for (int g = 0; g < G; ++g) {
    const int h = hk * G + g;
    for (int64_t q0 = q_start; q0 < a.p.sq; q0 += kTile) {
      const int64_t nq = min64(kTile, a.p.sq - q0);
      blk.sync();  // the last tile's products are done with Q, dO, P and dS
      load_positions(blk, sm.rows, a.p.q_pos, a.p.q_seg, b, a.p.sq, q0, nq);
      load_query_tile(blk, a, sm.rows, sm.q, sm.dout, b, h, q0, nq);
      blk.sync();
      backward_scores<MaxD>(blk, a, sm, SmemRows<Block>{sm.q, ld16(D)},
                            SmemRows<Block>{sm.dout, ld16(D)});
      // dV += bf16(P)^T dO and dK += bf16(dS)^T Q: warp w's keys are columns 16w.. of P and dS.
      // Each accumulator still sums its query blocks i0 in ascending order; the P and dS
      // fragments of a query block are loaded once for all of D.
      blk.each_warp([&](int w) {
        for (int i0 = 0; i0 < kTile; i0 += kFrag) {
          typename Block::ACol fp, fds;
          Block::load(fp, sm.p + i0 * kLdProb + w * kFrag, kLdProb);
          Block::load(fds, sm.ds + i0 * kLdProb + w * kFrag, kLdProb);
          RA_FUSED_UNROLL for (int dt = 0; dt < MaxD / kFrag; ++dt) {
            if (dt >= D / kFrag) break;
            typename Block::BRow fdo, fq;
            Block::load(fdo, sm.dout + i0 * ld16(D) + dt * kFrag, ld16(D));
            Block::mma(dv.at(w)[dt], fp, fdo);
            Block::load(fq, sm.q + i0 * ld16(D) + dt * kFrag, ld16(D));
            Block::mma(dk.at(w)[dt], fds, fq);
          }
        }
      });
    }
  }
  blk.sync();
  add_rows_out<MaxD>(blk, sm.s, dv, a.bw.dv, 1.0f, b, a.p.sk, k0, nk, a.p.kv_heads, hk, D);
  add_rows_out<MaxD>(blk, sm.s, dk, a.bw.dk, a.p.scale, b, a.p.sk, k0, nk, a.p.kv_heads, hk, D);
}

template <int MaxD, class Block>
RA_FUSED_FN void backward_dq_block(Block& blk, const Args& a, int64_t q_tile, int64_t bh) {
  using AccRow = typename Block::Acc[MaxD / kFrag];
  using Frags = typename Block::A[MaxD / kFrag];
  const int D = a.p.head_dim;
  DqSmem sm(blk.smem(), D);
  const int64_t b = bh / a.p.heads;
  const int h = int(bh % a.p.heads), hk = h / (a.p.heads / a.p.kv_heads);
  const int64_t q0 = q_tile * kTile, nq = min64(kTile, a.p.sq - q0);

  // Q and dO through s and dp into registers (warp w: queries 16w..16w+15, all of D).
  uint16_t* q_in = reinterpret_cast<uint16_t*>(sm.s);
  uint16_t* dout_in = reinterpret_cast<uint16_t*>(sm.dp);
  load_positions(blk, sm.rows, a.p.q_pos, a.p.q_seg, b, a.p.sq, q0, nq);
  load_query_tile(blk, a, sm.rows, q_in, dout_in, b, h, q0, nq);
  typename Block::template PerWarp<AccRow> dq;
  typename Block::template PerWarp<Frags> qf, dof;
  blk.each_warp([&](int w) {
    RA_FUSED_UNROLL for (int dt = 0; dt < MaxD / kFrag; ++dt) {
      if (dt >= D / kFrag) break;
      Block::fill(dq.at(w)[dt], 0.0f);
    }
  });
  blk.sync();
  const int64_t q_max = last_position(a.p.q_pos, q0, nq);
  blk.each_warp([&](int w) {
    RA_FUSED_UNROLL for (int dt = 0; dt < MaxD / kFrag; ++dt) {
      if (dt >= D / kFrag) break;
      Block::load(qf.at(w)[dt], q_in + w * kFrag * ld16(D) + dt * kFrag, ld16(D));
      Block::load(dof.at(w)[dt], dout_in + w * kFrag * ld16(D) + dt * kFrag, ld16(D));
    }
  });
  // (The loop's first sync, after the key positions, ends that load before s and dp are written.)
  auto q_frag = [&qf](int w, int dt, typename Block::A& f) { f = qf.at(w)[dt]; };
  auto dout_frag = [&dof](int w, int dt, typename Block::A& f) { f = dof.at(w)[dt]; };

  for (int64_t k0 = 0; k0 < a.p.sk; k0 += kTile) {
    if (a.p.causal && a.p.k_pos[k0] > q_max) break;  // (as in the forward)
    const int64_t nk = min64(kTile, a.p.sk - k0);
    load_positions(blk, sm.keys, a.p.k_pos, a.p.k_seg, b, a.p.sk, k0, nk);  // (as in the forward)
    blk.sync();
    load_rows(blk, sm.k, a.p.k, a.p.k_bf16, b, a.p.sk, k0, nk, a.p.kv_heads, hk, D);
    load_rows(blk, sm.v, a.p.v, a.p.v_bf16, b, a.p.sk, k0, nk, a.p.kv_heads, hk, D);
    blk.sync();
    backward_scores<MaxD>(blk, a, sm, q_frag, dout_frag);
    // dQ += bf16(dS) K: warp w's queries are rows 16w.. of dS.
    // (Each accumulator sums its key blocks j0 in ascending order; a dS fragment is loaded once.)
    blk.each_warp([&](int w) {
      for (int j0 = 0; j0 < kTile; j0 += kFrag) {
        typename Block::A fds;
        Block::load(fds, sm.ds + w * kFrag * kLdProb + j0, kLdProb);
        RA_FUSED_UNROLL for (int dt = 0; dt < MaxD / kFrag; ++dt) {
          if (dt >= D / kFrag) break;
          typename Block::BRow fk;
          Block::load(fk, sm.k + j0 * ld16(D) + dt * kFrag, ld16(D));
          Block::mma(dq.at(w)[dt], fds, fk);
        }
      }
    });
  }
  blk.sync();
  add_rows_out<MaxD>(blk, sm.s, dq, a.bw.dq, a.p.scale, b, a.p.sq, q0, nq, a.p.heads, h, D);
}

}  // namespace ringattn::fused
