// The CUDA backend: without a GPU (or without CUDA compiled in) it must say so cleanly, never
// crash; with a GPU its GEMM and every layer operation must match the CPU backend on random
// inputs (the attention tiles: test/test_cuda_attention.cpp).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "core/backend.h"
#include "core/error.h"
#include "core/random.h"
#include "core/tensor.h"
#include "cuda_test_util.h"

#ifdef RINGATTN_WITH_CUDA
#include <atomic>
#include <chrono>
#include <thread>

#include "core/cuda/cuda_check.h"
#include "core/cuda/pinned_upload.h"
#endif
#ifdef RINGATTN_CUDA_SIM
#include "core/cuda_sim/sim_memory.h"
#endif

using namespace ringattn;
using test::check_close;
using test::to_device;
using test::to_host;

TEST_CASE("CUDA backend absent is reported, not a crash", "[cuda]") {
  const int n = cuda_device_count();
  CHECK(n >= 0);
  if (n == 0) {
    std::printf("[cuda] no usable GPU here (CUDA %s): GPU checks skipped\n",
                cuda_compiled() ? "compiled in" : "not compiled");
    CHECK_THROWS_WITH(cuda_backend(0), Catch::Contains("CUDA"));
  }
}

TEST_CASE("CUDA gemm matches the CPU backend", "[cuda]") {
  if (test::skip_without_gpu()) return;
  Backend& gpu = cuda_backend(0);
  Backend& cpu = cpu_backend();
  const int m = 67, n = 45, k = 129;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      Tensor a = Tensor::empty({ta ? k : m, ta ? m : k}, DType::F32);
      Tensor b = Tensor::empty({tb ? n : k, tb ? k : n}, DType::F32);
      fill_normal(a, 5 + ta);
      fill_normal(b, 7 + tb);
      Tensor c_cpu = Tensor::zeros({m, n}, DType::F32), c_back = Tensor::zeros({m, n}, DType::F32);
      const int lda = int(a.dim(1)), ldb = int(b.dim(1));
      cpu.gemm(ta, tb, m, n, k, 1.0f, a.data<float>(), lda, b.data<float>(), ldb, 0.0f,
               c_cpu.data<float>(), n);
      Tensor da = Tensor::empty(a.shape(), DType::F32, Device::CUDA);
      Tensor db = Tensor::empty(b.shape(), DType::F32, Device::CUDA);
      Tensor dc = Tensor::empty({m, n}, DType::F32, Device::CUDA);
      gpu.copy_from_host(da.raw(), a.raw(), a.nbytes());
      gpu.copy_from_host(db.raw(), b.raw(), b.nbytes());
      gpu.gemm(ta, tb, m, n, k, 1.0f, da.data<float>(), lda, db.data<float>(), ldb, 0.0f,
               dc.data<float>(), n);
      gpu.copy_to_host(c_back.raw(), dc.raw(), dc.nbytes());
      double worst = 0;
      for (int64_t i = 0; i < c_cpu.numel(); ++i)
        worst = std::max(worst, double(std::abs(c_cpu.data<float>()[i] - c_back.data<float>()[i])));
      CHECK(worst < 1e-3);  // TF32 is off by default in cuBLAS sgemm: float32 rounding only
    }
}

namespace {

Tensor randn(const Shape& shape, uint64_t seed, float stddev = 1.0f) {
  Tensor t = Tensor::empty(shape, DType::F32);
  fill_normal(t, seed, 0.0f, stddev);
  return t;
}

// Tolerances, CUDA against the CPU backend (float32 both, inputs ~N(0, 1)):
constexpr double kElemTol = 1e-5;    // elementwise: a few float roundings (FMA contraction, expf)
constexpr double kReduceTol = 1e-4;  // reductions over rows or columns: summation order differs

}  // namespace

