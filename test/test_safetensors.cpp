#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>

#include "core/safetensors.h"
#include "test_util.h"

using namespace ringattn;
using Catch::Contains;

namespace {

struct TempFile : test::TempPath {
  explicit TempFile(const std::string& tag) : TempPath("st", tag, ".safetensors") {}
};
using test::read_bytes;
using test::write_bytes;

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = char(v >> (8 * i));
  return s;
}

// A hand-built file: length field, header text as given, then `data_bytes` bytes of data.
std::string hand_file(const std::string& header, size_t data_bytes) {
  return le64(header.size()) + header + std::string(data_bytes, '\x5a');
}

// Random non-zero bytes per element, so a reader that drops or shifts data cannot pass by luck.
Tensor random_tensor(const Shape& shape, DType dt, std::mt19937& rng) {
  Tensor t = Tensor::empty(shape, dt);
  auto* p = static_cast<unsigned char*>(t.raw());
  const size_t es = dtype_size(dt);
  for (int64_t i = 0; i < t.numel(); ++i) {
    for (size_t b = 0; b < es; ++b) p[i * es + b] = static_cast<unsigned char>(rng());
    p[i * es] |= 1;
  }
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  Tensor ca = a.contiguous(), cb = b.contiguous();
  return a.nbytes() == 0 || std::memcmp(ca.raw(), cb.raw(), a.nbytes()) == 0;
}

void check_open_fails(const std::string& path, const std::string& header, size_t data_bytes,
                      const std::string& problem) {
  write_bytes(path, hand_file(header, data_bytes));
  CHECK_THROWS_WITH(SafetensorsFile::open(path), Contains(path) && Contains(problem));
}

}  // namespace

TEST_CASE("safetensors round trip of every dtype is bit-exact", "[safetensors]") {
  std::mt19937 rng(1234);
  TempFile f("roundtrip");
  Tensor base = random_tensor({4, 6}, DType::F32, rng);
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"f32", random_tensor({3, 5}, DType::F32, rng)},
      {"bf16", random_tensor({7}, DType::BF16, rng)},
      {"f16", random_tensor({2, 3, 2}, DType::F16, rng)},
      {"i32", random_tensor({5, 1}, DType::I32, rng)},
      {"i64", random_tensor({3}, DType::I64, rng)},
      {"u8", random_tensor({13}, DType::U8, rng)},  // odd size: later tensors are unaligned
      {"scalar", random_tensor({}, DType::F32, rng)},
      {"empty", Tensor::empty({0, 4}, DType::F16)},
      {"strided", base.slice(1, 1, 3)},  // non-contiguous: packed on save
      {"a.name/with spaces ü", random_tensor({2}, DType::I64, rng)},
  };
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"step", "42"}, {"empty", ""}};
  save_safetensors(f.path, tensors, meta);
  CHECK(!std::filesystem::exists(f.path + ".tmp"));

  SafetensorsFile file = SafetensorsFile::open(f.path);
  CHECK(file.path() == f.path);
  CHECK(file.metadata() == meta);
  REQUIRE(file.names().size() == tensors.size());
  uint64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    INFO(name);
    CHECK(file.names()[i] == name);  // written order is kept
    CHECK(file.contains(name));
    const TensorInfo& ti = file.info(name);
    CHECK(ti.dtype == t.dtype());
    CHECK(ti.shape == t.shape());
    CHECK(ti.begin == total);  // packed back to back
    CHECK(ti.nbytes() == t.nbytes());
    total += t.nbytes();
    Tensor back = file.load(name);
    CHECK(back.is_contiguous());
    CHECK(same_bytes(back, t));
  }
  CHECK(!file.contains("missing"));

  // Layout: the data section starts 8-aligned and ends exactly at the end of the file.
  const std::string bytes = read_bytes(f.path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | static_cast<unsigned char>(bytes[i]);
  CHECK(n % 8 == 0);
  CHECK(bytes.size() == 8 + n + total);

  // Saving again replaces the file; copies of an open file keep reading the old one.
  SafetensorsFile copy = file;
  save_safetensors(f.path, {{"only", tensors[0].second}});
  SafetensorsFile again = SafetensorsFile::open(f.path);
  CHECK(again.names() == std::vector<std::string>{"only"});
  CHECK(again.metadata().empty());
  CHECK(same_bytes(again.load("only"), tensors[0].second));
  CHECK(same_bytes(copy.load("u8"), tensors[5].second));

  // No tensors at all is a valid file.
  save_safetensors(f.path, {});
  CHECK(SafetensorsFile::open(f.path).names().empty());
}

