// Device-generic code on a device: the emulated one here (test/emulated_device.h), the real GPU
// where one is usable. The model, the ring, FSDP, the optimizer and checkpoints are written once
// for every backend; these tests run them with their memory on the device and compare with the
// CPU backend. On the emulated device every host access to device memory faults, and results
// must equal the CPU's bit for bit; on a GPU they must agree within the stated tolerances.
#include <mpi.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "comm/host_staged_communicator.h"
#include "comm/mesh.h"
#include "comm/mpi_env.h"
#include "core/backend.h"
#include "core/forwarding_backend.h"
#include "core/profiling_backend.h"
#include "core/tensor.h"
#include "model/attention/attention.h"
#include "model/attention/layout.h"
#include "model/attention/sequence_shard.h"
#include "model/trainer.h"
#include "test/emulated_device.h"
#include "test_util.h"

#ifdef RINGATTN_CUDA_SIM
#include <cuda_runtime.h>

#include "core/cuda_sim/sim_memory.h"
#endif

using namespace ringattn;
using ringattn::test::device_under_test;
using ringattn::test::make_emulated_direct_communicator;
namespace fs = std::filesystem;

namespace {

using test::world_rank;
using test::world_size;

// Fresh random values each run (never zeros), the same on every rank when `seed` is.
std::vector<float> random_floats(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) {
    x = d(g);
    if (x == 0.0f) x = 0.5f;
  }
  return v;
}

uint64_t run_seed() {
  uint64_t s = uint64_t(std::random_device{}());
  MPI_Bcast(&s, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  return s;
}

// Positions r * len .. r * len + len - 1: rank r's contiguous shard of a sequence.
std::vector<int64_t> contiguous_positions(int64_t len, int r) {
  std::vector<int64_t> pos(static_cast<size_t>(len));
  for (int64_t i = 0; i < len; ++i) pos[size_t(i)] = r * len + i;
  return pos;
}

// The device transports a [device] ring test runs over, on `mesh`'s sp axis: host staging, and
// on the emulated device also the NCCL-like one (no staging; its ring ordered against the
// deferred stream by the backend it was made with).
struct SpTransports {
  std::unique_ptr<Communicator> staged, direct;  // direct: null unless emulated
  SpTransports(Mesh& mesh, const test::DeviceUnderTest& dut)
      : staged(make_host_staged_communicator(mesh.axis(Axis::SP), allocator_for(Device::CUDA))) {
    if (dut.emulated) direct = make_emulated_direct_communicator(mesh.axis(Axis::SP));
  }
  std::vector<Communicator*> all() const {
    std::vector<Communicator*> v{staged.get()};
    if (direct) v.push_back(direct.get());
    return v;
  }
};

Tensor host_tensor(const std::vector<float>& v, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::F32);
  std::memcpy(t.data<float>(), v.data(), v.size() * sizeof(float));
  return t;
}

// Random float32 values (random_floats) of `shape` on the device.
Tensor device_random(uint64_t seed, const Shape& shape) {
  return host_tensor(random_floats(size_t(shape_numel(shape)), seed), shape)
      .to_device(Device::CUDA);
}

std::vector<float> to_vector(const Tensor& t) {
  const Tensor h = t.to_device(Device::CPU);
  return {h.data<float>(), h.data<float>() + h.numel()};
}

// The worst |a - b| / (atol + rtol |b|) over the elements: at most 1 when a is within the
// tolerance of b everywhere. A pure relative difference would fail on values near zero, which
// other summation orders (cuBLAS vs OpenBLAS) leave with a few ulps of their neighbours' size
// (the first GPU run saw 0.03 relative on outputs that passed the absolute 2e-5 check against
// blockwise attention on one rank).
double worst_excess(const std::vector<float>& a, const std::vector<float>& b, double rtol,
                    double atol) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(double(a[i]) - double(b[i]));
    m = std::max(m, std::isfinite(d) ? d / (atol + rtol * std::abs(double(b[i]))) : HUGE_VAL);
  }
  return m;
}