TEST_CASE("CUDA elementwise ops (axpy, scale, fill, swiglu) match the CPU backend", "[cuda]") {
  if (test::skip_without_gpu()) return;
  Backend& gpu = cuda_backend(0);
  Backend& cpu = cpu_backend();
  // Small, odd, and large enough that the grid-stride loops wrap (4096 blocks x 256 threads on a
  // GPU, 64 x 64 simulated).
  for (int64_t n : {int64_t(1), int64_t(1001), int64_t(4096) * 256 * 2 + 37}) {
    INFO("n = " << n);
    const Tensor x = randn({n}, 100 + uint64_t(n));
    const Tensor y0 = randn({n}, 200 + uint64_t(n));
    Tensor y_cpu = y0.clone();
    Tensor dx = to_device(gpu, x), dy = to_device(gpu, y0);
    cpu.axpy(n, -0.75f, x.data<float>(), y_cpu.data<float>());
    gpu.axpy(n, -0.75f, dx.data<float>(), dy.data<float>());
    check_close(to_host(gpu, dy), y_cpu, kElemTol, 1e-6, "axpy");

    cpu.scale(y_cpu.data<float>(), n, 1.5f);
    gpu.scale(dy.data<float>(), n, 1.5f);
    check_close(to_host(gpu, dy), y_cpu, kElemTol, 1e-6, "scale");

    cpu.fill(y_cpu.data<float>(), n, -2.25f);
    gpu.fill(dy.data<float>(), n, -2.25f);
    check_close(to_host(gpu, dy), y_cpu, 0, 0, "fill");

    // SwiGLU forward, out of place and in place over gate.
    const Tensor gate = randn({n}, 300 + uint64_t(n), 3.0f), up = randn({n}, 400 + uint64_t(n));
    Tensor out_cpu = Tensor::empty({n}, DType::F32);
    cpu.swiglu_forward(gate.data<float>(), up.data<float>(), n, out_cpu.data<float>());
    Tensor dgate = to_device(gpu, gate), dup = to_device(gpu, up);
    Tensor dout_dev = to_device(gpu, randn({n}, 500 + uint64_t(n)));  // garbage, overwritten
    gpu.swiglu_forward(dgate.data<float>(), dup.data<float>(), n, dout_dev.data<float>());
    check_close(to_host(gpu, dout_dev), out_cpu, kElemTol, 1e-6, "swiglu forward");
    Tensor inplace = to_device(gpu, gate);
    gpu.swiglu_forward(inplace.data<float>(), dup.data<float>(), n, inplace.data<float>());
    check_close(to_host(gpu, inplace), out_cpu, kElemTol, 1e-6, "swiglu forward in place");

    // SwiGLU backward, separate outputs and in place (dgate = gate, dup = up).
    const Tensor grad = randn({n}, 600 + uint64_t(n));
    Tensor dg_cpu = Tensor::empty({n}, DType::F32), du_cpu = Tensor::empty({n}, DType::F32);
    cpu.swiglu_backward(gate.data<float>(), up.data<float>(), grad.data<float>(), n,
                        dg_cpu.data<float>(), du_cpu.data<float>());
    Tensor dgrad = to_device(gpu, grad);
    Tensor dg = to_device(gpu, randn({n}, 700)), du = to_device(gpu, randn({n}, 701));
    gpu.swiglu_backward(dgate.data<float>(), dup.data<float>(), dgrad.data<float>(), n,
                        dg.data<float>(), du.data<float>());
    check_close(to_host(gpu, dg), dg_cpu, kElemTol, 1e-6, "swiglu backward dgate");
    check_close(to_host(gpu, du), du_cpu, kElemTol, 1e-6, "swiglu backward dup");
    gpu.swiglu_backward(dgate.data<float>(), dup.data<float>(), dgrad.data<float>(), n,
                        dgate.data<float>(), dup.data<float>());
    check_close(to_host(gpu, dgate), dg_cpu, kElemTol, 1e-6, "swiglu backward dgate in place");
    check_close(to_host(gpu, dup), du_cpu, kElemTol, 1e-6, "swiglu backward dup in place");
  }
}

