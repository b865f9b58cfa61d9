// CPU attention tiles: OpenBLAS sgemm for the five products, hand-vectorised row kernels for the
// softmax in between (core/cpu/attention_kernels.h), OpenMP across independent work items.
//
// Work items and why they are race free:
//   forward   one item per (batch, query head, query chunk): it owns its rows of acc, m and l.
//   backward  one item per (batch, kv head), covering every query head of the group, so each
//             item owns its dk/dv rows and its query heads' dq rows (deterministic, lock free);
//             when there are too few of those to fill the threads (GQA with Hkv = 1, B = 1), one
//             item per (batch, kv head, key chunk), whose dq contributions are added under a lock.
// OpenBLAS is held to one thread while the OpenMP threads run (two thread pools on the same cores
// would oversubscribe them); the thread count is cpu_threads(), so several MPI ranks sharing the
// cores each set OPENBLAS_NUM_THREADS=1 and run one thread.
// Stats count one tile per (batch, query head, query chunk, key chunk); tiles_masked is the part of
// tiles_computed that needed the element mask; flops are those of whole computed tiles.
#include "core/cpu/cpu_attention.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "core/allocator.h"
#include "core/attention_plan.h"
#include "core/backend.h"
#include "core/cpu/attention_kernels.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"

namespace ringattn::cpu {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t round_up(int64_t x, int64_t a) {
  return (x + a - 1) / a * a;
}

// Row stride of score tiles: whole cache lines, and never a multiple of 4 KiB, whose rows would
// all fall into the same L1 sets.
int64_t score_ld(int64_t cols) {
  int64_t ld = round_up(std::max<int64_t>(cols, 1), 16);
  if (ld % 1024 == 0) ld += 16;
  return ld;
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m),
              int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}

// The first `cols` columns of `rows` rows `ld` apart, rounded to bfloat16 and kept as float32
// (exact): sgemm over such values is the bf16 GEMM with float32 accumulation
// (AttentionTileProblem::bf16). Written to `dst` (same strides), which may be `src` itself.
void round_bf16_rows(const float* src, int64_t rows, int64_t cols, int64_t ld, float* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = src + r * ld;
    float* out = dst + r * ld;
    for (int64_t j = 0; j < cols; ++j) out[j] = bf16_to_f32(f32_to_bf16(in[j]));
  }
}

// A problem whose q, k, v (and dout) are bf16-rounded float32 copies when p.bf16: the rounding
// once per call. The copies come from the allocator, so they count in the peak.
struct RoundedOperands {
  AttentionTileProblem problem;
  const float* dout;
  Tensor q, k, v, dout_copy;

  RoundedOperands(const AttentionTileProblem& p, const float* dout_in) : problem(p), dout(dout_in) {
    if (!p.bf16) return;
    const int64_t nq = p.batch * p.sq * p.heads * p.head_dim;
    const int64_t nk = p.batch * p.sk * p.kv_heads * p.head_dim;
    auto copy = [](const float* src, int64_t n, const char* what) {
      Tensor t = Tensor::empty({n}, DType::F32, Device::CPU, what);
      round_bf16_rows(src, 1, n, n, t.data<float>());
      return t;
    };
    // Keys and values that come as bf16 are widened (exact): the same floats as rounding them.
    auto widen = [](const uint16_t* src, int64_t n, const char* what) {
      Tensor t = Tensor::empty({n}, DType::F32, Device::CPU, what);
      float* out = t.data<float>();
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(src[i]);
      return t;
    };
    q = p.q_bf16 ? widen(p.q_bf16, nq, "attention q (bf16 values)")
                 : copy(p.q, nq, "attention q (bf16 values)");
    k = p.k_bf16 ? widen(p.k_bf16, nk, "attention k (bf16 values)")
                 : copy(p.k, nk, "attention k (bf16 values)");
    v = p.v_bf16 ? widen(p.v_bf16, nk, "attention v (bf16 values)")
                 : copy(p.v, nk, "attention v (bf16 values)");
    problem.q = q.data<float>();
    problem.k = k.data<float>();
    problem.v = v.data<float>();
    if (dout_in) {
      dout_copy = copy(dout_in, nq, "attention dO (bf16 values)");
      dout = dout_copy.data<float>();
    }
  }
};

