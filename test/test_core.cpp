#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "core/allocator.h"
#include "core/tensor.h"
#include "core/tensor_compare.h"

using namespace ringattn;

TEST_CASE("tensor views share storage", "[core]") {
  Tensor t = Tensor::zeros({2, 3, 4}, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = float(i);
  Tensor s = t.slice(1, 1, 2);
  CHECK(!s.is_contiguous());
  Tensor c = s.contiguous();
  REQUIRE(c.shape() == Shape{2, 2, 4});
  CHECK(c.data<float>()[0] == 4.0f);
  CHECK(c.data<float>()[8] == 16.0f);
}

namespace {

// A test that fails halfway must not leave a memory limit behind for the tests after it.
struct LimitGuard {
  Allocator& a;
  ~LimitGuard() { a.set_limit(0); }
};

Tensor iota(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = float(i);
  return t;
}

uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Half values computed from the definition, independent of the bit tricks in dtype.cpp.
double half_value(uint16_t h) {
  const int exp = (h >> 10) & 0x1f;
  const int man = h & 0x3ff;
  const double mag = exp == 0 ? std::ldexp(man, -24) : std::ldexp(1024 + man, exp - 25);
  return (h & 0x8000) ? -mag : mag;
}

// Nearest half to a finite x, ties to even, by search over the ordered positive encodings. The
// encoding 0x7c00 stands for 65536 here: IEEE rounds as if the exponent were unbounded, and a
// result that rounds up past 65504 is infinity.
uint16_t reference_f32_to_f16(float x) {
  const double ax = std::fabs(double(x));
  auto value = [](uint32_t h) { return h == 0x7c00 ? 65536.0 : half_value(uint16_t(h)); };
  uint32_t lo = 0, hi = 0x7c00;  // value(lo) <= ax < value(hi) unless ax >= 65536
  if (ax >= 65536.0) {
    lo = hi = 0x7c00;
  } else {
    while (hi - lo > 1) {
      const uint32_t mid = (lo + hi) / 2;
      (value(mid) <= ax ? lo : hi) = mid;
    }
    const double dl = ax - value(lo), dh = value(hi) - ax;
    if (dh < dl || (dh == dl && (hi & 1) == 0)) lo = hi;
  }
  return uint16_t((std::signbit(x) ? 0x8000 : 0) | lo);
}

}  // namespace

TEST_CASE("allocator counts live and peak bytes", "[core]") {
  Allocator& a = allocator_for(Device::CPU);
  const size_t live0 = a.live_bytes();
  a.reset_peak();
  CHECK(a.peak_bytes() == live0);
  {
    Tensor t = Tensor::empty({1000}, DType::F32);
    CHECK(a.live_bytes() == live0 + 4000);
    {
      Tensor u = Tensor::empty({10, 10}, DType::BF16);
      Tensor v = u.slice(0, 2, 3);  // views allocate nothing
      CHECK(a.live_bytes() == live0 + 4200);
    }
    CHECK(a.live_bytes() == live0 + 4000);
    CHECK(a.peak_bytes() == live0 + 4200);
    Tensor copy = t;  // shares storage
    CHECK(a.live_bytes() == live0 + 4000);
  }
  CHECK(a.live_bytes() == live0);
  CHECK(a.peak_bytes() == live0 + 4200);
  a.reset_peak();
  CHECK(a.peak_bytes() == live0);
  { Tensor z = Tensor::empty({0, 5}, DType::F32); }  // empty tensors cost nothing
  CHECK(a.peak_bytes() == live0);
}

TEST_CASE("allocator says what its peak is made of", "[core]") {
  Allocator& a = allocator_for(Device::CPU);
  Tensor before = Tensor::empty({256}, DType::F32, Device::CPU, "from before");  // 1024 bytes
  a.track_peak_composition(true);
  const size_t live0 = a.live_bytes();
  {
    Tensor l0 = Tensor::empty({100}, DType::F32, Device::CPU, "layer.0 full params");
    Tensor l12 = Tensor::empty({150}, DType::F32, Device::CPU, "layer.12 full params");
    Tensor w = Tensor::empty({50}, DType::BF16, Device::CPU, "linear weight (bf16)");
    Tensor gone = Tensor::empty({20}, DType::F32, Device::CPU, "freed before the peak");
    gone = Tensor();
    Tensor peak = Tensor::empty({30}, DType::F32, Device::CPU, "");  // the peak: 1220 bytes
  }
  Tensor later = Tensor::empty({1}, DType::F32, Device::CPU, "after the peak");  // no new peak
  const std::vector<Allocator::PeakPart> parts = a.peak_composition();
  a.track_peak_composition(false);
  CHECK(a.peak_composition().empty());
  auto part = [&](const std::string& what) {
    for (const Allocator::PeakPart& p : parts)
      if (p.what == what) return p;
    return Allocator::PeakPart{"(absent)", 0, 0};
  };
  CHECK(parts.size() == 4);
  CHECK(part("layer.N full params").bytes == 1000);  // digits after a dot folded: every layer's
  CHECK(part("layer.N full params").blocks == 2);
  CHECK(part("linear weight (bf16)").bytes == 100);  // a word's digits are kept
  CHECK(part("(unnamed)").bytes == 120);
  CHECK(part("(allocated before tracking started)").bytes == live0);  // `before` and the rest
  CHECK(live0 >= 1024);
  CHECK(part("freed before the peak").bytes == 0);
  CHECK(part("after the peak").bytes == 0);
  for (size_t i = 1; i < parts.size(); ++i) CHECK(parts[i - 1].bytes >= parts[i].bytes);
}

TEST_CASE("allocator memory limit", "[core]") {
  Allocator& a = allocator_for(Device::CPU);
  LimitGuard guard{a};
  const size_t live0 = a.live_bytes();
  const size_t limit = live0 + 10000;
  a.set_limit(limit);
  CHECK(a.limit() == limit);
  Tensor fits = Tensor::empty({2000}, DType::F32, Device::CPU, "fits");
  const size_t live1 = a.live_bytes();
  CHECK(live1 == live0 + 8000);
  CHECK_THROWS_WITH(
      Tensor::empty({1000}, DType::F32, Device::CPU, "attention scores"),
      Catch::Contains("memory limit exceeded on cpu") && Catch::Contains("'attention scores'") &&
          Catch::Contains(format_bytes(4000)) && Catch::Contains(format_bytes(limit)) &&
          Catch::Contains(format_bytes(live1) + " live"));
  CHECK(a.live_bytes() == live1);  // the failed request left no trace
  // Sizes near SIZE_MAX must not wrap around the check.
  CHECK_THROWS_AS(a.allocate(~size_t(0), "huge"), Error);
  CHECK_THROWS_AS(a.allocate(~size_t(0) - 100, "huge"), Error);
  CHECK(a.live_bytes() == live1);
  Tensor exact = Tensor::empty({2000}, DType::U8, Device::CPU, "exactly at the limit");
  CHECK(a.live_bytes() == limit);
  a.set_limit(0);
  CHECK(a.limit() == 0);
  Tensor more = Tensor::empty({1000}, DType::F32);  // no limit any more
  CHECK(a.live_bytes() == limit + 4000);
}

TEST_CASE("allocator rejects impossible sizes without a limit", "[core]") {
  Allocator& a = allocator_for(Device::CPU);
  const size_t live0 = a.live_bytes();
  CHECK_THROWS_WITH(a.allocate(~size_t(0), "huge"), Catch::Contains("'huge'"));
  CHECK_THROWS_WITH(a.allocate(~size_t(0) - 32, "huge"), Catch::Contains("'huge'"));
  CHECK(a.live_bytes() == live0);
  // Element counts whose byte size does not fit: an Error, never a tiny buffer.
  CHECK_THROWS_AS(Tensor::empty({int64_t(1) << 40, int64_t(1) << 40}, DType::F32), Error);
  CHECK_THROWS_AS(Tensor::empty({int64_t(1) << 62}, DType::F32), Error);
  CHECK_THROWS_AS(Tensor::empty({int64_t(1) << 62, int64_t(1) << 62, 0}, DType::F32), Error);
  CHECK(a.live_bytes() == live0);
}

TEST_CASE("tensor view, slice and select", "[core]") {
  Tensor t = iota({2, 3, 4});
  CHECK(t.is_contiguous());
  CHECK(t.strides() == Shape{12, 4, 1});
  CHECK(t.str() == "F32[2, 3, 4] cpu");
  CHECK(t.dim(-1) == 4);

  Tensor v = t.view({6, -1});
  CHECK(v.shape() == Shape{6, 4});
  CHECK(v.raw() == t.raw());
  v.data<float>()[5] = 100.0f;  // shares storage
  CHECK(t.data<float>()[5] == 100.0f);
  t.data<float>()[5] = 5.0f;
  CHECK(t.view({24}).shape() == Shape{24});
  CHECK_THROWS_AS(t.view({5, -1}), Error);
  CHECK_THROWS_AS(t.view({-1, -1}), Error);
  CHECK_THROWS_AS(t.view({25}), Error);
  CHECK_THROWS_AS(t.view({-2, -12}), Error);  // negative sizes are not "infer"
  CHECK_THROWS_AS(t.slice(1, 1, 2).view({16}), Error);

  Tensor s = t.slice(2, 1, 2);  // [2, 3, 2], strides kept
  CHECK(s.shape() == Shape{2, 3, 2});
  CHECK(s.strides() == Shape{12, 4, 1});
  CHECK(!s.is_contiguous());
  CHECK(s.data<float>()[0] == 1.0f);
  CHECK_THROWS_AS(t.slice(2, 3, 2), Error);
  CHECK_THROWS_AS(t.slice(3, 0, 1), Error);
  CHECK_THROWS_AS(t.slice(0, -1, 1), Error);
  CHECK(t.slice(-1, 0, 0).numel() == 0);

  Tensor row = t.select(0, 1);  // [3, 4] starting at element 12
  CHECK(row.shape() == Shape{3, 4});
  CHECK(row.is_contiguous());
  CHECK(row.data<float>()[0] == 12.0f);
  Tensor col = t.select(-1, 3);  // [2, 3], stride 4 in the last dimension
  CHECK(col.shape() == Shape{2, 3});
  CHECK(!col.is_contiguous());
  Tensor cc = col.contiguous();
  const float want[] = {3, 7, 11, 15, 19, 23};
  for (int i = 0; i < 6; ++i) CHECK(cc.data<float>()[i] == want[i]);
  Tensor scalar = t.select(0, 1).select(0, 2).select(0, 3);
  CHECK(scalar.ndim() == 0);
  CHECK(scalar.numel() == 1);
  CHECK(scalar.data<float>()[0] == 23.0f);
  CHECK(scalar.clone().data<float>()[0] == 23.0f);
  CHECK_THROWS_AS(t.select(0, 2), Error);
}

TEST_CASE("tensor contiguous, clone, to and copy_from", "[core]") {
  Tensor t = iota({3, 4});
  CHECK(t.contiguous().raw() == t.raw());  // already packed: no copy
  Tensor c = t.clone();
  CHECK(c.raw() != t.raw());
  c.data<float>()[0] = -1.0f;
  CHECK(t.data<float>()[0] == 0.0f);

  Tensor s = t.slice(0, 1, 2).slice(1, 1, 2);  // elements 5, 6, 9, 10
  Tensor sc = s.clone();
  CHECK(sc.is_contiguous());
  const float want[] = {5, 6, 9, 10};
  for (int i = 0; i < 4; ++i) CHECK(sc.data<float>()[i] == want[i]);

  // to(): float conversions through the strided view; same dtype copies.
  Tensor b = s.to(DType::BF16);
  CHECK(b.dtype() == DType::BF16);
  CHECK(b.shape() == Shape{2, 2});
  for (int i = 0; i < 4; ++i) CHECK(bf16_to_f32(b.data<uint16_t>()[i]) == want[i]);
  Tensor h = b.to(DType::F16);
  for (int i = 0; i < 4; ++i) CHECK(f16_to_f32(h.data<uint16_t>()[i]) == want[i]);
  Tensor back = h.to(DType::F32);
  for (int i = 0; i < 4; ++i) CHECK(back.data<float>()[i] == want[i]);
  Tensor same = t.to(DType::F32);
  CHECK(same.raw() != t.raw());
  CHECK_THROWS_AS(Tensor::zeros({2}, DType::I32).to(DType::F32), Error);

  // copy_from into a strided destination, converting dtype on the way.
  Tensor dst = Tensor::zeros({3, 4}, DType::F32);
  Tensor src = Tensor::empty({3, 2}, DType::BF16);
  for (int i = 0; i < 6; ++i) src.data<uint16_t>()[i] = f32_to_bf16(float(i + 1));
  dst.slice(1, 2, 2).copy_from(src);
  const float want_dst[] = {0, 0, 1, 2, 0, 0, 3, 4, 0, 0, 5, 6};
  for (int i = 0; i < 12; ++i) CHECK(dst.data<float>()[i] == want_dst[i]);
  // Strided source into a packed destination.
  Tensor packed = Tensor::zeros({2, 2}, DType::F32);
  packed.copy_from(s);
  for (int i = 0; i < 4; ++i) CHECK(packed.data<float>()[i] == want[i]);
  CHECK_THROWS_AS(packed.copy_from(t), Error);
  // Empty strided views copy nothing (and must not divide by a zero row length).
  Tensor e = dst.slice(1, 1, 0);
  e.copy_from(Tensor::zeros({3, 0}, DType::F32));
  e.fill_zero();
  CHECK(dst.data<float>()[2] == 1.0f);

  Tensor z = iota({2, 3});
  z.slice(1, 1, 1).fill_zero();
  const float want_z[] = {0, 0, 2, 3, 0, 5};
  for (int i = 0; i < 6; ++i) CHECK(z.data<float>()[i] == want_z[i]);
  CHECK(shape_str({}) == "[]");
  CHECK(Tensor().str() == "undefined tensor");
  CHECK_THROWS_AS(Tensor().raw(), Error);
  CHECK_THROWS_AS(Tensor::empty({2, -1}, DType::F32), Error);
}

TEST_CASE("tensor data<T>() refuses a type that is not its dtype's", "[core]") {
  const Tensor f = Tensor::zeros({3}, DType::F32), h = Tensor::zeros({3}, DType::BF16),
               i = Tensor::zeros({3}, DType::I32), u = Tensor::zeros({24}, DType::U8);
  CHECK(f.data<float>() == f.raw());
  CHECK(f.data<const float>() == f.raw());
  CHECK(h.data<uint16_t>() == h.raw());
  CHECK(i.data<int32_t>() == i.raw());
  CHECK(f.data<uint8_t>() == f.raw());  // bytes view anything
  CHECK(u.data<double>() == u.raw());   // a U8 tensor is a raw byte buffer
  CHECK(u.data<float>() == u.raw());
  CHECK_THROWS_WITH(h.data<float>(), Catch::Contains("BF16[3]") && Catch::Contains("as float") &&
                                         Catch::Contains("BF16 elements are read as uint16_t"));
  CHECK_THROWS_AS(f.data<uint16_t>(), Error);
  CHECK_THROWS_AS(f.data<int32_t>(), Error);
  CHECK_THROWS_AS(i.data<float>(), Error);
  CHECK_THROWS_WITH(f.data<double>(), Catch::Contains("as double"));
}

TEST_CASE("dtype names and sizes", "[core]") {
  for (DType t : {DType::F32, DType::BF16, DType::F16, DType::I32, DType::I64, DType::U8})
    CHECK(dtype_from_name(dtype_name(t)) == t);
  CHECK(!dtype_from_name("F64").has_value());
  CHECK(dtype_size(DType::I64) == 8);
  CHECK(dtype_size(DType::BF16) == 2);
  CHECK(dtype_size(DType::U8) == 1);
}

TEST_CASE("bf16 conversion rounds to nearest even", "[core]") {
  struct Case {
    uint32_t f32;
    uint16_t bf16;
  };
  const Case cases[] = {
      {0x3f800000, 0x3f80},                        // 1.0 exact
      {0x3f808000, 0x3f80},                        // tie, even below
      {0x3f818000, 0x3f82},                        // tie, even above
      {0x3f808001, 0x3f81},                        // just above the tie
      {0x3f807fff, 0x3f80},                        // just below the tie
      {0xbf818000, 0xbf82},                        // negative tie
      {0x7f7fffff, 0x7f80},                        // largest float rounds to inf
      {0x7f7f7fff, 0x7f7f}, {0x7f800000, 0x7f80},  // inf
      {0xff800000, 0xff80},                        // -inf
      {0x00008000, 0x0000},                        // subnormal tie to even (zero)
      {0x00018000, 0x0002},                        // subnormal tie to even (up)
      {0x80000000, 0x8000},                        // -0
  };
  for (const Case& c : cases) {
    INFO("f32 bits " << std::hex << c.f32);
    CHECK(f32_to_bf16(bits_f32(c.f32)) == c.bf16);
  }
  // NaNs stay NaN, including signalling ones whose payload sits only in the low bits (naive
  // rounding would carry them into infinity).
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu, 0x7f80ffffu}) {
    INFO("f32 bits " << std::hex << nan);
    CHECK(std::isnan(bf16_to_f32(f32_to_bf16(bits_f32(nan)))));
  }
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = bf16_to_f32(uint16_t(h));
    CHECK(f32_bits(f) == h << 16);
    if (std::isnan(f)) {
      CHECK(std::isnan(bf16_to_f32(f32_to_bf16(f))));
    } else if (f32_to_bf16(f) != h) {
      FAIL_CHECK("bf16 " << h << " does not round-trip");
    }
  }
}