TEST_CASE("CUDA embedding forward and backward match the CPU backend", "[cuda]") {
  if (test::skip_without_gpu()) return;
  Backend& gpu = cuda_backend(0);
  Backend& cpu = cpu_backend();
  const int64_t vocab = 37, dim = 300, n = 64;  // dim > 256 threads; tokens repeat
  Tensor tokens = Tensor::empty({n}, DType::I32);
  fill_uniform_int(tokens, 11, 0, int32_t(vocab - 1));
  tokens.data<int32_t>()[5] = tokens.data<int32_t>()[9];  // at least one repeat for sure
  const Tensor table = randn({vocab, dim}, 12);
  Tensor out_cpu = Tensor::empty({n, dim}, DType::F32);
  cpu.embedding_forward(tokens.data<int32_t>(), n, table.data<float>(), vocab, dim,
                        out_cpu.data<float>());
  Tensor dtok = to_device(gpu, tokens), dtable = to_device(gpu, table);
  Tensor dout = to_device(gpu, randn({n, dim}, 13));  // garbage, overwritten
  gpu.embedding_forward(dtok.data<int32_t>(), n, dtable.data<float>(), vocab, dim,
                        dout.data<float>());
  check_close(to_host(gpu, dout), out_cpu, 0, 0, "embedding forward (a copy: exact)");

  // From a bf16 table: the rows widened, exactly.
  const Tensor table16 = table.to(DType::BF16);
  cpu.embedding_forward_bf16(tokens.data<int32_t>(), n, table16.data<uint16_t>(), vocab, dim,
                             out_cpu.data<float>());
  const Tensor dtable16 = to_device(gpu, table16);
  gpu.embedding_forward_bf16(dtok.data<int32_t>(), n, dtable16.data<uint16_t>(), vocab, dim,
                             dout.data<float>());
  check_close(to_host(gpu, dout), out_cpu, 0, 0, "embedding forward from bf16 (exact)");

  // The scatter-add adds a token's rows in row order on both backends: bitwise equal. Twice:
  // a few repeats, and thousands of rows over a small vocabulary (long runs, and more rows than
  // the kernel's grid has blocks along them).
  for (const int64_t rows : {n, int64_t(20000)}) {
    Tensor toks = Tensor::empty({rows}, DType::I32);
    fill_uniform_int(toks, 16, 0, int32_t(vocab - 1));
    const int64_t cols = rows == n ? dim : 8;
    const Tensor grad = randn({rows, cols}, 14);
    Tensor dtab_cpu = randn({vocab, cols}, 15);  // "+=": starts from non-zero values
    Tensor dtab = to_device(gpu, dtab_cpu);
    cpu.embedding_backward(toks.data<int32_t>(), rows, grad.data<float>(), vocab, cols,
                           dtab_cpu.data<float>());
    const Tensor dtoks = to_device(gpu, toks), dgrad = to_device(gpu, grad);
    gpu.embedding_backward(dtoks.data<int32_t>(), rows, dgrad.data<float>(), vocab, cols,
                           dtab.data<float>());
    check_close(to_host(gpu, dtab), dtab_cpu, 0, 0, "embedding backward (same order: exact)");
  }

  // An id outside the vocabulary is the caller's to rule out (the CPU raises, the trainer checks
  // on the host): the GPU neither reads nor writes outside the table, it writes a zero row and
  // skips the row in backward.
  Tensor bad = tokens.clone();
  bad.data<int32_t>()[17] = int32_t(vocab);
  bad.data<int32_t>()[18] = -1;
  const Tensor dbad = to_device(gpu, bad);
  gpu.embedding_forward(dbad.data<int32_t>(), n, dtable.data<float>(), vocab, dim,
                        dout.data<float>());
  const Tensor got = to_host(gpu, dout);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < dim; ++d) {
      const float want =
          (i == 17 || i == 18) ? 0.0f : table.data<float>()[bad.data<int32_t>()[i] * dim + d];
      REQUIRE(got.data<float>()[i * dim + d] == want);
    }
  // Backward: exactly the CPU's scatter-add of the other rows (rows 17 and 18 dropped), so a bad
  // id added into any row (clamped to 0 or vocab - 1, say) shows.
  const Tensor grad = randn({n, dim}, 18);
  Tensor want = randn({vocab, dim}, 17);
  Tensor dtab = to_device(gpu, want);
  Tensor good_tokens = Tensor::empty({n - 2}, DType::I32);
  Tensor good_grad = Tensor::empty({n - 2, dim}, DType::F32);
  for (int64_t i = 0, j = 0; i < n; ++i) {
    if (i == 17 || i == 18) continue;
    good_tokens.data<int32_t>()[j] = bad.data<int32_t>()[i];
    std::memcpy(good_grad.data<float>() + j * dim, grad.data<float>() + i * dim,
                size_t(dim) * sizeof(float));
    ++j;
  }
  cpu.embedding_backward(good_tokens.data<int32_t>(), n - 2, good_grad.data<float>(), vocab, dim,
                         want.data<float>());
  const Tensor dgrad_bad = to_device(gpu, grad);
  gpu.embedding_backward(dbad.data<int32_t>(), n, dgrad_bad.data<float>(), vocab, dim,
                         dtab.data<float>());
  check_close(to_host(gpu, dtab), want, 0, 0, "embedding backward skips bad ids");
}