TEST_CASE("safetensors load_f32 converts bf16 and f16", "[safetensors]") {
  TempFile f("f32");
  const std::vector<float> values = {
      1.0f, -2.5f, 0.15625f, 3.0e38f, -0.0f, 1.0f / 1024, std::numeric_limits<float>::infinity()};
  Tensor bf = Tensor::empty({int64_t(values.size())}, DType::BF16);
  for (size_t i = 0; i < values.size(); ++i) bf.data<uint16_t>()[i] = f32_to_bf16(values[i]);
  // Hand-checked encodings, so the test does not only trust the converter it exercises.
  CHECK(bf.data<uint16_t>()[0] == 0x3f80);
  CHECK(bf.data<uint16_t>()[1] == 0xc020);
  CHECK(bf.data<uint16_t>()[6] == 0x7f80);

  Tensor hf = Tensor::empty({5}, DType::F16);
  const uint16_t hbits[] = {0x3c00, 0xc100, 0x7bff, 0x0001, 0xfc00};
  const float hvals[] = {1.0f, -2.5f, 65504.0f, 5.9604644775390625e-8f,
                         -std::numeric_limits<float>::infinity()};
  std::memcpy(hf.raw(), hbits, sizeof hbits);

  // Bigger than load_f32's conversion chunk, so the chunk loop runs more than once.
  std::mt19937 rng(7);
  Tensor big = random_tensor({3, 200001}, DType::BF16, rng);
  Tensor ints = Tensor::zeros({2}, DType::I32);
  Tensor f32 = Tensor::zeros({2, 2}, DType::F32);
  f32.data<float>()[3] = 1.5f;
  save_safetensors(f.path, {{"bf", bf},
                            {"hf", hf},
                            {"big", big},
                            {"ints", ints},
                            {"f32", f32},
                            {"none", Tensor::empty({0}, DType::BF16)}});
  SafetensorsFile file = SafetensorsFile::open(f.path);

  Tensor a = file.load_f32("bf");
  REQUIRE(a.dtype() == DType::F32);
  REQUIRE(a.numel() == int64_t(values.size()));
  CHECK(a.data<float>()[0] == 1.0f);
  CHECK(a.data<float>()[1] == -2.5f);
  CHECK(a.data<float>()[2] == 0.15625f);
  CHECK(a.data<float>()[3] == bf16_to_f32(f32_to_bf16(3.0e38f)));
  CHECK(std::signbit(a.data<float>()[4]));
  CHECK(a.data<float>()[5] == 1.0f / 1024);
  CHECK(std::isinf(a.data<float>()[6]));

  Tensor h = file.load_f32("hf");
  for (int i = 0; i < 5; ++i) CHECK(h.data<float>()[i] == hvals[i]);

  Tensor b = file.load_f32("big");
  REQUIRE(b.shape() == big.shape());
  Tensor ref = big.to(DType::F32);
  CHECK(std::memcmp(b.raw(), ref.raw(), ref.nbytes()) == 0);

  CHECK(same_bytes(file.load_f32("f32"), f32));
  CHECK(file.load_f32("none").shape() == Shape{0});
  CHECK_THROWS_WITH(file.load_f32("ints"), Contains(f.path) && Contains("'ints' is I32"));
}