bool bitwise(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("tensors live on the device and move through their allocator", "[device]") {
  const auto dut = device_under_test();
  INFO(dut.backend->name());
  const uint64_t seed = run_seed();
  const std::vector<float> v = random_floats(1000, seed);
  const Tensor h = host_tensor(v, {10, 100});
  const Tensor d = h.to_device(Device::CUDA);
  CHECK(d.device() == Device::CUDA);
  CHECK(d.shape() == h.shape());
  if (dut.emulated) CHECK(ringattn::test::is_tagged(d.raw()));  // a host access would fault
  CHECK(bitwise(to_vector(d), v));
  // clone, slice + copy_from, zeros and fill_zero stay on the device.
  const Tensor c = d.clone();
  CHECK(c.device() == Device::CUDA);
  CHECK(c.raw() != d.raw());
  CHECK(bitwise(to_vector(c), v));
  Tensor rows = Tensor::zeros({3, 100}, DType::F32, Device::CUDA);
  CHECK(to_vector(rows) == std::vector<float>(300, 0.0f));
  rows.copy_from(d.slice(0, 4, 3));
  CHECK(bitwise(to_vector(rows), std::vector<float>(v.begin() + 400, v.begin() + 700)));
  rows.fill_zero();
  CHECK(to_vector(rows) == std::vector<float>(300, 0.0f));
  // Strided device views and dtype conversions are refused with a message, not walked.
  CHECK_THROWS_WITH(d.slice(1, 0, 10).contiguous(), Catch::Contains("strided view of device"));
  CHECK_THROWS_WITH(d.to(DType::BF16), Catch::Contains("on the host only"));
  // The device allocator counts what lives there.
  Allocator& a = allocator_for(Device::CUDA);
  const size_t live = a.live_bytes();
  {
    const Tensor big = Tensor::empty({1 << 16}, DType::F32, Device::CUDA);
    CHECK(a.live_bytes() == live + (size_t(1) << 18));
  }
  CHECK(a.live_bytes() == live);
}

TEST_CASE("memory and optimizer operations on the device equal the CPU's", "[device]") {
  const auto dut = device_under_test();
  Backend& dev = *dut.backend;
  Backend& cpu = cpu_backend();
  INFO(dev.name());
  const uint64_t seed = run_seed();
  const int64_t n = 10007;  // not a multiple of any block size
  const std::vector<float> g = random_floats(size_t(n), seed);
  const std::vector<float> p0 = random_floats(size_t(n), seed + 1);
  const std::vector<float> m0 = random_floats(size_t(n), seed + 2, -0.1f, 0.1f);
  const std::vector<float> v0 = random_floats(size_t(n), seed + 3, 1e-6f, 1e-2f);
  const Tensor dg = host_tensor(g, {n}).to_device(Device::CUDA);

  SECTION("sum of squares, float64") {
    const double ref = cpu.sum_squares(g.data(), n);
    const double got = dev.sum_squares(dg.data<float>(), n);
    if (dut.emulated)
      CHECK(got == ref);
    else
      CHECK(std::abs(got - ref) <= 1e-12 * ref);  // a different summation order in float64
  }
  SECTION("scaling in float64 and the device copy") {
    Tensor d = dg.clone();
    dev.scale_f64(d.data<float>(), n, 0.37);
    std::vector<float> ref = g;
    cpu.scale_f64(ref.data(), n, 0.37);
    CHECK(bitwise(to_vector(d), ref));
    Tensor e = Tensor::empty({n}, DType::F32, Device::CUDA);
    dev.copy(e.data<float>(), d.data<float>(), size_t(n) * sizeof(float));
    CHECK(bitwise(to_vector(e), ref));
  }
  SECTION("AdamW update: bitwise the CPU's (float64 without fused multiply-adds)") {
    AdamWConstants k;
    k.b1 = 0.9;
    k.b2 = 0.95;
    k.one_minus_b1 = 0.1;
    k.one_minus_b2 = 0.05;
    k.bc1 = 1 - std::pow(0.9, 3.0);
    k.bc2 = 1 - std::pow(0.95, 3.0);
    k.eps = 1e-8;
    k.lr = 3e-3;
    k.decay = 1 - 3e-3 * 0.1;
    std::vector<float> p = p0, m = m0, v = v0;
    cpu.adamw_update(k, p.data(), g.data(), m.data(), v.data(), n);
    Tensor dp = host_tensor(p0, {n}).to_device(Device::CUDA);
    Tensor dm = host_tensor(m0, {n}).to_device(Device::CUDA);
    Tensor dv = host_tensor(v0, {n}).to_device(Device::CUDA);
    dev.adamw_update(k, dp.data<float>(), dg.data<float>(), dm.data<float>(), dv.data<float>(), n);
    CHECK(bitwise(to_vector(dp), p));
    CHECK(bitwise(to_vector(dm), m));
    CHECK(bitwise(to_vector(dv), v));
  }
}

TEST_CASE("bfloat16 conversions and the bf16 GEMM: CPU against float64, device against CPU",
          "[device]") {
  const auto dut = device_under_test();
  Backend& dev = *dut.backend;
  Backend& cpu = cpu_backend();
  INFO(dev.name());
  // Rounding: nearest, ties to even, on the bit patterns (1 + 2^-8 is a tie between two bf16).
  auto bits = [](uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  const std::vector<float> ties = {bits(0x3f808000u),
                                   bits(0x3f818000u),
                                   bits(0x3f808001u),
                                   bits(0xbf818000u),
                                   65504.0f,
                                   -0.0f,
                                   std::numeric_limits<float>::infinity()};
  const std::vector<uint16_t> expect = {0x3f80, 0x3f82, 0x3f81, 0xbf82, 0x4780, 0x8000, 0x7f80};
  std::vector<uint16_t> got(ties.size());
  cpu.to_bf16(ties.data(), got.data(), int64_t(ties.size()));
  CHECK(got == expect);

  const uint64_t seed = run_seed();
  const int64_t n = 4099;
  std::vector<float> x = random_floats(size_t(n), seed, -100.0f, 100.0f);
  std::vector<uint16_t> xb(static_cast<size_t>(n));
  cpu.to_bf16(x.data(), xb.data(), n);
  for (int64_t i = 0; i < n; ++i) CHECK(xb[size_t(i)] == f32_to_bf16(x[size_t(i)]));
  // On the device: the same bits both ways.
  const Tensor dx = host_tensor(x, {n}).to_device(Device::CUDA);
  Tensor db = Tensor::empty({n}, DType::BF16, Device::CUDA);
  dev.to_bf16(dx.data<float>(), db.data<uint16_t>(), n);
  std::vector<uint16_t> dxb(static_cast<size_t>(n));
  db.allocator().copy_to_host(dxb.data(), db.raw(), size_t(n) * 2);
  CHECK(dxb == xb);
  Tensor back = Tensor::empty({n}, DType::F32, Device::CUDA);
  dev.from_bf16(db.data<uint16_t>(), back.data<float>(), n);
  const std::vector<float> back_h = to_vector(back);
  for (int64_t i = 0; i < n; ++i) CHECK(back_h[size_t(i)] == bf16_to_f32(xb[size_t(i)]));

  // GEMM: every transpose combination, strided operands (ld > width), alpha and beta.
  const int m = 37, nn = 29, k = 53, pad = 3;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      INFO("trans_a " << ta << " trans_b " << tb);
      const int ar = ta ? k : m, ac = ta ? m : k, br = tb ? nn : k, bc = tb ? k : nn;
      const int lda = ac + pad, ldb = bc + pad, ldc = nn + pad;
      std::vector<uint16_t> a(size_t(ar * lda)), b(size_t(br * ldb));
      const std::vector<float> af = random_floats(a.size(), seed + 7),
                               bf = random_floats(b.size(), seed + 8);
      cpu.to_bf16(af.data(), a.data(), int64_t(a.size()));
      cpu.to_bf16(bf.data(), b.data(), int64_t(b.size()));
      const std::vector<float> c0 = random_floats(size_t(m * ldc), seed + 9);
      std::vector<float> c = c0;
      const float alpha = 0.75f, beta = -0.5f;
      cpu.gemm_bf16(ta, tb, m, nn, k, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
      // float64 reference of the same bf16 values; float32 accumulation over k = 53 terms of
      // magnitude <= 1 stays within 1e-5 of the sum of |products|.
      for (int i = 0; i < m; ++i)
        for (int j = 0; j < nn; ++j) {
          double ref = 0, mag = 0;
          for (int p = 0; p < k; ++p) {
            const double av = bf16_to_f32(ta ? a[size_t(p * lda + i)] : a[size_t(i * lda + p)]);
            const double bv = bf16_to_f32(tb ? b[size_t(j * ldb + p)] : b[size_t(p * ldb + j)]);
            ref += av * bv;
            mag += std::abs(av * bv);
          }
          const size_t at = size_t(i * ldc + j);
          ref = alpha * ref + beta * double(c0[at]);
          REQUIRE(std::abs(double(c[at]) - ref) <= 1e-5 * (mag + 1.0));
        }
      // The padding columns of C are untouched.
      for (int i = 0; i < m; ++i)
        for (int j = nn; j < ldc; ++j) CHECK(c[size_t(i * ldc + j)] == c0[size_t(i * ldc + j)]);
      // The device against the CPU.
      auto up16 = [](const std::vector<uint16_t>& v) {
        Tensor t = Tensor::empty({int64_t(v.size())}, DType::BF16, Device::CUDA);
        t.allocator().copy_from_host(t.raw(), v.data(), v.size() * 2);
        return t;
      };
      const Tensor da = up16(a), dbm = up16(b);
      Tensor dc = host_tensor(c0, {int64_t(c0.size())}).to_device(Device::CUDA);
      dev.gemm_bf16(ta, tb, m, nn, k, alpha, da.data<uint16_t>(), lda, dbm.data<uint16_t>(), ldb,
                    beta, dc.data<float>(), ldc);
      const std::vector<float> dch = to_vector(dc);
      if (dut.emulated)
        CHECK(bitwise(dch, c));
      else
        for (size_t i = 0; i < c.size(); ++i) CHECK(std::abs(dch[i] - c[i]) <= 1e-4f);
    }
}

TEST_CASE("host-staged collectives and ring move device buffers", "[device]") {
  const auto dut = device_under_test();
  INFO(dut.backend->name());
  const int n = world_size(), r = world_rank();
  Mesh mesh(MeshShape{1, n, 1, 1});
  std::unique_ptr<Communicator> comm =
      make_host_staged_communicator(mesh.world(), allocator_for(Device::CUDA));
  CHECK(comm->device() == Device::CUDA);
  CHECK(comm->accepts_host_buffers());
  const int64_t c = 37;
  // Rank q's contribution: c values q * 1000 + i.
  auto contribution = [&](int q) {
    std::vector<float> v(static_cast<size_t>(c));
    for (int64_t i = 0; i < c; ++i) v[size_t(i)] = float(q * 1000 + i);
    return v;
  };
  const Tensor mine = host_tensor(contribution(r), {c}).to_device(Device::CUDA);

  // all_reduce (sum)
  Tensor sum = mine.clone();
  comm->all_reduce(sum.raw(), size_t(c), DType::F32, ReduceOp::Sum);
  std::vector<float> expect(size_t(c), 0.0f);
  for (int q = 0; q < n; ++q)
    for (int64_t i = 0; i < c; ++i) expect[size_t(i)] += contribution(q)[size_t(i)];
  CHECK(to_vector(sum) == expect);

  // all_gather, also in place
  std::vector<float> gathered;
  for (int q = 0; q < n; ++q) {
    const std::vector<float> v = contribution(q);
    gathered.insert(gathered.end(), v.begin(), v.end());
  }
  Tensor all = Tensor::empty({n * c}, DType::F32, Device::CUDA);
  comm->all_gather(mine.raw(), all.raw(), size_t(c), DType::F32);
  CHECK(to_vector(all) == gathered);
  Tensor in_place = Tensor::zeros({n * c}, DType::F32, Device::CUDA);
  in_place.slice(0, r * c, c).copy_from(mine);
  comm->all_gather(in_place.data<float>() + r * c, in_place.raw(), size_t(c), DType::F32);
  CHECK(to_vector(in_place) == gathered);

  // reduce_scatter: every rank sends all n blocks; block q summed over ranks lands on rank q.
  std::vector<float> send(size_t(n * c));
  for (int64_t i = 0; i < n * c; ++i) send[size_t(i)] = float(r + 1) * float(i);
  Tensor part = Tensor::empty({c}, DType::F32, Device::CUDA);
  comm->reduce_scatter(host_tensor(send, {n * c}).to_device(Device::CUDA).raw(), part.raw(),
                       size_t(c), DType::F32, ReduceOp::Sum);
  std::vector<float> expect_part(static_cast<size_t>(c));
  const float ranks_sum = float(n * (n + 1) / 2);
  for (int64_t i = 0; i < c; ++i) expect_part[size_t(i)] = ranks_sum * float(r * c + i);
  CHECK(to_vector(part) == expect_part);

  // broadcast from the last rank
  Tensor b = mine.clone();
  comm->broadcast(b.raw(), size_t(c), DType::F32, n - 1);
  CHECK(to_vector(b) == contribution(n - 1));

  // A host scalar through the same communicator (what the gradient norm does).
  double x = double(r + 1), parts[4] = {};
  comm->all_gather(&x, parts, sizeof(double), DType::U8);
  for (int q = 0; q < n; ++q) CHECK(parts[q] == double(q + 1));

  // Ring: two steps around, receiving from the previous rank each time.
  auto ring = comm->make_ring();
  Tensor cur = mine.clone(), nxt = Tensor::empty({c}, DType::F32, Device::CUDA);
  for (int step = 1; step <= 2; ++step) {
    ring->start(cur.raw(), nxt.raw(), size_t(c) * sizeof(float));
    ring->wait();
    std::swap(cur, nxt);
    CHECK(to_vector(cur) == contribution(((r - step) % n + n) % n));
  }
  CHECK(ring->bytes_moved() == (n > 1 ? 2 * size_t(c) * sizeof(float) : 0));
}

TEST_CASE("host staging over a group of one rank copies on the device", "[device]") {
  const auto dut = device_under_test();
  INFO(dut.backend->name());
  const int n = world_size(), r = world_rank();
  Mesh mesh(MeshShape{1, n, 1, 1});  // the sp axis has one rank on every rank
  std::unique_ptr<Communicator> comm =
      make_host_staged_communicator(mesh.axis(Axis::SP), allocator_for(Device::CUDA));
  REQUIRE(comm->size() == 1);
  const int64_t c = 1 << 18;  // 1 MiB of floats: staging it would show in the host's peak
  const size_t bytes = size_t(c) * sizeof(float);
  std::vector<float> values(static_cast<size_t>(c));
  for (int64_t i = 0; i < c; ++i) values[size_t(i)] = float(r * 7 + i % 1013) * 0.5f;
  const Tensor mine = host_tensor(values, {c}).to_device(Device::CUDA);
  Tensor gathered = Tensor::zeros({c}, DType::F32, Device::CUDA);
  Tensor scattered = Tensor::zeros({c}, DType::F32, Device::CUDA);
  Tensor received = Tensor::zeros({c}, DType::F32, Device::CUDA);
  Tensor same = mine.clone();
  auto ring = comm->make_ring();
  Allocator& host = allocator_for(Device::CPU);
  host.reset_peak();
  const size_t host_before = host.peak_bytes();

  comm->all_gather(mine.raw(), gathered.raw(), size_t(c), DType::F32);
  Tensor in_place = mine.clone();  // send == recv + rank * count, rank 0 of 1
  comm->all_gather(in_place.raw(), in_place.raw(), size_t(c), DType::F32);
  comm->reduce_scatter(mine.raw(), scattered.raw(), size_t(c), DType::F32, ReduceOp::Sum);
  comm->all_reduce(same.raw(), size_t(c), DType::F32, ReduceOp::Sum);
  comm->broadcast(same.raw(), size_t(c), DType::F32, 0);
  ring->start(mine.raw(), received.raw(), bytes);
  ring->wait();
  // Nothing went through host memory (a staging buffer would be `bytes` or more).
  CHECK(host.peak_bytes() - host_before < bytes);
  CHECK(ring->bytes_moved() == 0);
  CHECK(to_vector(gathered) == values);
  CHECK(to_vector(in_place) == values);
  CHECK(to_vector(scattered) == values);
  CHECK(to_vector(same) == values);
  CHECK(to_vector(received) == values);
}

TEST_CASE("zeroing device memory is queued on the stream, not waited for", "[device]") {
  const auto dut = device_under_test();
  Backend& be = *dut.backend;
  Tensor t = Tensor::empty({4096}, DType::F32, Device::CUDA);
  be.fill(t.data<float>(), 4096, 3.0f);
  be.synchronize();
  const size_t waits = dut.emulated ? ringattn::test::emulated_host_waits() : 0;
  be.fill(t.data<float>(), 4096, 5.0f);
  t.fill_zero();  // the allocator's zero(): after the fill, in stream order
  if (dut.emulated) {
    CHECK(ringattn::test::emulated_host_waits() == waits);      // no host wait
    CHECK(ringattn::test::emulated_pending_operations() >= 2);  // both still queued
  }
  be.scale(t.data<float>(), 4096, 2.0f);  // later work sees the zeros
  CHECK(to_vector(t) == std::vector<float>(4096, 0.0f));
}

TEST_CASE("the emulated stream defers work; only an ordered ring sees it", "[device]") {
  const auto dut = device_under_test();
  if (!dut.emulated) {
    WARN("a real GPU is present: the emulated stream is not under test");
    return;
  }
  Backend& be = *dut.backend;
  const int n = world_size(), r = world_rank();
  Mesh mesh(MeshShape{1, 1, n, 1});
  std::unique_ptr<Communicator> comm = make_emulated_direct_communicator(mesh.axis(Axis::SP));
  const int64_t c = 1000;
  const size_t bytes = size_t(c) * sizeof(float);
  const float fresh = float(r + 1), stale = -1.0f;
  const int from = (r + n - 1) % n;  // the ring's previous rank
  for (bool ordered : {false, true}) {
    INFO((ordered ? "ring made with the backend" : "ring made without it"));
    auto ring = comm->make_ring(ordered ? &be : nullptr);
    Tensor send = Tensor::empty({c}, DType::F32, Device::CUDA);
    Tensor recv = Tensor::empty({c}, DType::F32, Device::CUDA);
    be.fill(send.data<float>(), c, stale);
    be.fill(recv.data<float>(), c, 0.0f);
    be.synchronize();
    be.fill(send.data<float>(), c, fresh);  // queued, not run yet
    CHECK(ringattn::test::emulated_pending_operations() > 0);
    ring->start(send.raw(), recv.raw(), bytes);
    ring->wait();
    const std::vector<float> got = to_vector(recv);
    // Ordered: the previous rank's fresh value. Unordered: its stale one, which is what a GPU
    // could show too; the emulation makes it certain, so tests see a missing order.
    CHECK(got == std::vector<float>(size_t(c), ordered ? float(from + 1) : stale));
    comm->barrier();  // every rank's checks done before the next round's buffers are reused
  }
}

TEST_CASE("a host-staged ring of one rank copies on the compute stream, without a host wait",
          "[device]") {
  const auto dut = device_under_test();
  if (!dut.emulated) {
    WARN("a real GPU is present: the emulated stream is not under test");
    return;
  }
  Backend& be = *dut.backend;
  Mesh mesh(MeshShape{world_size(), 1, 1, 1});  // every rank's SP group is itself alone
  std::unique_ptr<Communicator> comm =
      make_host_staged_communicator(mesh.axis(Axis::SP), allocator_for(Device::CUDA));
  REQUIRE(comm->size() == 1);
  const int64_t c = 1000;
  const size_t bytes = size_t(c) * sizeof(float);
  for (bool ordered : {false, true}) {
    INFO((ordered ? "ring made with the backend" : "ring made without it"));
    auto ring = comm->make_ring(ordered ? &be : nullptr);
    Tensor send = Tensor::empty({c}, DType::F32, Device::CUDA);
    Tensor recv = Tensor::empty({c}, DType::F32, Device::CUDA);
    be.fill(send.data<float>(), c, 1.0f);
    be.fill(recv.data<float>(), c, 0.0f);
    be.synchronize();
    be.fill(send.data<float>(), c, 2.0f);  // queued, not run yet
    ring->start(send.raw(), recv.raw(), bytes);
    // With the backend the copy is queued behind the fill (nothing has run); without it the
    // allocator's synchronous copy ran the queue first.
    CHECK((ringattn::test::emulated_pending_operations() > 0) == ordered);
    ring->wait();
    be.fill(send.data<float>(), c, 3.0f);  // after wait() the sender may reuse its buffer
    CHECK(to_vector(recv) == std::vector<float>(size_t(c), 2.0f));
    CHECK(ring->bytes_moved() == 0);
  }
}

TEST_CASE("stream-ordered collectives read what the compute stream queued before them",
          "[device]") {
  const auto dut = device_under_test();
  INFO(dut.backend->name());
  Backend& be = *dut.backend;
  const int n = world_size(), r = world_rank();
  Mesh mesh(MeshShape{1, n, 1, 1});
  std::vector<std::unique_ptr<Communicator>> owned;
  owned.push_back(
      make_host_staged_communicator(mesh.axis(Axis::FSDP), allocator_for(Device::CUDA)));
  if (dut.emulated) owned.push_back(make_emulated_direct_communicator(mesh.axis(Axis::FSDP)));
  std::vector<Communicator*> comms;
  for (const auto& o : owned) comms.push_back(o.get());
  // On a GPU, one rank: NCCL's own event-ordered collectives too (two ranks need two GPUs); on
  // the simulated GPU, whose simulated NCCL lets the ranks share it, on every rank.
  std::unique_ptr<Mesh> nccl_mesh;
  if (!dut.emulated && nccl_compiled() && (n == 1 || cuda_simulated())) {
    nccl_mesh = std::make_unique<Mesh>(MeshShape{1, n, 1, 1}, MPI_COMM_WORLD, Transport::NCCL);
    comms.push_back(nccl_mesh->device_axis(Axis::FSDP));
  }
  const int64_t c = 257;
  // Through the bench's profiling decorator too: its calls complete on return, so NCCL's points
  // wait on the host before the device (so the exposed transfer counts as waiting).
  ProfilingBackend profiled(be);
  CHECK(profiled.calls_complete_on_return());
  CHECK_FALSE(be.calls_complete_on_return());
  CHECK(cpu_backend().calls_complete_on_return());
  for (Backend* compute : {&be, static_cast<Backend*>(&profiled)})
    for (Communicator* comm : comms) {
      INFO(comm->name() << (comm->orders_on_device() ? " (ordered on the device)" : "")
                        << (compute == &be ? "" : ", profiled"));
      Tensor mine = Tensor::empty({c}, DType::F32, Device::CUDA);
      Tensor all = Tensor::empty({c * n}, DType::F32, Device::CUDA);
      Tensor part = Tensor::empty({c}, DType::F32, Device::CUDA);
      be.fill(mine.data<float>(), c, -7.0f);
      be.synchronize();
      be.fill(mine.data<float>(), c, float(r + 1));  // queued: the collective must come after it
      comm->all_gather_ordered(mine.raw(), all.raw(), size_t(c), DType::F32, *compute);
      // Queued after the call: sees the gathered values (and doubles them).
      compute->scale(all.data<float>(), c * n, 2.0f);
      comm->reduce_scatter_ordered(all.raw(), part.raw(), size_t(c), DType::F32, ReduceOp::Sum,
                                   *compute);
      std::vector<float> want_all;
      for (int q = 0; q < n; ++q) want_all.insert(want_all.end(), size_t(c), 2.0f * float(q + 1));
      CHECK(to_vector(all) == want_all);
      CHECK(to_vector(part) == std::vector<float>(size_t(c), 2.0f * float(n) * float(r + 1)));
    }
}

TEST_CASE("a ring exchange issued before a collective on another NCCL communicator ends first",
          "[device]") {
  const auto dut = device_under_test();
  const int n = world_size(), r = world_rank();
  // NCCL needs a GPU per rank on this node, or the simulated GPU (which the ranks share).
  if (dut.emulated || !nccl_compiled() ||
      (!cuda_simulated() && MpiEnv::local_size() > cuda_device_count()))
    return;
  // The sp ring and the fsdp x sp group are two NCCL communicators over the same ranks. Were
  // their operations on two streams, a GPU could run them in either order, and two GPUs in
  // different orders: the deadlock of comm/nccl/nccl_communicator.cpp's file comment. On one
  // stream, a blocking collective on the group returns only after the ring exchange issued
  // before it on the other communicator. (The simulated GPU runs a stream only when asked to,
  // so on two streams the exchange would still be pending here.)
  Mesh mesh(MeshShape{1, 1, n, 1}, MPI_COMM_WORLD, Transport::NCCL);
  Communicator& sp = *mesh.device_axis(Axis::SP);
  Communicator& group = *mesh.device_fsdp_sp();
  const int64_t c = 64;
  Tensor send = Tensor::empty({c}, DType::F32, Device::CUDA);
  Tensor recv = Tensor::empty({c}, DType::F32, Device::CUDA);
  Tensor sum = Tensor::empty({1}, DType::F32, Device::CUDA);
  Backend& be = *dut.backend;
  be.fill(send.data<float>(), c, float(r + 1));
  be.fill(recv.data<float>(), c, -1.0f);
  be.fill(sum.data<float>(), 1, 1.0f);
  be.synchronize();
  std::unique_ptr<RingExchange> ring = sp.make_ring();
  for (int round = 0; round < 3; ++round) {
    INFO("round " << round);
    ring->start(send.raw(), recv.raw(), size_t(c) * sizeof(float));
    group.all_reduce(sum.raw(), 1, DType::F32, ReduceOp::Sum);
    CHECK(ring->test());  // complete without waiting: the all-reduce's stream ran it
    ring->wait();
    CHECK(to_vector(recv) == std::vector<float>(size_t(c), float((r + n - 1) % n + 1)));
  }
  CHECK(to_vector(sum) == std::vector<float>{float(n * n * n)});
}

TEST_CASE("the emulated NCCL transport catches work that touches an ordered collective's buffers",
          "[device]") {
  const auto dut = device_under_test();
  if (!dut.emulated) return;  // on a GPU such a race may or may not show: nothing to assert
  Backend& be = *dut.backend;
  const int n = world_size(), r = world_rank();
  Mesh mesh(MeshShape{1, n, 1, 1});
  std::unique_ptr<Communicator> comm = make_emulated_direct_communicator(mesh.axis(Axis::FSDP));
  const int64_t c = 33;
  Tensor mine = Tensor::empty({c}, DType::F32, Device::CUDA);
  Tensor all = Tensor::empty({c * n}, DType::F32, Device::CUDA);
  Tensor early = Tensor::empty({c * n}, DType::F32, Device::CUDA);
  Tensor part = Tensor::empty({c}, DType::F32, Device::CUDA);
  be.fill(mine.data<float>(), c, float(r + 1));
  std::vector<float> want_all;
  for (int q = 0; q < n; ++q) want_all.insert(want_all.end(), size_t(c), float(q + 1));

  // Reading the output before order(): not there yet (NaN); after order(): the gathered values.
  std::unique_ptr<StreamPoint> point =
      comm->all_gather_ordered(mine.raw(), all.raw(), size_t(c), DType::F32, be);
  be.copy(early.raw(), all.raw(), size_t(c * n) * sizeof(float));
  point->order();
  for (float v : to_vector(early)) CHECK(std::isnan(v));
  CHECK(to_vector(all) == want_all);

  // In place (the input is the rank's own piece of the output): that piece is kept meanwhile.
  be.fill(all.data<float>(), c * n, 0.0f);
  be.fill(all.data<float>() + r * c, c, float(r + 1));
  point = comm->all_gather_ordered(all.data<float>() + r * c, all.raw(), size_t(c), DType::F32, be);
  be.copy(early.raw(), all.raw(), size_t(c * n) * sizeof(float));
  point.reset();  // dropping the point orders it too
  const std::vector<float> seen = to_vector(early);
  for (int64_t i = 0; i < c * n; ++i) {
    if (i / c == r)
      CHECK(seen[size_t(i)] == float(r + 1));
    else
      CHECK(std::isnan(seen[size_t(i)]));
  }
  CHECK(to_vector(all) == want_all);

  // Writing the input before order(): a race with the communication stream, refused.
  point =
      comm->reduce_scatter_ordered(all.raw(), part.raw(), size_t(c), DType::F32, ReduceOp::Sum, be);
  be.fill(all.data<float>(), c * n, 0.0f);
  CHECK_THROWS_WITH(point->order(), Catch::Contains("changed the collective's input"));
}

TEST_CASE("ring attention on the device equals the CPU's", "[device]") {
  const auto dut = device_under_test();
  INFO(dut.backend->name());
  const int n = world_size(), r = world_rank();
  Mesh mesh(MeshShape{1, 1, n, 1});
  const SpTransports sp(mesh, dut);
  const uint64_t seed = run_seed();
  const int64_t B = 2, S = 48, Sl = S / n;
  const int H = 4, Hkv = 2, D = 8;
  // Random global q, k, v, dO (the same on every rank) and this rank's contiguous shard of them.
  const std::vector<int64_t> pos = contiguous_positions(Sl, r);
  auto full = [&](uint64_t s, int heads) {
    return host_tensor(random_floats(size_t(B * S * heads * D), s), {B, S, heads, D});
  };
  const Tensor fq = full(seed, H), fk = full(seed + 1, Hkv), fv = full(seed + 2, Hkv),
               fdout = full(seed + 3, H);
  const Tensor q = take_positions(fq, 1, pos), k = take_positions(fk, 1, pos),
               v = take_positions(fv, 1, pos), dout = take_positions(fdout, 1, pos);
  // Packed documents: three per row, cut differently in each row (blocks of other ranks then
  // carry segment ids this rank must know on the host).
  Tensor fseg = Tensor::empty({B, S}, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < S; ++i)
      fseg.data<int32_t>()[b * S + i] = int32_t(i < S / 3 + b * 5 ? 0 : (i < (2 * S) / 3 ? 1 : 2));
  const Tensor seg = take_positions(fseg, 1, pos);

  // The reference of the issue: blockwise over the whole sequence on ONE rank, on the device.
  AttentionOptions bw;
  bw.impl = AttentionImpl::Blockwise;
  bw.causal = true;
  bw.q_chunk = bw.k_chunk = 4;
  std::vector<int64_t> all_pos(static_cast<size_t>(S));
  for (int64_t i = 0; i < S; ++i) all_pos[size_t(i)] = i;
  Attention one_rank(bw, *dut.backend, nullptr);
  struct Whole {
    AttentionOutput o;
    AttentionGrads g;
  } whole_run[2];  // without and with segment ids
  for (int with_seg : {0, 1}) {
    const AttentionInput whole{fq.to_device(Device::CUDA),
                               fk.to_device(Device::CUDA),
                               fv.to_device(Device::CUDA),
                               all_pos,
                               with_seg ? fseg.to_device(Device::CUDA) : Tensor(),
                               nullptr};
    whole_run[with_seg].o = one_rank.forward(whole);
    whole_run[with_seg].g =
        one_rank.backward(whole, whole_run[with_seg].o, fdout.to_device(Device::CUDA));
  }
  // This rank's rows of it (dimension 1 of [B, S, ., D], dimension 2 of the LSE's [B, H, S]).
  auto mine = [&](const Tensor& t, int dim) {
    return to_vector(take_positions(t.to_device(Device::CPU), dim, pos));
  };

  struct Variant {
    int pieces;
    bool segments;
    Communicator* transport;
  };
  std::vector<Variant> variants = {
      {1, false, sp.staged.get()}, {3, false, sp.staged.get()}, {2, true, sp.staged.get()}};
  if (sp.direct) {
    variants.push_back({1, false, sp.direct.get()});
    variants.push_back({3, true, sp.direct.get()});
  }
  for (const Variant& var : variants) {
    const int pieces = var.pieces;
    INFO("ring_pieces = " << pieces << (var.segments ? ", segment ids" : "") << ", over "
                          << var.transport->name());
    const AttentionOutput& wo = whole_run[var.segments].o;
    const AttentionGrads& wg = whole_run[var.segments].g;
    const Tensor hseg = var.segments ? seg : Tensor();
    AttentionOptions opt;
    opt.impl = AttentionImpl::Ring;
    opt.causal = true;
    opt.q_chunk = 4;
    opt.k_chunk = 4;
    opt.ring_pieces = pieces;
    Attention cpu_attn(opt, cpu_backend(), &mesh.axis(Axis::SP));
    Attention dev_attn(opt, *dut.backend, var.transport);
    const AttentionInput hin{q, k, v, pos, hseg, nullptr};
    const AttentionInput din{q.to_device(Device::CUDA),
                             k.to_device(Device::CUDA),
                             v.to_device(Device::CUDA),
                             pos,
                             var.segments ? hseg.to_device(Device::CUDA) : Tensor(),
                             nullptr};
    const AttentionOutput ho = cpu_attn.forward(hin);
    const AttentionOutput dn = dev_attn.forward(din);
    const AttentionGrads hg = cpu_attn.backward(hin, ho, dout);
    const AttentionGrads dg = dev_attn.backward(din, dn, dout.to_device(Device::CUDA));
    const std::pair<const Tensor*, const Tensor*> pairs[] = {
        {&dn.o, &ho.o}, {&dn.lse, &ho.lse}, {&dg.dq, &hg.dq}, {&dg.dk, &hg.dk}, {&dg.dv, &hg.dv}};
    for (auto [d, h] : pairs) {
      CHECK(d->device() == Device::CUDA);
      if (dut.emulated)
        CHECK(bitwise(to_vector(*d), to_vector(*h)));
      else
        CHECK(worst_excess(to_vector(*d), to_vector(*h), 1e-4, 1e-4) <= 1.0);  // as [cuda]
    }
    // Ring on N ranks == blockwise on one rank (other summation orders: float32 rounding only;
    // values are O(1), so an absolute 2e-5 is a few dozen ulps).
    const std::pair<std::vector<float>, std::vector<float>> vs_one_rank[] = {
        {to_vector(dn.o), mine(wo.o, 1)},
        {to_vector(dn.lse), mine(wo.lse, 2)},
        {to_vector(dg.dq), mine(wg.dq, 1)},
        {to_vector(dg.dk), mine(wg.dk, 1)},
        {to_vector(dg.dv), mine(wg.dv, 1)}};
    for (const auto& [ring_v, one_v] : vs_one_rank) {
      REQUIRE(ring_v.size() == one_v.size());
      double worst = 0;
      for (size_t i = 0; i < one_v.size(); ++i)
        worst = std::max(worst, std::abs(double(ring_v[i]) - double(one_v[i])));
      CHECK(worst < 2e-5);
    }
  }
  // A host tensor given to a device attention is refused with a message.
  AttentionOptions opt;
  opt.impl = AttentionImpl::Ring;
  opt.q_chunk = opt.k_chunk = 4;
  Attention dev_attn(opt, *dut.backend, sp.staged.get());
  const AttentionInput host_in{q, k, v, pos, Tensor(), nullptr};
  CHECK_THROWS_WITH(dev_attn.forward(host_in), Catch::Contains("backend's device"));
}

// attention.kernel = fused: on a GPU the fused bf16 kernels, on the emulated device their own
// body run on the CPU (core/cuda_sim/host_block.h). Ring attention on every rank, over the device
// transports, against the CPU's bf16 tiles on the same ranks: 4e-3 * (1 + |x|), the bf16 tile
// tolerance of test_cuda_attention.cpp (both round the same operands; sums in other orders now
// and then move a P or dS element across a bf16 rounding boundary).
TEST_CASE("ring attention with the fused kernels equals the CPU's bf16 tiles", "[device]") {
  const auto dut = device_under_test();
  INFO(dut.backend->name());
  const int n = world_size(), r = world_rank();
  Mesh mesh(MeshShape{1, 1, n, 1});
  const SpTransports sp(mesh, dut);
  const uint64_t seed = run_seed();
  // 192 tokens: 3 of the kernels' 64-row tiles on one rank, 48 (a partial tile) on four.
  const int64_t B = 2, S = 192, Sl = S / n;
  const int H = 4, Hkv = 2, D = 16;
  const std::vector<int64_t> pos = layout_positions(RingLayout::Zigzag, S, n, r);
  auto shard = [&](uint64_t s, int heads) {
    const Tensor full = host_tensor(random_floats(size_t(B * S * heads * D), s), {B, S, heads, D});
    return take_positions(full, 1, pos);
  };
  const Tensor q = shard(seed, H), k = shard(seed + 1, Hkv), v = shard(seed + 2, Hkv),
               dout = shard(seed + 3, H);
  REQUIRE(q.shape()[1] == Sl);
  AttentionOptions opt;
  opt.impl = AttentionImpl::Ring;
  opt.layout = RingLayout::Zigzag;
  opt.causal = true;
  opt.q_chunk = opt.k_chunk = 16;
  opt.bf16 = true;
  Attention cpu_attn(opt, cpu_backend(), &mesh.axis(Axis::SP));
  const AttentionInput hin{q, k, v, pos, Tensor(), nullptr};
  const AttentionOutput ho = cpu_attn.forward(hin);
  const AttentionGrads hg = cpu_attn.backward(hin, ho, dout);

  opt.kernel = AttentionKernel::Fused;
  for (Communicator* transport : sp.all()) {
    INFO("over " << transport->name());
    Attention dev_attn(opt, *dut.backend, transport);
    const AttentionInput din{q.to_device(Device::CUDA),
                             k.to_device(Device::CUDA),
                             v.to_device(Device::CUDA),
                             pos,
                             Tensor(),
                             nullptr};
    const AttentionOutput dn = dev_attn.forward(din);
    const AttentionGrads dg = dev_attn.backward(din, dn, dout.to_device(Device::CUDA));
    const std::pair<const Tensor*, const Tensor*> pairs[] = {
        {&dn.o, &ho.o}, {&dn.lse, &ho.lse}, {&dg.dq, &hg.dq}, {&dg.dk, &hg.dk}, {&dg.dv, &hg.dv}};
    for (auto [d, h] : pairs) {
      const std::vector<float> got = to_vector(*d), want = to_vector(*h);
      CHECK(worst_excess(got, want, 4e-3, 4e-3) <= 1.0);
      // Not the tiles' own results: the fused path really ran (other summation orders).
      if (dut.emulated && d == &dn.o) CHECK(!bitwise(got, want));
    }
  }
  // The fused kernels are bf16 kernels.
  AttentionOptions f32 = opt;
  f32.bf16 = false;
  CHECK_THROWS_WITH(Attention(f32, *dut.backend, sp.staged.get()), Catch::Contains("bf16 kernels"));
}

TEST_CASE("ring attention waits for the device a fixed number of times, whatever the steps",
          "[device]") {
  const auto dut = device_under_test();
  if (!dut.emulated) {
    WARN("a real GPU is present: host waits are counted on the emulated device only");
    return;
  }
  const int n = world_size(), r = world_rank();
  Mesh mesh(MeshShape{1, 1, n, 1});
  std::unique_ptr<Communicator> sp = make_emulated_direct_communicator(mesh.axis(Axis::SP));
  const int64_t B = 1, Sl = 24;
  const int H = 2, D = 8;
  const std::vector<int64_t> pos = contiguous_positions(Sl, r);
  const uint64_t seed = run_seed();
  std::vector<int32_t> seg_values(static_cast<size_t>(B * Sl));
  for (int64_t i = 0; i < Sl; ++i) seg_values[size_t(i)] = int32_t((r * Sl + i) / 10);
  Tensor seg = Tensor::empty({B, Sl}, DType::I32);
  std::copy(seg_values.begin(), seg_values.end(), seg.data<int32_t>());
  const AttentionInput in{device_random(seed, {B, Sl, H, D}),
                          device_random(seed + 1, {B, Sl, H, D}),
                          device_random(seed + 2, {B, Sl, H, D}),
                          pos,
                          seg.to_device(Device::CUDA),
                          nullptr};
  const Tensor dout = device_random(seed + 3, {B, Sl, H, D});
  size_t waits[3][2] = {};  // [pieces 1, pieces 4, pieces 4 with shared tokens][fwd, bwd]
  for (int i = 0; i < 3; ++i) {
    AttentionOptions opt;
    opt.impl = AttentionImpl::Ring;
    opt.q_chunk = opt.k_chunk = 4;
    opt.ring_pieces = i == 0 ? 1 : 4;
    Attention attn(opt, *dut.backend, sp.get());
    AttentionInput input = in;
    // What the model does: segment ids in host memory, and every rank's tokens gathered once per
    // batch for all layers (no table on one rank: no ring).
    if (i == 2) {
      input.segment_ids = seg;
      input.ring_tokens = attn.share_tokens(pos, seg, B);
    }
    const size_t w0 = ringattn::test::emulated_host_waits();
    const AttentionOutput o = attn.forward(input);
    const size_t w1 = ringattn::test::emulated_host_waits();
    const AttentionGrads g = attn.backward(input, o, dout);
    const size_t w2 = ringattn::test::emulated_host_waits();
    waits[i][0] = w1 - w0;
    waits[i][1] = w2 - w1;
    CHECK(to_vector(g.dq).size() == size_t(B * Sl * H * D));
  }
  INFO("host waits, forward and backward: pieces 1: " << waits[0][0] << ", " << waits[0][1]
                                                      << "; pieces 4: " << waits[1][0] << ", "
                                                      << waits[1][1]);
  // The segment ids to the host, and the token table's upload and download (RingTokens): no wait
  // per ring step or piece, so the host keeps queueing while the device computes.
  CHECK(waits[0][0] == waits[1][0]);
  CHECK(waits[0][1] == waits[1][1]);
  CHECK(waits[0][0] <= 3);
  CHECK(waits[0][1] <= 3);
  // With the batch's tokens shared (as the model's layers get them), none at all: the host plans
  // and queues every ring step while the device computes.
  CHECK(waits[2][0] == 0);
  CHECK(waits[2][1] == 0);
  // Sharing them: through the device transport two copies wait (up and down); over a host
  // communicator of the same ranks (what the model passes) none, and the same table.
  if (n > 1) {
    AttentionOptions opt;
    opt.impl = AttentionImpl::Ring;
    Attention through_device(opt, *dut.backend, sp.get());
    Attention over_host(opt, *dut.backend, sp.get(), &mesh.axis(Axis::SP));
    // (The first table over the host communicator checks its ranks against sp's, once, through
    // the device transport: not counted.)
    over_host.share_tokens(pos, seg, B);
    const size_t w0 = ringattn::test::emulated_host_waits();
    const auto a = through_device.share_tokens(pos, seg, B);
    const size_t w1 = ringattn::test::emulated_host_waits();
    const auto b = over_host.share_tokens(pos, seg, B);
    const size_t w2 = ringattn::test::emulated_host_waits();
    CHECK(w1 - w0 == 2);
    CHECK(w2 - w1 == 0);
    for (int q = 0; q < n; ++q) {
      CHECK(std::equal(a->positions(q), a->positions(q) + Sl, b->positions(q)));
      CHECK(a->segments(q, 0, Sl) == b->segments(q, 0, Sl));
      CHECK(b->positions(q)[0] == q * Sl);
    }
    // Not a host communicator: refused.
    CHECK_THROWS_WITH(Attention(opt, *dut.backend, sp.get(), sp.get()),
                      Catch::Contains("host communicator for token tables"));
  }
}

namespace {

// The device under test, with its n-th attention tile call from fail_call(n) (1-based) raising an
// Error instead of running, as an allocation failing inside a ring step would.
class FailingTiles final : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  void fail_call(int n) { left_ = n; }
  void attention_forward_block(const AttentionTileProblem& p, const AttentionForwardState& st,
                               AttentionTileStats* stats) override {
    count();
    ForwardingBackend::attention_forward_block(p, st, stats);
  }
  void attention_backward_block(const AttentionTileProblem& p, const AttentionBackwardArgs& a,
                                AttentionTileStats* stats) override {
    count();
    ForwardingBackend::attention_backward_block(p, a, stats);
  }

 private:
  void count() {
    if (left_ > 0 && --left_ == 0) RA_FAIL("attention tile step failed (injected)");
  }
  int left_ = 0;
};

}  // namespace

TEST_CASE(
    "a ring step that throws ends its exchanges before their buffers go; the ring is reusable",
    "[device]") {
  const auto dut = device_under_test();
  const int n = world_size(), r = world_rank();
  Mesh mesh(MeshShape{1, 1, n, 1});
  const SpTransports sp(mesh, dut);
  const int64_t B = 1, Sl = 16;
  const int H = 2, D = 8;
  const std::vector<int64_t> pos = contiguous_positions(Sl, r);
  const uint64_t seed = run_seed();
  const AttentionInput in{device_random(seed, {B, Sl, H, D}),
                          device_random(seed + 1, {B, Sl, H, D}),
                          device_random(seed + 2, {B, Sl, H, D}),
                          pos,
                          Tensor(),
                          nullptr};
  const Tensor dout = device_random(seed + 3, {B, Sl, H, D});
  AttentionOptions opt;
  opt.impl = AttentionImpl::Ring;
  opt.q_chunk = opt.k_chunk = 4;
  opt.ring_pieces = 2;
  FailingTiles failing(*dut.backend);
  for (Communicator* transport : sp.all()) {
    INFO("over " << transport->name());
    Attention attn(opt, failing, transport);
    const AttentionOutput ref = attn.forward(in);
    const AttentionGrads ref_g = attn.backward(in, ref, dout);

    // Every rank's first tile step fails: its KV exchange is in flight then (on more than one
    // rank); in the backward, the second fails with this step's dK/dV exchange in flight as well.
    // Each rank then waits for its exchanges, which its neighbours posted, before the buffers are
    // freed; without that the next start() on the same rings would be refused.
    failing.fail_call(1);
    CHECK_THROWS_WITH(attn.forward(in), Catch::Contains("attention tile step failed"));
    const AttentionOutput o = attn.forward(in);
    CHECK(to_vector(o.o) == to_vector(ref.o));
    CHECK(to_vector(o.lse) == to_vector(ref.lse));
    for (int call : {1, 2}) {
      if (call > 1 && n == 1) break;  // one rank: no ring, one tile call
      INFO("the backward's tile step " << call << " fails");
      failing.fail_call(call);
      CHECK_THROWS_WITH(attn.backward(in, o, dout), Catch::Contains("attention tile step failed"));
      const AttentionGrads g = attn.backward(in, o, dout);
      CHECK(to_vector(g.dq) == to_vector(ref_g.dq));
      CHECK(to_vector(g.dk) == to_vector(ref_g.dk));
      CHECK(to_vector(g.dv) == to_vector(ref_g.dv));
    }
  }
}

TEST_CASE("a host communicator for token tables must hold the sp ranks in their order",
          "[device]") {
  const int n = world_size(), r = world_rank();
  if (n != 4) return;  // needs two groups of two
  // sp: {0, 1} and {2, 3}. The host one: {0, 3} and {2, 1}: every rank has the same index in
  // both (0, 1, 0, 1), but the groups differ, which only the gathered world ranks show.
  MPI_Comm sp_comm = MPI_COMM_NULL, host_comm = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, r / 2, r, &sp_comm);
  const int color = (r == 0 || r == 3) ? 0 : 1;
  const int key = (r == 0 || r == 2) ? 0 : 1;
  MPI_Comm_split(MPI_COMM_WORLD, color, key, &host_comm);
  {
    std::unique_ptr<Communicator> sp = make_mpi_communicator(sp_comm);
    std::unique_ptr<Communicator> host = make_mpi_communicator(host_comm);
    REQUIRE(sp->rank() == host->rank());
    AttentionOptions opt;
    opt.impl = AttentionImpl::Ring;
    Attention attn(opt, cpu_backend(), sp.get(), host.get());
    const std::vector<int64_t> pos = {int64_t(2 * sp->rank()), int64_t(2 * sp->rank() + 1)};
    CHECK_THROWS_WITH(attn.share_tokens(pos, Tensor(), 1),
                      Catch::Contains("must be the same ranks in the same order"));
    // The right one (the sp ranks themselves over host memory) passes.
    Attention fine(opt, cpu_backend(), sp.get(), sp.get());
    CHECK(fine.share_tokens(pos, Tensor(), 1)->positions(1)[1] == 3);
  }
  MPI_Comm_free(&sp_comm);
  MPI_Comm_free(&host_comm);
}