// Everything a tile loop needs about one call, derived once: the shared tile plan
// (core/attention_plan.h) plus the CPU's strides. Host memory throughout.
struct Plan : TilePlan {
  const AttentionTileProblem& p;
  int64_t D, G;  // head_dim, query heads per kv head
  int64_t ldq, ldk;
  int64_t ld_s = 0;

  explicit Plan(const AttentionTileProblem& prob)
      : TilePlan(prob, host_values(prob.q_pos, prob.sq), host_values(prob.k_pos, prob.sk),
                 host_values(prob.q_seg, prob.batch * prob.sq),
                 host_values(prob.k_seg, prob.batch * prob.sk)),
        p(prob) {
    RA_CHECK(int64_t(p.heads) * p.head_dim <= INT_MAX && p.sq <= INT_MAX && p.sk <= INT_MAX,
             "attention tile: sizes exceed the BLAS int range");
    D = p.head_dim;
    G = p.heads / p.kv_heads;
    ldq = int64_t(p.heads) * D;
    ldk = int64_t(p.kv_heads) * D;
    ld_s = score_ld(max_k);
  }

  // For a masked tile: valid[r] = how many leading keys query row r may see by position (keys are
  // ascending, so the causally visible ones are a prefix); within that prefix, keys of another
  // segment get kMaskedScore. Unmasked tiles have valid[r] = the whole chunk.
  void apply_mask(int64_t b, const TileChunk& q, const TileChunk& k, TileKind kind, float* s,
                  int64_t* valid) const {
    const int64_t nq = q.size(), nk = k.size();
    if (kind != TileKind::Masked) {
      std::fill(valid, valid + nq, nk);
      return;
    }
    const int64_t* kp = k_pos.data() + k.begin;
    const int32_t* qs = segmented ? q_seg.data() + b * p.sq + q.begin : nullptr;
    const int32_t* ks = segmented ? k_seg.data() + b * p.sk + k.begin : nullptr;
    for (int64_t r = 0; r < nq; ++r) {
      const int64_t qp = q_pos[q.begin + r];
      int64_t n = nk;
      if (p.causal && k.pos_max > qp) n = std::upper_bound(kp, kp + nk, qp) - kp;
      valid[r] = n;
      if (qs) {
        float* row = s + r * ld_s;
        const int32_t id = qs[r];
        for (int64_t j = 0; j < n; ++j) row[j] = ks[j] == id ? row[j] : kMaskedScore;
      }
    }
  }
};

// Workspace from the project allocator (so vanilla's whole-shard tiles show in the peak bytes),
// taken once per call and split between the threads.
class Workspace {
 public:
  Workspace(size_t floats_per_thread, size_t ints_per_thread, int threads, const char* what)
      : stride_(round_up(int64_t(floats_per_thread + 2 * ints_per_thread), 16)),
        floats_(floats_per_thread),
        bytes_(size_t(stride_) * size_t(threads) * sizeof(float)) {
    base_ = static_cast<float*>(allocator_for(Device::CPU).allocate(bytes_, what));
  }
  ~Workspace() { allocator_for(Device::CPU).deallocate(base_, bytes_); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  float* floats(int thread) const { return base_ + int64_t(thread) * stride_; }
  int64_t* ints(int thread) const {
    // Callers pass whole cache lines of floats, so the int64 area is aligned too.
    return reinterpret_cast<int64_t*>(floats(thread) + floats_);
  }

 private:
  int64_t stride_;
  size_t floats_;
  size_t bytes_;
  float* base_ = nullptr;
};

// Whole 64-byte lines, so every workspace area starts cache-line aligned.
size_t padded(int64_t n) {
  return size_t(round_up(n, 16));
}

// Holds OpenBLAS to one thread while OpenMP threads call it.
class BlasSingleThreaded {
 public:
  explicit BlasSingleThreaded(bool active) : saved_(active ? openblas_get_num_threads() : 0) {
    if (saved_ > 1) openblas_set_num_threads(1);
  }
  ~BlasSingleThreaded() {
    if (saved_ > 1) openblas_set_num_threads(saved_);
  }
  BlasSingleThreaded(const BlasSingleThreaded&) = delete;
  BlasSingleThreaded& operator=(const BlasSingleThreaded&) = delete;