TEST_CASE("safetensors rejects malformed headers with clear errors", "[safetensors]") {
  TempFile f("bad");
  const std::string& p = f.path;
  const std::string ok_entry = R"("dtype": "F32", "shape": [2], "data_offsets": [0, 8])";

  SECTION("file shorter than the length field") {
    for (size_t len : {0, 1, 7}) {
      write_bytes(p, std::string(len, '\x01'));
      CHECK_THROWS_WITH(SafetensorsFile::open(p),
                        Contains(p) && Contains(fmt::format("file is {} bytes, shorter", len)));
    }
  }
  SECTION("header length larger than the file") {
    write_bytes(p, le64(100) + "{}");
    CHECK_THROWS_WITH(
        SafetensorsFile::open(p),
        Contains(p) && Contains("header length 100 bytes is larger than the 2 bytes"));
  }
  SECTION("absurd header length") {
    for (uint64_t len : {uint64_t(1) << 40, ~uint64_t(0), uint64_t(100000001)}) {
      write_bytes(p, le64(len) + "{}");
      CHECK_THROWS_WITH(
          SafetensorsFile::open(p),
          Contains(p) && Contains(fmt::format("header length {} bytes is absurd", len)));
    }
  }
  SECTION("header not JSON or not an object") {
    check_open_fails(p, "{not json", 0, "header is not valid JSON");
    check_open_fails(p, "", 0, "header is not valid JSON");
    check_open_fails(p, "{} trailing", 0, "header is not valid JSON");
    check_open_fails(p, "[1, 2]", 0, "header is a JSON array, expected an object");
    check_open_fails(p, "\"str\"", 0, "header is a JSON string, expected an object");
  }
  SECTION("entries of the wrong shape") {
    check_open_fails(p, R"({"a": 3})", 0, "tensor 'a' is 3, expected an object");
    check_open_fails(p, R"({"a": {"shape": [2], "data_offsets": [0, 8]}})", 8,
                     "tensor 'a' has no \"dtype\"");
    check_open_fails(p, R"({"a": {"dtype": "F32", "data_offsets": [0, 8]}})", 8,
                     "tensor 'a' has no \"shape\"");
    check_open_fails(p, R"({"a": {"dtype": "F32", "shape": [2]}})", 8,
                     "tensor 'a' has no \"data_offsets\"");
    check_open_fails(p, R"({"a": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}})", 8,
                     "\"dtype\" is 5, expected a string");
    check_open_fails(p, R"({"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}})", 8,
                     "\"shape\" is \"2\", expected an array");
    check_open_fails(p, R"({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}})", 8,
                     "\"shape\" must hold integers, found 2.0");
    check_open_fails(p, R"({"a": {"dtype": "F32", "shape": [[2]], "data_offsets": [0, 8]}})", 8,
                     "\"shape\" must hold integers");
    check_open_fails(p, R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": {"b": 0}}})", 8,
                     "\"data_offsets\" is {\"b\":0}, expected an array");
    check_open_fails(p, R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", 8,
                     "\"data_offsets\" is [0], expected [begin, end]");
    check_open_fails(p, R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 8]}})", 8,
                     "expected [begin, end]");
    check_open_fails(p, R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}})", 8,
                     "\"data_offsets\" must hold integers");
    check_open_fails(p, R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 1e1]}})", 8,
                     "\"data_offsets\" must hold integers");
  }
  SECTION("unknown dtype") {
    check_open_fails(p, R"({"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", 8,
                     "tensor 'w' has unknown dtype 'F64' (supported: F32, BF16");
    check_open_fails(p, R"({"w": {"dtype": "f32", "shape": [2], "data_offsets": [0, 8]}})", 8,
                     "unknown dtype 'f32'");
  }
  SECTION("negative dimensions and offsets") {
    check_open_fails(p, R"({"w": {"dtype": "F32", "shape": [-2, 1], "data_offsets": [0, 8]}})", 8,
                     "tensor 'w': negative dimension -2 in \"shape\"");
    check_open_fails(p, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})", 8,
                     "tensor 'w': negative offset -8 in \"data_offsets\"");
  }
  SECTION("offsets out of order or of the wrong size") {
    check_open_fails(p, R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}})", 8,
                     "tensor 'w': data_offsets [8, 0] have begin > end");
    check_open_fails(p, R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 12,
                     "tensor 'w': data_offsets [0, 8] span 8 bytes, but F32[3] needs 3 x 4");
    check_open_fails(p, R"({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 16]}})", 16,
                     "span 16 bytes, but BF16[2, 2] needs 4 x 2");
  }
  SECTION("sizes that overflow") {
    // 2^62 * 4 elements overflows u64; 2^62 I64 elements fit int64 but their bytes do not.
    check_open_fails(
        p, R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}})",
        0, "tensor 'w': shape [4611686018427387904,4] has too many elements");
    check_open_fails(
        p, R"({"w": {"dtype": "U8", "shape": [18446744073709551615], "data_offsets": [0, 0]}})", 0,
        "has too many elements");
    check_open_fails(p,
                     R"({"w": {"dtype": "I64", "shape": [4611686018427387904], )"
                     R"("data_offsets": [0, 0]}})",
                     0, "span 0 bytes, but I64[4611686018427387904] needs 4611686018427387904 x 8");
    check_open_fails(p,
                     R"({"w": {"dtype": "F32", "shape": [1], )"
                     R"("data_offsets": [18446744073709551612, 18446744073709551615]}})",
                     0, "span 3 bytes");
    check_open_fails(p,
                     R"({"w": {"dtype": "F32", "shape": [1], )"
                     R"("data_offsets": [18446744073709551611, 18446744073709551615]}})",
                     0, "go beyond the data section of 0 bytes");
    // A zero dimension makes the tensor empty whatever the others say, but they must stay sane.
    check_open_fails(p,
                     R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 0], )"
                     R"("data_offsets": [0, 0]}})",
                     0, "too many elements");
  }
  SECTION("offsets beyond the data section") {
    check_open_fails(p, "{\"w\": {" + ok_entry + "}}", 7,
                     "tensor 'w': data_offsets [0, 8] go beyond the data section of 7 bytes");
  }
  SECTION("overlapping tensors") {
    check_open_fails(p,
                     R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                     R"( "b": {"dtype": "U8", "shape": [4], "data_offsets": [6, 10]}})",
                     16, "tensors 'a' [0, 8) and 'b' [6, 10) overlap");
    check_open_fails(p,
                     R"({"b": {"dtype": "U8", "shape": [8], "data_offsets": [8, 16]},)"
                     R"( "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
                     16, "tensors 'a' [0, 16) and 'b' [8, 16) overlap");
  }
  SECTION("duplicate names") {
    check_open_fails(p, "{\"w\": {" + ok_entry + "}, \"w\": {" + ok_entry + "}}", 8,
                     "duplicate tensor name 'w'");
    check_open_fails(p,
                     R"({"w": {"dtype": "F32", "dtype": "U8", "shape": [2], )"
                     R"("data_offsets": [0, 8]}})",
                     8, "duplicate key 'dtype'");
  }
  SECTION("bad metadata") {
    check_open_fails(p, R"({"__metadata__": ["a"]})", 0,
                     "\"__metadata__\" is [\"a\"], expected an object of strings");
    check_open_fails(p, R"({"__metadata__": {"step": 3}})", 0,
                     "\"__metadata__\" value of 'step' is 3, expected a string");
  }
  SECTION("not a file") {
    const std::string dir = p + ".dir";
    std::filesystem::create_directory(dir);
    CHECK_THROWS_WITH(SafetensorsFile::open(dir),
                      Contains(dir) && Contains("is a directory, not a file"));
    std::filesystem::remove(dir);
    CHECK_THROWS_WITH(SafetensorsFile::open(p + ".missing"),
                      Contains(p + ".missing") && Contains("cannot open"));
  }
  SECTION("missing tensor lists what is there") {
    std::vector<std::pair<std::string, Tensor>> ts;
    for (int i = 0; i < 8; ++i)
      ts.push_back({fmt::format("t{}", i), Tensor::zeros({1}, DType::U8)});
    save_safetensors(p, ts);
    SafetensorsFile file = SafetensorsFile::open(p);
    CHECK_THROWS_WITH(file.load("nope"), Contains(p) && Contains("no tensor named 'nope'") &&
                                             Contains("'t0', 't1', 't2', 't3', 't4' and 3 more"));
    CHECK_THROWS_WITH(file.info("nope"), Contains("no tensor named 'nope'"));
    CHECK_THROWS_WITH(file.load_f32("nope"), Contains("no tensor named 'nope'"));
    save_safetensors(p, {});
    CHECK_THROWS_WITH(SafetensorsFile::open(p).load("x"), Contains("(available: none)"));
  }
  SECTION("accepted variations") {
    // Gaps, trailing bytes, unpadded headers and unknown entry fields are harmless: accept them.
    write_bytes(p, hand_file(R"({"a": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6], )"
                             R"("extra": 1}, "e": {"dtype": "F32", "shape": [0, 3], )"
                             R"("data_offsets": [5, 5]}})",
                             10));
    SafetensorsFile file = SafetensorsFile::open(p);
    CHECK(file.names() == std::vector<std::string>{"a", "e"});
    Tensor a = file.load("a");
    CHECK(a.data<uint8_t>()[0] == 0x5a);
    CHECK(file.load("e").shape() == Shape{0, 3});
  }
}