TEST_CASE("CUDA RMSNorm forward and backward match the CPU backend", "[cuda]") {
  if (test::skip_without_gpu()) return;
  Backend& gpu = cuda_backend(0);
  Backend& cpu = cpu_backend();
  struct Size {
    int64_t rows, dim;
  };
  // dim beyond one block's threads; rows beyond the grid (the row loop wraps).
  for (Size s : {Size{13, 300}, Size{3, 1}, Size{test::kRowsPastGrid, 8}}) {
    INFO("rows " << s.rows << " dim " << s.dim);
    const float eps = 1e-5f;
    const Tensor x = randn({s.rows, s.dim}, 20 + uint64_t(s.rows)),
                 w = randn({s.dim}, 21 + uint64_t(s.dim));
    Tensor y_cpu = Tensor::empty(x.shape(), DType::F32),
           inv_cpu = Tensor::empty({s.rows}, DType::F32);
    cpu.rmsnorm_forward(x.data<float>(), w.data<float>(), s.rows, s.dim, eps, y_cpu.data<float>(),
                        inv_cpu.data<float>());
    Tensor dx_in = to_device(gpu, x), dw_in = to_device(gpu, w);
    Tensor y = to_device(gpu, randn(x.shape(), 22)), inv = to_device(gpu, randn({s.rows}, 23));
    gpu.rmsnorm_forward(dx_in.data<float>(), dw_in.data<float>(), s.rows, s.dim, eps,
                        y.data<float>(), inv.data<float>());
    check_close(to_host(gpu, y), y_cpu, kElemTol, 1e-6, "rmsnorm y");
    check_close(to_host(gpu, inv), inv_cpu, kElemTol, 0, "rmsnorm inv_rms");
    // y may alias x.
    Tensor inplace = to_device(gpu, x);
    gpu.rmsnorm_forward(inplace.data<float>(), dw_in.data<float>(), s.rows, s.dim, eps,
                        inplace.data<float>(), inv.data<float>());
    check_close(to_host(gpu, inplace), y_cpu, kElemTol, 1e-6, "rmsnorm y in place");

    // Backward: dx and dw accumulate into random non-zero values.
    const Tensor dy = randn(x.shape(), 24);
    Tensor gx_cpu = randn(x.shape(), 25), gw_cpu = randn({s.dim}, 26);
    Tensor gx = to_device(gpu, gx_cpu), gw = to_device(gpu, gw_cpu);
    cpu.rmsnorm_backward(x.data<float>(), w.data<float>(), inv_cpu.data<float>(), dy.data<float>(),
                         s.rows, s.dim, gx_cpu.data<float>(), gw_cpu.data<float>());
    Tensor ddy = to_device(gpu, dy), dinv = to_device(gpu, inv_cpu);
    gpu.rmsnorm_backward(dx_in.data<float>(), dw_in.data<float>(), dinv.data<float>(),
                         ddy.data<float>(), s.rows, s.dim, gx.data<float>(), gw.data<float>());
    check_close(to_host(gpu, gx), gx_cpu, kReduceTol, 1e-5, "rmsnorm dx");
    check_close(to_host(gpu, gw), gw_cpu, kReduceTol, 1e-4, "rmsnorm dw");
  }
}