 private:
  int saved_;
};

int thread_count(int64_t items) {
  return int(std::max<int64_t>(1, std::min<int64_t>(cpu_threads(), items)));
}

// ---- forward ------------------------------------------------------------------------------------

// One (batch, query head, query chunk) against every key chunk of the block.
void forward_item(const Plan& pl, const AttentionForwardState& st, int64_t b, int64_t h, size_t qi,
                  float* s, float* acc, int64_t* valid, AttentionTileStats& stats) {
  const AttentionTileProblem& p = pl.p;
  const RowKernels& rk = row_kernels();
  const TileChunk& q = pl.qc[qi];
  const int64_t nq = q.size(), D = pl.D, hk = h / pl.G;
  const float* qt = p.q + (b * p.sq + q.begin) * pl.ldq + h * D;
  float* acc_g = st.acc + (b * p.sq + q.begin) * pl.ldq + h * D;
  float* m = st.m + (b * p.heads + h) * p.sq + q.begin;
  float* l = st.l + (b * p.heads + h) * p.sq + q.begin;
  // A contiguous copy of this item's rows: acc rows are H*D apart in memory, and every key chunk
  // rescales and accumulates them.
  for (int64_t r = 0; r < nq; ++r) std::memcpy(acc + r * D, acc_g + r * pl.ldq, D * sizeof(float));
  bool touched = false;
  for (size_t ki = 0; ki < pl.kc.size(); ++ki) {
    const TileChunk& k = pl.kc[ki];
    const int64_t nk = k.size();
    const TileKind kind = pl.classify(b, qi, ki);
    count_tile(stats, kind, 4.0 * double(nq) * double(nk) * double(D));
    if (kind == TileKind::Skip) continue;
    touched = true;
    const float* kt = p.k + (b * p.sk + k.begin) * pl.ldk + hk * D;
    const float* vt = p.v + (b * p.sk + k.begin) * pl.ldk + hk * D;
    gemm(false, true, nq, nk, D, p.scale, qt, pl.ldq, kt, pl.ldk, 0.0f, s, pl.ld_s);
    pl.apply_mask(b, q, k, kind, s, valid);
    for (int64_t r = 0; r < nq; ++r) {
      float* row = s + r * pl.ld_s;
      const int64_t n = valid[r];
      const float m_old = m[r];
      const float m_new = std::max(m_old, n > 0 ? rk.row_max(row, n) : kNegInf);
      if (m_new <= kMaskedScore) {
        // Nothing visible to this row yet: exp(S - m) would be exp(0) = 1 on masked scores.
        std::fill(row, row + nk, 0.0f);
        continue;
      }
      const float sum = rk.exp_sum(row, n, m_new);
      std::fill(row + n, row + nk, 0.0f);
      if (m_new > m_old) {
        const float alpha = std::exp(m_old - m_new);
        l[r] = l[r] * alpha + sum;
        float* a = acc + r * D;
        for (int64_t d = 0; d < D; ++d) a[d] *= alpha;
        m[r] = m_new;
      } else {
        l[r] += sum;
      }
    }
    if (p.bf16) round_bf16_rows(s, nq, nk, pl.ld_s, s);  // after l took the unrounded sums
    gemm(false, false, nq, D, nk, 1.0f, s, pl.ld_s, vt, pl.ldk, 1.0f, acc, D);
  }
  if (touched)
    for (int64_t r = 0; r < nq; ++r)
      std::memcpy(acc_g + r * pl.ldq, acc + r * D, D * sizeof(float));
}

// ---- backward -----------------------------------------------------------------------------------

struct BackwardScratch {
  float* p;        // [max_q, ld_s] probabilities
  float* dp;       // [max_q, ld_s] dP, then dS
  float* dk;       // [max_k, D]
  float* dv;       // [max_k, D]
  float* dq;       // [max_q, D] (key-chunk-parallel mode only)
  int64_t* valid;  // [max_q]
};

// The key-chunk-parallel mode's dq sums. The rows of one (batch, query head, query chunk) get one
// part per key chunk that sees them, and the parts are added in key-chunk order, whichever thread
// computes one first: a thread waits for its turn, so the sum is the same on every run (as in the
// (batch, kv head) mode, where one thread adds all of them in that order). Items are handed out
// key chunk by key chunk, so a wait is always for an item already being computed: no deadlock.
class DqTurns {
 public:
  explicit DqTurns(const Plan& pl)
      : pl_(pl), nqc_(pl.qc.size()), next_(size_t(pl.p.batch * pl.p.heads) * nqc_) {}