TEST_CASE("convert_floats' bf16 loops equal the scalar conversions bit for bit", "[core]") {
  // convert_floats has loops of its own for F32 <-> BF16 (vectorised); they must agree with
  // f32_to_bf16 / bf16_to_f32 everywhere: every bf16 value, and float32 bit patterns covering
  // ties, NaNs, infinities and subnormals (an odd count, so a vector loop's tail runs too).
  std::vector<uint16_t> all(0x10000);
  for (uint32_t h = 0; h < 0x10000; ++h) all[h] = uint16_t(h);
  std::vector<float> wide(all.size());
  convert_floats(all.data(), DType::BF16, wide.data(), DType::F32, all.size());
  int bad = 0;
  for (uint32_t h = 0; h < 0x10000; ++h) bad += f32_bits(wide[h]) != f32_bits(bf16_to_f32(all[h]));
  CHECK(bad == 0);
  std::mt19937 rng(7);
  std::vector<float> f;
  for (uint32_t b : {0x3f808000u, 0x3f818000u, 0x7f7fffffu, 0x7f800001u, 0xff800001u, 0x7fc00000u,
                     0x00018000u, 0x80000000u, 0x7f800000u})
    f.push_back(bits_f32(b));
  while (f.size() < 100001) f.push_back(bits_f32(uint32_t(rng())));
  std::vector<uint16_t> narrow(f.size());
  convert_floats(f.data(), DType::F32, narrow.data(), DType::BF16, f.size());
  bad = 0;
  for (size_t i = 0; i < f.size(); ++i) bad += narrow[i] != f32_to_bf16(f[i]);
  CHECK(bad == 0);
}