TEST_CASE("safetensors writer rejects bad input", "[safetensors]") {
  TempFile f("badwrite");
  Tensor t = Tensor::zeros({2}, DType::F32);
  CHECK_THROWS_WITH(save_safetensors(f.path, {{"a", t}, {"a", t}}),
                    Contains(f.path) && Contains("duplicate tensor name 'a'"));
  CHECK_THROWS_WITH(save_safetensors(f.path, {{"__metadata__", t}}),
                    Contains(f.path) && Contains("'__metadata__' is reserved"));
  CHECK_THROWS_WITH(save_safetensors(f.path, {{"u", Tensor()}}),
                    Contains(f.path) && Contains("tensor 'u' is undefined"));
  CHECK_THROWS_WITH(save_safetensors(f.path, {{std::string("bad\xff"), t}}),
                    Contains(f.path) && Contains("must be UTF-8"));
  CHECK_THROWS_WITH(save_safetensors(f.path + ".nodir/x", {{"a", t}}),
                    Contains(f.path + ".nodir/x") && Contains("cannot create"));
  CHECK(!std::filesystem::exists(f.path));
  CHECK(!std::filesystem::exists(f.path + ".tmp"));

  // A failed save leaves an existing file untouched.
  save_safetensors(f.path, {{"keep", t}});
  const std::string before = read_bytes(f.path);
  CHECK_THROWS_AS(save_safetensors(f.path, {{"a", t}, {"a", t}}), Error);
  CHECK(read_bytes(f.path) == before);
}