TEST_CASE("CUDA RoPE forward and backward match the CPU backend at large positions", "[cuda]") {
  if (test::skip_without_gpu()) return;
  Backend& gpu = cuda_backend(0);
  Backend& cpu = cpu_backend();
  const int64_t B = 2, S = 9;
  const int H = 3;
  for (int D : {2, 16, 128})
    for (float theta : {10000.0f, 500000.0f}) {
      INFO("head_dim " << D << " theta " << theta);
      // Global positions in the millions, with a gap (a zigzag shard).
      std::vector<int64_t> pos;
      for (int64_t i = 0; i < S; ++i) pos.push_back(i < 5 ? 3000001 + i : 7000000 + 3 * i);
      const Tensor x = randn({B, S, H, D}, 30 + uint64_t(D));
      Tensor want = x.clone();
      cpu.rope_forward(want.data<float>(), B, S, H, D, pos.data(), theta);
      Tensor dx = to_device(gpu, x);
      gpu.rope_forward(dx.data<float>(), B, S, H, D, pos.data(), theta);
      check_close(to_host(gpu, dx), want, kElemTol, 1e-6, "rope forward");

      Tensor back = want.clone();
      cpu.rope_backward(back.data<float>(), B, S, H, D, pos.data(), theta);
      gpu.rope_backward(dx.data<float>(), B, S, H, D, pos.data(), theta);
      check_close(to_host(gpu, dx), back, kElemTol, 1e-6, "rope backward of the forward");
      check_close(to_host(gpu, dx), x, 1e-5, 1e-5, "rope backward undoes the forward");

      // Positions already on the device are accepted too.
      Tensor hpos = Tensor::empty({S}, DType::I64);
      std::memcpy(hpos.raw(), pos.data(), pos.size() * sizeof(int64_t));
      Tensor dpos = to_device(gpu, hpos);
      Tensor dx2 = to_device(gpu, x);
      gpu.rope_forward(dx2.data<float>(), B, S, H, D, dpos.data<int64_t>(), theta);
      check_close(to_host(gpu, dx2), want, kElemTol, 1e-6, "rope forward, device positions");
    }
  Tensor x = to_device(gpu, randn({1, 2, 1, 3}, 39));
  const std::vector<int64_t> pos{0, 1};
  CHECK_THROWS_AS(gpu.rope_forward(x.data<float>(), 1, 2, 1, 3, pos.data(), 10000.0f), Error);
}