namespace {

TrainConfig tiny_config(const std::string& run_dir, AttentionImpl impl) {
  TrainConfig c = test::tiny_train_config(run_dir, impl);
  c.seed = 11;
  c.attention.ring_pieces = 2;  // the pieces' copies run on the device too
  c.train.grad_clip = 0.5;      // small enough that clipping happens
  return c;
}

struct Run {
  std::vector<double> loss, grad_norm;
  EvalResult eval;  // after the steps: forward only, answer counts over the sp ring
  std::vector<std::vector<float>> params;
};

// `steps` steps on `backend` (null: the CPU), optionally resuming first and saving at the end.
// `direct`: device buffers travel over the emulated device's NCCL-like transport instead of host
// staging (emulated device only).
// The device transport of a run: host staging (the mesh's default), the emulated device's
// NCCL-like one, or NCCL (the simulated NCCL on the simulated GPU).
enum class Via { Staged, NcclLike, Nccl };

Run train(const TrainConfig& c, MeshShape shape, Backend* backend, int steps, bool resume = false,
          bool save = false, Via via = Via::Staged) {
  Mesh mesh(shape, MPI_COMM_WORLD, via == Via::Nccl ? Transport::NCCL : Transport::MPI);
  if (via == Via::NcclLike) mesh.set_device_transport(make_emulated_direct_communicator);
  TrainerOptions o;
  o.log_steps = false;
  o.write_metrics = false;
  o.backend = backend;
  Trainer t(c, mesh, o);
  if (resume) REQUIRE(t.resume_latest());
  Run run;
  for (int i = 0; i < steps; ++i) {
    const StepMetrics m = t.train_step();
    run.loss.push_back(m.loss);
    run.grad_norm.push_back(m.grad_norm);
  }
  if (save) t.save();
  run.eval = t.evaluate(c.train.seq_len, 2);
  for (size_t u = 0; u < t.model().units().size(); ++u) {
    const Tensor p = t.model().gather_unit(u);
    CHECK(p.device() == Device::CPU);
    run.params.emplace_back(p.data<float>(), p.data<float>() + p.numel());
  }
  return run;
}

// Parameters within 1e-3 relative plus `atol` everywhere, and plus `typical` for all but 1% of
// them (each unit's own count).
void check_params_close(const std::vector<float>& got, const std::vector<float>& want, double atol,
                        double typical) {
  CHECK(worst_excess(got, want, 1e-3, atol) <= 1.0);
  size_t beyond = 0;
  for (size_t i = 0; i < want.size(); ++i)
    if (std::abs(double(got[i]) - double(want[i])) > 1e-3 * std::abs(double(want[i])) + typical)
      ++beyond;
  INFO(beyond << " of " << want.size() << " parameters beyond 1e-3 relative + " << typical);
  CHECK(beyond <= want.size() / 100);
}

// Bitwise on the emulated device; on a GPU (float32 cuBLAS and kernels, other summation orders)
// losses and norms within `rtol` relative, parameters as check_params_close says.
// AdamW's normalised update turns a change of a tiny gradient into a change of order lr, so a
// parameter near zero cannot be held to a relative bound: float32 runs differ by rounding only
// (atol 1e-2 lr held on the H200). bf16 GEMMs flip operands' roundings wherever the activations
// differ by an ulp, 2^-9 relative changes of gradient terms; where such a term decides the sign
// of a near-zero gradient, AdamW's first steps move that parameter by about lr the other way. So
// bf16 runs (the fused kernels too, which sum in other orders than the CPU's tiles) get rtol 1e-3,
// atol 2 lr everywhere, and all but 1% of each unit's parameters within lr / 4 (seen on the
// emulated fused kernels, 4 steps: at most 1.2 lr, 0.2% beyond lr / 4).
void compare(const Run& dev, const Run& cpu, bool exact, double lr, DType dtype) {
  const bool bf16 = dtype == DType::BF16;
  const double rtol = bf16 ? 1e-3 : 1e-4, atol = bf16 ? 2 * lr : 1e-2 * lr;
  REQUIRE(dev.loss.size() == cpu.loss.size());
  for (size_t i = 0; i < cpu.loss.size(); ++i) {
    INFO("step " << i + 1);
    if (exact) {
      CHECK(dev.loss[i] == cpu.loss[i]);
      CHECK(dev.grad_norm[i] == cpu.grad_norm[i]);
    } else {
      CHECK(dev.loss[i] == Approx(cpu.loss[i]).epsilon(rtol));
      CHECK(dev.grad_norm[i] == Approx(cpu.grad_norm[i]).epsilon(rtol));
    }
  }
  CHECK(dev.eval.answers == cpu.eval.answers);
  if (exact) {
    CHECK(dev.eval.loss == cpu.eval.loss);
    CHECK(dev.eval.token_accuracy == cpu.eval.token_accuracy);
    CHECK(dev.eval.exact_accuracy == cpu.eval.exact_accuracy);
  } else {
    CHECK(dev.eval.loss == Approx(cpu.eval.loss).epsilon(rtol));
  }
  REQUIRE(dev.params.size() == cpu.params.size());
  for (size_t u = 0; u < cpu.params.size(); ++u) {
    INFO("unit " << u);
    if (exact)
      CHECK(bitwise(dev.params[u], cpu.params[u]));
    else
      check_params_close(dev.params[u], cpu.params[u], atol, bf16 ? lr / 4 : atol);
  }
}

}  // namespace