TEST_CASE("safetensors truncated or corrupted files never crash", "[safetensors]") {
  std::mt19937 rng(99);
  TempFile good("good"), bad("cut");
  save_safetensors(good.path,
                   {{"x", random_tensor({3, 4}, DType::F32, rng)},
                    {"y", random_tensor({5}, DType::BF16, rng)},
                    {"z", random_tensor({3}, DType::U8, rng)}},
                   {{"k", "v"}});
  const std::string bytes = read_bytes(good.path);

  // Every proper prefix lacks part of the last tensor, so every cut must be reported.
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    INFO("cut at " << cut << " of " << bytes.size());
    write_bytes(bad.path, bytes.substr(0, cut));
    CHECK_THROWS_WITH(SafetensorsFile::open(bad.path), Contains(bad.path));
  }

  // Random byte damage: either a clear Error, or a file whose every tensor then loads.
  int opened = 0;
  for (int iter = 0; iter < 400; ++iter) {
    std::string damaged = bytes;
    const int flips = 1 + int(rng() % 3);
    for (int k = 0; k < flips; ++k) {
      // Mostly in the length field and header, where the parser is exercised.
      const size_t limit = (rng() % 4 == 0) ? damaged.size() : std::min<size_t>(damaged.size(), 90);
      damaged[rng() % limit] = char(rng());
    }
    write_bytes(bad.path, damaged);
    try {
      SafetensorsFile file = SafetensorsFile::open(bad.path);
      ++opened;
      for (const std::string& name : file.names()) {
        Tensor t = file.load(name);
        CHECK(uint64_t(t.nbytes()) == file.info(name).nbytes());
      }
    } catch (const Error& e) {
      CHECK_THAT(e.what(), Contains(bad.path));
    }
  }
  CHECK(opened > 0);  // damage in the data section alone still reads
}