TEST_CASE("CUDA cross-entropy matches the CPU backend (weights, ignored rows, ties, in place)",
          "[cuda]") {
  if (test::skip_without_gpu()) return;
  Backend& gpu = cuda_backend(0);
  Backend& cpu = cpu_backend();
  struct Size {
    int64_t rows, vocab;
  };
  // vocab beyond one block's threads; rows beyond the grid.
  for (Size s : {Size{9, 1000}, Size{5, 1}, Size{test::kRowsPastGrid, 3}}) {
    INFO("rows " << s.rows << " vocab " << s.vocab);
    const int64_t rows = s.rows, vocab = s.vocab;
    Tensor logits = randn({rows, vocab}, 40 + uint64_t(rows), 3.0f);
    Tensor targets = Tensor::empty({rows}, DType::I32);
    fill_uniform_int(targets, 41, -1, int32_t(vocab - 1));  // -1: ignored rows
    targets.data<int32_t>()[0] = int32_t(vocab - 1);
    targets.data<int32_t>()[1] = -1;
    Tensor weights = randn({rows}, 42);
    for (int64_t r = 0; r < rows; ++r)
      weights.data<float>()[r] = std::abs(weights.data<float>()[r]);
    if (vocab > 3) {
      // Row 0: two equal maxima, the target at the later one: not "correct" (first maximum wins).
      // Row 2: two equal maxima, the target at the first: correct.
      float* r0 = logits.data<float>();
      r0[3] = r0[vocab - 1] = 20.0f;
      float* r2 = logits.data<float>() + 2 * vocab;
      r2[7] = r2[vocab - 2] = 20.0f;
      targets.data<int32_t>()[2] = 7;
    }
    const float grad_scale = 0.25f;
    Tensor dl_cpu = Tensor::empty(logits.shape(), DType::F32);
    Tensor ok_cpu = Tensor::empty({rows}, DType::U8);
    const double loss_cpu =
        cpu.cross_entropy(logits.data<float>(), targets.data<int32_t>(), weights.data<float>(),
                          rows, vocab, grad_scale, dl_cpu.data<float>(), ok_cpu.data<uint8_t>());

    Tensor dlog = to_device(gpu, logits), dtgt = to_device(gpu, targets),
           dw = to_device(gpu, weights);
    Tensor dl = to_device(gpu, randn(logits.shape(), 43));  // garbage, overwritten
    Tensor ok = Tensor::empty({rows}, DType::U8, Device::CUDA);
    const double loss =
        gpu.cross_entropy(dlog.data<float>(), dtgt.data<int32_t>(), dw.data<float>(), rows, vocab,
                          grad_scale, dl.data<float>(), ok.data<uint8_t>());
    CHECK(loss == Approx(loss_cpu).epsilon(1e-6).margin(1e-9));
    check_close(to_host(gpu, dl), dl_cpu, kElemTol, 1e-7, "dlogits");
    const Tensor ok_back = to_host(gpu, ok);
    CHECK(std::memcmp(ok_back.raw(), ok_cpu.raw(), size_t(rows)) == 0);
    if (vocab > 3) {
      CHECK(ok_cpu.data<uint8_t>()[0] == 0);
      CHECK(ok_cpu.data<uint8_t>()[2] == 1);
    }

    // In place over the logits, no weights, no correctness output.
    Tensor inplace_cpu = logits.clone();
    const double l2_cpu =
        cpu.cross_entropy(inplace_cpu.data<float>(), targets.data<int32_t>(), nullptr, rows, vocab,
                          1.0f, inplace_cpu.data<float>(), nullptr);
    Tensor inplace = to_device(gpu, logits);
    const double l2 = gpu.cross_entropy(inplace.data<float>(), dtgt.data<int32_t>(), nullptr, rows,
                                        vocab, 1.0f, inplace.data<float>(), nullptr);
    CHECK(l2 == Approx(l2_cpu).epsilon(1e-6).margin(1e-9));
    check_close(to_host(gpu, inplace), inplace_cpu, kElemTol, 1e-7, "dlogits in place");

    // Loss only.
    CHECK(gpu.cross_entropy(dlog.data<float>(), dtgt.data<int32_t>(), dw.data<float>(), rows, vocab,
                            1.0f, nullptr, nullptr) == Approx(loss_cpu).epsilon(1e-6));
  }
  // A target outside [-1, vocab) is an Error, as on the CPU.
  Tensor logits = to_device(gpu, randn({2, 5}, 44));
  Tensor targets = Tensor::empty({2}, DType::I32);
  targets.data<int32_t>()[0] = 1;
  targets.data<int32_t>()[1] = 5;
  Tensor dtgt = to_device(gpu, targets);
  CHECK_THROWS_WITH(gpu.cross_entropy(logits.data<float>(), dtgt.data<int32_t>(), nullptr, 2, 5,
                                      1.0f, nullptr, nullptr),
                    Catch::Contains("row 1"));
  // The queued form does not check (the trainer checks its batches on the host): the kernel
  // takes such a row as ignored, and reads nothing outside the row.
  Tensor rows_loss = Tensor::empty({2 * int64_t(sizeof(double))}, DType::U8, Device::CUDA);
  Tensor ok = Tensor::empty({2}, DType::U8, Device::CUDA);
  Tensor dl = Tensor::empty({2, 5}, DType::F32, Device::CUDA);
  gpu.cross_entropy_rows(logits.data<float>(), dtgt.data<int32_t>(), nullptr, 2, 5, 1.0f,
                         dl.data<float>(), ok.data<uint8_t>(),
                         reinterpret_cast<double*>(rows_loss.raw()));
  const Tensor loss_back = to_host(gpu, rows_loss), dl_back = to_host(gpu, dl);
  const double* l = reinterpret_cast<const double*>(loss_back.raw());
  CHECK(l[0] > 0);
  CHECK(l[1] == 0.0);
  CHECK(to_host(gpu, ok).data<uint8_t>()[1] == 0);
  for (int j = 0; j < 5; ++j) CHECK(dl_back.data<float>()[5 + j] == 0.0f);

  // NaN logits: the loss is NaN on both backends; `correct` follows the CPU's scan, which takes
  // column 0 when it is NaN and otherwise passes over NaNs. Rows: NaN before the maximum, NaN at
  // column 0 (target 0, then 2), every column NaN. 300 columns: more than one per thread.
  const int64_t nv = 300;
  Tensor nanl = randn({4, nv}, 45);
  float* nl = nanl.data<float>();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  nl[3] = nan;
  nl[7] = 50.0f;  // row 0's maximum, after the NaN
  nl[nv] = nan;
  nl[nv + 2] = 50.0f;  // row 1: the CPU still answers column 0
  nl[2 * nv] = nan;
  nl[2 * nv + 2] = 50.0f;  // row 2: the same logits, target 2
  for (int64_t j = 0; j < nv; ++j) nl[3 * nv + j] = nan;
  Tensor nt = Tensor::empty({4}, DType::I32);
  const int32_t want_t[4] = {7, 0, 2, 0};
  std::copy(want_t, want_t + 4, nt.data<int32_t>());
  Tensor ok_cpu = Tensor::empty({4}, DType::U8);
  std::vector<double> loss_cpu(4);
  cpu.cross_entropy_rows(nanl.data<float>(), nt.data<int32_t>(), nullptr, 4, nv, 1.0f, nullptr,
                         ok_cpu.data<uint8_t>(), loss_cpu.data());
  const Tensor dnan = to_device(gpu, nanl), dnt = to_device(gpu, nt);
  Tensor ok4 = Tensor::empty({4}, DType::U8, Device::CUDA);
  Tensor loss4 = Tensor::empty({4 * int64_t(sizeof(double))}, DType::U8, Device::CUDA);
  gpu.cross_entropy_rows(dnan.data<float>(), dnt.data<int32_t>(), nullptr, 4, nv, 1.0f, nullptr,
                         ok4.data<uint8_t>(), loss4.data<double>());
  const Tensor ok4_back = to_host(gpu, ok4);
  for (int r = 0; r < 4; ++r) CHECK(ok4_back.data<uint8_t>()[r] == ok_cpu.data<uint8_t>()[r]);
  CHECK(ok_cpu.data<uint8_t>()[0] == 1);  // the CPU's answers, as described above
  CHECK(ok_cpu.data<uint8_t>()[1] == 1);
  CHECK(ok_cpu.data<uint8_t>()[2] == 0);
  CHECK(ok_cpu.data<uint8_t>()[3] == 1);
}