TEST_CASE("training on the device equals training on the CPU", "[device]") {
  const auto dut = device_under_test();
  INFO(dut.backend->name());
  const int n = world_size();
  test::SharedTempDir tmp("device");
  struct Case {
    const char* name;
    AttentionImpl impl;
    MeshShape shape;
    DType dtype = DType::F32;
    Via via = Via::Staged;
    AttentionKernel kernel = AttentionKernel::Tiles;
  };
  std::vector<Case> cases = {
      {"ring over every rank, FSDP over them", AttentionImpl::Ring, {1, 1, n, 1}},
      {"blockwise, FSDP over every rank", AttentionImpl::Blockwise, {1, n, 1, 1}},
      {"bf16 GEMMs (model.dtype = bf16), ring", AttentionImpl::Ring, {1, 1, n, 1}, DType::BF16},
      // The CPU runs its tiles; the device its fused kernels (emulated: their body): a bf16
      // tolerance apart even on the emulated device.
      {"fused attention kernels (attention.kernel = fused), ring",
       AttentionImpl::Ring,
       {1, 1, n, 1},
       DType::BF16,
       Via::Staged,
       AttentionKernel::Fused}};
  if (n >= 2) cases.push_back({"data parallel x FSDP", AttentionImpl::Blockwise, {2, n / 2, 1, 1}});
  // The same three runs over a transport with NCCL's semantics. On the emulated device, the
  // NCCL-like one (no staging, collectives that do not wait for the compute stream) on a stream
  // that defers everything: the model's own synchronisation and the ring's event ordering are all
  // that keeps these runs equal to the CPU's. On the simulated GPU, the NCCL communicator's own
  // code (its streams, events, stream-ordered FSDP collectives and the ring's event ordering) over
  // the simulated NCCL, whose streams run work as late as CUDA allows: a missing event or wait
  // reads stale data there.
  const bool nccl_like = dut.emulated, nccl = !dut.emulated && cuda_simulated();
  if (nccl_like || nccl) {
    const Via via = nccl_like ? Via::NcclLike : Via::Nccl;
    const char* const names[] = {"NCCL-like transport: ring, FSDP over every rank",
                                 "NCCL-like transport: bf16 gathers, ring",
                                 "NCCL-like transport: dp x fsdp x sp",
                                 "NCCL transport: ring, FSDP over every rank",
                                 "NCCL transport: bf16 gathers, ring",
                                 "NCCL transport: dp x fsdp x sp"};
    const char* const* name = names + (nccl_like ? 0 : 3);
    cases.push_back({name[0], AttentionImpl::Ring, {1, 1, n, 1}, DType::F32, via});
    cases.push_back({name[1], AttentionImpl::Ring, {1, 1, n, 1}, DType::BF16, via});
    if (n >= 4) cases.push_back({name[2], AttentionImpl::Ring, {2, n / 4, 2, 1}, DType::F32, via});
  }
  for (const Case& k : cases) {
    INFO(k.name);
    TrainConfig c = tiny_config(tmp.dir, k.impl);
    c.model.dtype = k.dtype;
    c.attention.kernel = k.kernel;
    if (k.dtype == DType::BF16) c.model.hidden_size = 32;  // head_dim 8: CUDA's bf16 alignment
    if (k.kernel == AttentionKernel::Fused) c.model.hidden_size = 64;  // head_dim 16: fragments
    c.train.micro_batches = 2;  // gradient accumulation across micro-batches too
    c.train.batch_size = 8;     // a multiple of dp x fsdp x micro_batches at 4 ranks
    const Run cpu = train(c, k.shape, nullptr, 4);
    const Run dev = train(c, k.shape, dut.backend, 4, false, false, k.via);
    compare(dev, cpu, dut.emulated && k.kernel == AttentionKernel::Tiles, c.optim.lr, k.dtype);
    // Clipping happened, so the device path's norm and scaling were exercised.
    CHECK(cpu.grad_norm.front() > c.train.grad_clip);
  }
}