  // Returns once the key chunks before `ki` that compute (b, qi) have added their parts.
  void wait(int64_t b, int64_t h, size_t qi, size_t ki) const {
    int64_t prev = -1;  // the last key chunk before ki whose tile with qi is computed
    for (size_t j = ki; j-- > 0;)
      if (pl_.classify(b, qi, j) != TileKind::Skip) {
        prev = int64_t(j);
        break;
      }
    if (prev < 0) return;
    const std::atomic<int64_t>& n = turn(b, h, qi);
    while (n.load(std::memory_order_acquire) <= prev) std::this_thread::yield();
  }
  void done(int64_t b, int64_t h, size_t qi, size_t ki) {
    turn(b, h, qi).store(int64_t(ki) + 1, std::memory_order_release);
  }

 private:
  std::atomic<int64_t>& turn(int64_t b, int64_t h, size_t qi) const {
    return next_[size_t(b * pl_.p.heads + h) * nqc_ + qi];
  }
  const Plan& pl_;
  size_t nqc_;
  mutable std::vector<std::atomic<int64_t>> next_;  // per rows: 1 + the last key chunk added
};

// One (batch, kv head, key chunk): every query head of the group, every query chunk.
void backward_item(const Plan& pl, const AttentionBackwardArgs& a, int64_t b, int64_t hk, size_t ki,
                   const BackwardScratch& w, DqTurns* dq_turns, AttentionTileStats& stats) {
  const AttentionTileProblem& p = pl.p;
  const RowKernels& rk = row_kernels();
  const TileChunk& k = pl.kc[ki];
  const int64_t nk = k.size(), D = pl.D, ld = pl.ld_s;
  const float* kt = p.k + (b * p.sk + k.begin) * pl.ldk + hk * D;
  const float* vt = p.v + (b * p.sk + k.begin) * pl.ldk + hk * D;
  std::fill(w.dk, w.dk + nk * D, 0.0f);
  std::fill(w.dv, w.dv + nk * D, 0.0f);
  bool touched = false;
  for (int64_t h = hk * pl.G; h < (hk + 1) * pl.G; ++h) {
    for (size_t qi = 0; qi < pl.qc.size(); ++qi) {
      const TileChunk& q = pl.qc[qi];
      const int64_t nq = q.size();
      const TileKind kind = pl.classify(b, qi, ki);
      count_tile(stats, kind, 10.0 * double(nq) * double(nk) * double(D));
      if (kind == TileKind::Skip) continue;
      touched = true;
      const int64_t row0 = (b * p.sq + q.begin) * pl.ldq + h * D;
      const float* qt = p.q + row0;
      const float* dot = a.dout + row0;
      const float* lse = a.lse + (b * p.heads + h) * p.sq + q.begin;
      const float* delta = a.delta + (b * p.heads + h) * p.sq + q.begin;

      gemm(false, true, nq, nk, D, p.scale, qt, pl.ldq, kt, pl.ldk, 0.0f, w.p, ld);
      pl.apply_mask(b, q, k, kind, w.p, w.valid);
      for (int64_t r = 0; r < nq; ++r) {
        float* row = w.p + r * ld;
        // lse = -inf marks a row that sees no key anywhere: all its P are 0, never exp(S + inf).
        const int64_t n = lse[r] > kMaskedScore ? w.valid[r] : 0;
        w.valid[r] = n;
        rk.exp_sum(row, n, lse[r]);
        std::fill(row + n, row + nk, 0.0f);
      }
      if (p.bf16) {
        // dV += bf16(P)^T dO: the rounded P goes where dP is computed next; dS needs P unrounded.
        round_bf16_rows(w.p, nq, nk, ld, w.dp);
        gemm(true, false, nk, D, nq, 1.0f, w.dp, ld, dot, pl.ldq, 1.0f, w.dv, D);
      } else {
        gemm(true, false, nk, D, nq, 1.0f, w.p, ld, dot, pl.ldq, 1.0f, w.dv, D);  // dV += P^T dO
      }
      gemm(false, true, nq, nk, D, 1.0f, dot, pl.ldq, vt, pl.ldk, 0.0f, w.dp, ld);  // dP = dO V^T
      for (int64_t r = 0; r < nq; ++r) {
        float* row = w.dp + r * ld;
        const int64_t n = w.valid[r];
        rk.softmax_grad(row, w.p + r * ld, n, delta[r]);  // dS = P (dP - delta)
        std::fill(row + n, row + nk, 0.0f);
      }
      if (p.bf16) round_bf16_rows(w.dp, nq, nk, ld, w.dp);  // dS for the dQ and dK GEMMs
      // dQ += scale dS K
      if (!dq_turns) {
        gemm(false, false, nq, D, nk, p.scale, w.dp, ld, kt, pl.ldk, 1.0f, a.dq + row0, pl.ldq);
      } else {
        gemm(false, false, nq, D, nk, p.scale, w.dp, ld, kt, pl.ldk, 0.0f, w.dq, D);
        dq_turns->wait(b, h, qi, ki);
        float* dq = a.dq + row0;
        for (int64_t r = 0; r < nq; ++r)
          for (int64_t d = 0; d < D; ++d) dq[r * pl.ldq + d] += w.dq[r * D + d];
        dq_turns->done(b, h, qi, ki);
      }
      gemm(true, false, nk, D, nq, p.scale, w.dp, ld, qt, pl.ldq, 1.0f, w.dk,
           D);  // dK += scale dS^T Q
    }
  }
  if (!touched) return;
  float* dk = a.dk + (b * p.sk + k.begin) * pl.ldk + hk * D;
  float* dv = a.dv + (b * p.sk + k.begin) * pl.ldk + hk * D;
  for (int64_t j = 0; j < nk; ++j)
    for (int64_t d = 0; d < D; ++d) {
      dk[j * pl.ldk + d] += w.dk[j * D + d];
      dv[j * pl.ldk + d] += w.dv[j * D + d];
    }
}

}  // namespace