// upload_async reuses a few pinned buffers round robin: with more uploads queued than buffers
// before the host waits, a buffer must not be refilled before the copy that last read it ran
// (its event). On the simulated GPU queued copies run only at the synchronisation, so refilling
// too early shows every time: the early uploads would carry the late uploads' data.
TEST_CASE("CUDA: pinned uploads queued far ahead of the device each keep their own data",
          "[cuda]") {
#if defined(RINGATTN_WITH_CUDA)
  if (test::skip_without_gpu()) return;
  Backend& gpu = cuda_backend(0);
  gpu.bind_thread();
  auto* stream = static_cast<cudaStream_t>(gpu.native_stream());
  constexpr int kUploads = 40, n = 1000 + 1;  // several times the buffers; odd sizes
  std::vector<Tensor> dst;
  for (int u = 0; u < kUploads; ++u) {
    dst.push_back(Tensor::empty({n + u}, DType::I32, Device::CUDA));
    std::vector<int32_t> src(size_t(n + u));
    for (size_t i = 0; i < src.size(); ++i) src[i] = int32_t(u * 100000 + int(i));
    cuda::upload_async(stream, dst.back().raw(), src.data(), src.size() * sizeof(int32_t));
  }  // each source is gone before its copy may have run
  gpu.synchronize();
  int wrong = 0;
  for (int u = 0; u < kUploads; ++u) {
    const Tensor back = to_host(gpu, dst[size_t(u)]);
    for (int i = 0; i < n + u; ++i) wrong += back.data<int32_t>()[i] != u * 100000 + i;
  }
  CHECK(wrong == 0);
#else
  SUCCEED("built without CUDA");
#endif
}

// The NCCL ring and the watchdog poll events (cuda::query_event). A pending event's "not ready"
// must not stay behind as the thread's last error: every kernel launch is checked with
// cudaGetLastError, and would throw "device not ready" for a launch that went fine.
// On the simulated GPU the host function runs when the stream is synchronised (after the release).
TEST_CASE("CUDA: polling a pending event leaves no error for the next launch's check", "[cuda]") {
#if defined(RINGATTN_WITH_CUDA)
  if (test::skip_without_gpu()) return;
  Backend& gpu = cuda_backend(0);
  cudaStream_t s = nullptr;
  cudaEvent_t e = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaEventCreateWithFlags(&e, cudaEventDisableTiming) == cudaSuccess);
  static std::atomic<bool> release{false};
  release = false;
  // Released on every way out, so a failing check cannot leave the host function spinning.
  struct Release {
    ~Release() { release = true; }
  } guard;
  // The stream is held by a host function until released: the event after it is pending.
  REQUIRE(cudaLaunchHostFunc(
              s,
              [](void*) {  // bounded: a hang here would otherwise never end
                const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
                while (!release.load() && std::chrono::steady_clock::now() < until)
                  std::this_thread::yield();
              },
              nullptr) == cudaSuccess);
  REQUIRE(cudaEventRecord(e, s) == cudaSuccess);
  CHECK(cuda::query_event(e) == cudaErrorNotReady);
  CHECK(cudaPeekAtLastError() == cudaSuccess);
  Tensor x = Tensor::empty({64}, DType::F32, Device::CUDA);
  CHECK_NOTHROW(gpu.fill(x.data<float>(), 64, 1.0f));  // a launch checked by cudaGetLastError
  release = true;
  REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
  CHECK(cuda::query_event(e) == cudaSuccess);
  gpu.synchronize();
  cudaEventDestroy(e);
  cudaStreamDestroy(s);