TEST_CASE("a checkpoint saved from the device resumes on the CPU", "[device]") {
  const auto dut = device_under_test();
  INFO(dut.backend->name());
  const int n = world_size();
  test::SharedTempDir tmp("device");
  const TrainConfig c = tiny_config(tmp.dir, AttentionImpl::Ring);
  const MeshShape shape{1, 1, n, 1};
  const Run straight = train(c, shape, nullptr, 5);
  train(c, shape, dut.backend, 3, /*resume=*/false, /*save=*/true);
  Run resumed = train(c, shape, nullptr, 2, /*resume=*/true);
  // And back: the CPU's checkpoint of step 5 resumes on the device.
  {
    Mesh mesh(shape);
    TrainerOptions o;
    o.log_steps = false;
    o.write_metrics = false;
    Trainer t(c, mesh, o);
    REQUIRE(t.resume_latest());
    for (int i = 0; i < 2; ++i) t.train_step();
    t.save();
  }
  const Run dev_resumed = train(c, shape, dut.backend, 1, /*resume=*/true);
  const Run cpu_resumed = train(c, shape, nullptr, 1, /*resume=*/true);
  if (dut.emulated) {
    CHECK(resumed.loss[1] == straight.loss[4]);
    for (size_t u = 0; u < straight.params.size(); ++u)
      CHECK(bitwise(resumed.params[u], straight.params[u]));
    CHECK(dev_resumed.loss == cpu_resumed.loss);
  } else {
    CHECK(resumed.loss[1] == Approx(straight.loss[4]).epsilon(1e-4));
    CHECK(dev_resumed.loss[0] == Approx(cpu_resumed.loss[0]).epsilon(1e-4));
  }
}