void attention_forward_init(const AttentionForwardState& st, int64_t batch, int64_t sq, int heads,
                            int head_dim) {
  const size_t rows = size_t(batch) * size_t(sq) * size_t(heads);
  std::fill(st.m, st.m + rows, kMaskedScore);
  std::fill(st.l, st.l + rows, 0.0f);
  std::fill(st.acc, st.acc + rows * size_t(head_dim), 0.0f);
}

void attention_forward_block(const AttentionTileProblem& prob, const AttentionForwardState& st,
                             AttentionTileStats* stats) {
  if (prob.batch == 0 || prob.sq == 0 || prob.sk == 0) return;
  const RoundedOperands ops(prob, nullptr);
  const AttentionTileProblem& p = ops.problem;
  const Plan pl(p);
  // Items in order of decreasing query chunk: with causal masks the late queries see the most
  // keys, and dynamic scheduling balances best when the long items start first.
  const int64_t per_chunk = p.batch * p.heads;
  const int64_t items = per_chunk * int64_t(pl.qc.size());
  const int threads = thread_count(items);
  Workspace ws(padded(pl.max_q * pl.ld_s) + padded(pl.max_q * pl.D), size_t(pl.max_q), threads,
               "attention forward workspace");
  AttentionTileStats total;
  BlasSingleThreaded blas(threads > 1);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int t = omp_get_thread_num();
    float* s = ws.floats(t);
    float* acc = s + padded(pl.max_q * pl.ld_s);
    AttentionTileStats mine;
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      const size_t qi = pl.qc.size() - 1 - size_t(it / per_chunk);
      const int64_t bh = it % per_chunk;
      forward_item(pl, st, bh / p.heads, bh % p.heads, qi, s, acc, ws.ints(t), mine);
    }