TEST_CASE("f16 conversion matches an exact reference", "[core]") {
  // Every half: the value is the definition's, and it converts back unchanged (NaN stays NaN).
  int bad = 0;
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    const bool is_nan = ((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff) != 0;
    const bool is_inf = ((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff) == 0;
    bool ok;
    if (is_nan) {
      ok = std::isnan(f) && std::isnan(f16_to_f32(f32_to_f16(f)));
    } else if (is_inf) {
      ok = std::isinf(f) && std::signbit(f) == bool(h & 0x8000) && f32_to_f16(f) == h;
    } else {
      ok = double(f) == half_value(uint16_t(h)) && std::signbit(f) == bool(h & 0x8000) &&
           f32_to_f16(f) == h;
    }
    if (!ok && ++bad <= 10) FAIL_CHECK("half " << std::hex << h << " -> " << f);
  }
  CHECK(bad == 0);

  // Rounding: every midpoint between neighbouring halves, and the floats one ulp either side of
  // it, across normals, subnormals and the overflow edge; plus random floats.
  auto check_one = [&](float x) {
    const uint16_t got = f32_to_f16(x), want = reference_f32_to_f16(x);
    if (got != want && ++bad <= 10)
      FAIL_CHECK("f32 " << std::hex << f32_bits(x) << ": got " << got << " want " << want);
  };
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const double next = h == 0x7bff ? 65536.0 : half_value(uint16_t(h + 1));
    const float mid = float((half_value(uint16_t(h)) + next) / 2);  // exact in float
    for (float x : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e30f)}) {
      check_one(x);
      check_one(-x);
    }
  }
  std::mt19937 rng(5);
  for (int i = 0; i < 200000; ++i) {
    const float x = bits_f32(uint32_t(rng()));
    if (!std::isnan(x)) check_one(x);
  }
  for (float x : {0.0f, 1e-30f, 1e-8f, 65504.0f, 65519.99f, 65520.0f, 1e10f,
                  std::numeric_limits<float>::infinity(), std::numeric_limits<float>::denorm_min()})
    check_one(x);
  CHECK(bad == 0);
  CHECK(f32_to_f16(65520.0f) == 0x7c00);
  CHECK(f32_to_f16(65519.0f) == 0x7bff);
  CHECK(f32_to_f16(std::ldexp(1.0f, -25)) == 0x0000);  // tie between 0 and the smallest subnormal
  CHECK(f32_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)) == 0x0001);
  CHECK(f32_to_f16(std::ldexp(3.0f, -25)) == 0x0002);  // tie 1.5 ulp: to even
  CHECK(std::isnan(f16_to_f32(f32_to_f16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST_CASE("tensor comparison: symmetric, and inf or NaN agree only when both are the same inf",
          "[core]") {
  auto t = [](std::vector<float> v) {
    Tensor x = Tensor::empty({int64_t(v.size())}, DType::F32, Device::CPU);
    std::copy(v.begin(), v.end(), x.data<float>());
    return x;
  };
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor ref = t({1.0f, -inf, 3.0f, 0.5f});
  // Agreement: the same -inf (a fully masked row's LSE), finite values within the tolerance.
  TensorDiff d = compare_tensors(ref, t({1.0f, -inf, 3.0001f, 0.5f}));
  CHECK(d.nonfinite == 0);
  CHECK(d.max_abs == Approx(1e-4).epsilon(1e-2));
  CHECK(d.max_ref == Approx(3.0001));
  CHECK(d.within(1e-4));
  CHECK_FALSE(d.within(1e-5));
  // An infinity or a NaN against anything else is a mismatch, in either order, whatever the
  // tolerance (an infinite reference magnitude must not make every difference "small").
  for (const Tensor& bad : {t({inf, -inf, 3.0f, 0.5f}), t({1.0f, inf, 3.0f, 0.5f}),
                            t({1.0f, -inf, nan, 0.5f}), t({1.0f, 2.0f, 3.0f, 0.5f})}) {
    for (const auto& [x, y] : {std::pair{&ref, &bad}, std::pair{&bad, &ref}}) {
      d = compare_tensors(*x, *y);
      CHECK(d.nonfinite == 1);
      CHECK(std::isfinite(d.max_abs));
      CHECK_FALSE(d.within(1e30));
    }
  }
  CHECK_FALSE(compare_tensors(t({nan}), t({nan})).within(1.0));  // NaN is never a result
  // Symmetric: the larger magnitude of the two sets the relative scale.
  const TensorDiff ab = compare_tensors(t({10.0f, 0.0f}), t({10.5f, 0.0f}));
  const TensorDiff ba = compare_tensors(t({10.5f, 0.0f}), t({10.0f, 0.0f}));
  CHECK(ab.max_abs == ba.max_abs);
  CHECK(ab.max_ref == ba.max_ref);
  CHECK(ab.max_ref == 10.5);
  CHECK(ab.within(0.51 / 10.5));
  CHECK_FALSE(ab.within(0.49 / 10.5));
  CHECK_THROWS_WITH(compare_tensors(t({1.0f}), t({1.0f, 2.0f})), Catch::Contains("one shape"));
}