// Before the first step, a plan larger than what the GPU can give is warned of (the constructor
// logs Trainer::device_memory_warning on rank 0): the figures are the plan and the driver's.
TEST_CASE("a memory plan beyond what the GPU has free is warned of", "[device]") {
  const auto dut = device_under_test();
  INFO(dut.backend->name());
  const int n = world_size();
  test::SharedTempDir tmp("device_memory");
  const TrainConfig c = tiny_config(tmp.dir, AttentionImpl::Ring);
  Mesh mesh(MeshShape{1, 1, n, 1});
  TrainerOptions o;
  o.log_steps = false;
  o.write_metrics = false;
  o.backend = dut.backend;
  Trainer t(c, mesh, o);
  // A tiny model on an 80 GiB GPU (or a device without the driver's figures): nothing to say.
  CHECK(t.device_memory_warning().empty());
#ifdef RINGATTN_CUDA_SIM
  if (dut.emulated) return;
  size_t free = 0, total = 0;
  REQUIRE(cudaMemGetInfo(&free, &total) == cudaSuccess);
  const size_t plan = t.memory_estimate_bytes();
  // A GPU that has half the plan free beyond what is allocated now.
  const size_t before = ringattn::sim::set_device_capacity(total - free + plan / 2);
  struct Restore {
    size_t bytes;
    ~Restore() { ringattn::sim::set_device_capacity(bytes); }
  } restore{before};
  const std::string w = t.device_memory_warning();
  CHECK_THAT(w, Catch::Contains("the memory plan needs about " + format_bytes(plan) +
                                " per rank, more than cuda:0") &&
                    Catch::Contains("the first step will probably run out of memory"));
  // And the step itself then ends with the allocator's error and the driver's figures.
  CHECK_THROWS_WITH(t.train_step(),
                    Catch::Contains("out of memory on cuda:0") && Catch::Contains("the GPU has"));
#endif
}