#pragma omp critical(ringattn_attention_stats)
    add_tile_stats(&total, mine);
  }
  add_tile_stats(stats, total);
}

void attention_forward_finish(const AttentionForwardState& st, float* o, float* lse, int64_t batch,
                              int64_t sq, int heads, int head_dim) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < sq; ++i) {
        const int64_t row = (b * heads + h) * sq + i;
        const float l = st.l[row];
        const int64_t off = ((b * sq + i) * heads + h) * head_dim;
        if (l > 0.0f) {
          lse[row] = st.m[row] + std::log(l);
          const float inv = 1.0f / l;
          for (int64_t d = 0; d < head_dim; ++d) o[off + d] = st.acc[off + d] * inv;
        } else {
          lse[row] = kNegInf;
          std::fill(o + off, o + off + head_dim, 0.0f);
        }
      }
}

void attention_backward_delta(const float* dout, const float* o, float* delta, int64_t batch,
                              int64_t sq, int heads, int head_dim) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < sq; ++i)
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t off = ((b * sq + i) * heads + h) * head_dim;
        float sum = 0.0f;
        for (int64_t d = 0; d < head_dim; ++d) sum += dout[off + d] * o[off + d];
        delta[(b * heads + h) * sq + i] = sum;
      }
}

void attention_backward_block(const AttentionTileProblem& prob, const AttentionBackwardArgs& args,
                              AttentionTileStats* stats) {
  if (prob.batch == 0 || prob.sq == 0 || prob.sk == 0) return;
  RA_CHECK(args.dout && args.lse && args.delta && args.dq && args.dk && args.dv,
           "attention backward: dout, lse, delta, dq, dk and dv must be given");
  const RoundedOperands ops(prob, args.dout);
  const AttentionTileProblem& p = ops.problem;
  AttentionBackwardArgs a = args;
  a.dout = ops.dout;
  const Plan pl(p);
  const int64_t heads = p.batch * p.kv_heads;
  const int64_t nkc = int64_t(pl.kc.size());
  // (batch, kv head) items when they fill the threads evenly, else key chunks too (dq parts
  // added in key-chunk order, DqTurns).
  const int want = cpu_threads();
  const bool split_keys = want > 1 && heads % want != 0 && heads < 8 * int64_t(want);
  const int64_t items = split_keys ? heads * nkc : heads;
  const int threads = thread_count(items);
  const int64_t q_area = pl.max_q * pl.ld_s;
  Workspace ws(2 * padded(q_area) + 2 * padded(pl.max_k * pl.D) + padded(pl.max_q * pl.D),
               size_t(pl.max_q), threads, "attention backward workspace");
  std::optional<DqTurns> turns;
  if (split_keys) turns.emplace(pl);
  AttentionTileStats total;
  BlasSingleThreaded blas(threads > 1);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int t = omp_get_thread_num();
    BackwardScratch w;
    w.p = ws.floats(t);
    w.dp = w.p + padded(q_area);
    w.dk = w.dp + padded(q_area);
    w.dv = w.dk + padded(pl.max_k * pl.D);
    w.dq = w.dv + padded(pl.max_k * pl.D);
    w.valid = ws.ints(t);
    AttentionTileStats mine;
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      if (split_keys) {
        // Early key chunks first: under a causal mask they are seen by the most queries.
        const int64_t bh = it % heads;
        backward_item(pl, a, bh / p.kv_heads, bh % p.kv_heads, size_t(it / heads), w, &*turns,
                      mine);
      } else {
        for (size_t ki = 0; ki < pl.kc.size(); ++ki)
          backward_item(pl, a, it / p.kv_heads, it % p.kv_heads, ki, w, nullptr, mine);
      }
    }
#pragma omp critical(ringattn_attention_stats)
    add_tile_stats(&total, mine);
  }
  add_tile_stats(stats, total);
}

}  // namespace ringattn::cpu