#else
  SUCCEED("built without CUDA");
#endif
}

// A request larger than the GPU ends with the allocator's error, which names the request and adds
// the driver's own figures (memory outside the allocator's count: the pool, cuBLAS, NCCL).
TEST_CASE("CUDA: a request beyond the GPU's memory says what the GPU has", "[cuda]") {
#if defined(RINGATTN_WITH_CUDA)
  if (test::skip_without_gpu()) return;
  Backend& gpu = cuda_backend(0);
  gpu.bind_thread();
  size_t free = 0, total = 0;
  REQUIRE(cudaMemGetInfo(&free, &total) == cudaSuccess);
  const int64_t floats = int64_t(total / sizeof(float)) + (int64_t(1) << 28);  // 1 GiB more
  CHECK_THROWS_WITH(Tensor::empty({floats}, DType::F32, Device::CUDA, "too large"),
                    Catch::Contains("out of memory on cuda:0: request 'too large'") &&
                        Catch::Contains("the GPU has") && Catch::Contains(" free of "));
  // Not sticky: the next allocation and launch work.
  Tensor x = Tensor::empty({64}, DType::F32, Device::CUDA);
  CHECK_NOTHROW(gpu.fill(x.data<float>(), 64, 2.0f));
  CHECK(to_host(gpu, x).data<float>()[63] == 2.0f);
#else
  SUCCEED("built without CUDA");
#endif
}

// The pool cannot reuse memory whose stream-ordered free has not run yet (one queued behind work,
// or behind another stream). The simulated GPU runs a queued free only when something waits for
// its stream, so there the second request finds the first one's memory still taken every time:
// the allocator must wait for the device and try again rather than report "out of memory".
TEST_CASE("CUDA: a request that fits once queued frees have run is met", "[cuda]") {
#if defined(RINGATTN_CUDA_SIM)
  if (test::skip_without_gpu()) return;
  Backend& gpu = cuda_backend(0);
  gpu.bind_thread();
  gpu.synchronize();
  size_t free = 0, total = 0;
  REQUIRE(cudaMemGetInfo(&free, &total) == cudaSuccess);
  constexpr size_t kBlock = size_t(64) << 20;
  // Room for one block and a half beyond what is in use now.
  const size_t before = sim::set_device_capacity(total - free + kBlock + kBlock / 2);
  struct Restore {
    size_t bytes;
    ~Restore() { sim::set_device_capacity(bytes); }
  } restore{before};
  const int64_t n = int64_t(kBlock / sizeof(float));
  {
    Tensor a = Tensor::empty({n}, DType::F32, Device::CUDA, "first block");
    gpu.fill(a.data<float>(), n, 1.0f);  // queued: the free below is queued behind it
  }
  REQUIRE(cudaMemGetInfo(&free, &total) == cudaSuccess);
  CHECK(free < kBlock);  // the first block's free has not run
  Tensor b;
  CHECK_NOTHROW(b = Tensor::empty({n}, DType::F32, Device::CUDA, "second block"));
  REQUIRE(b.raw() != nullptr);
  gpu.fill(b.data<float>(), n, 3.0f);
  CHECK(to_host(gpu, b).data<float>()[n - 1] == 3.0f);
  // A request that does not fit even then still fails, with the allocator's message.
  CHECK_THROWS_WITH(Tensor::empty({n}, DType::F32, Device::CUDA, "third block"),
                    Catch::Contains("out of memory on cuda:0: request 'third block'"));
#else
  SUCCEED("needs the simulated GPU (its frees wait for a synchronisation)");
#endif
}
