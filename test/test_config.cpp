// The configuration: the generic schema layer (core/json_config), the trainer's schema and
// TrainConfig (model/train_config), every preset in configs/, and each validation rule. All pure
// functions; every rank runs them alike, with temporary files named by process id.
#include <unistd.h>
#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "comm/agreed_config.h"
#include "core/error.h"
#include "core/json_config.h"
#include "model/data/make_source.h"
#include "model/train_config.h"
#include "model/trainer.h"

using namespace ringattn;
using Catch::Contains;
namespace fs = std::filesystem;

namespace {

// test/data -> the source tree's top (lexically: test/data need not exist).
fs::path source_dir() {
  return fs::path(RINGATTN_TEST_DATA_DIR).parent_path().parent_path();
}

// A config file that removes itself; the name is unique per process, so ranks do not collide.
class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    static int counter = 0;
    path_ = (fs::temp_directory_path() /
             fmt::format("ringattn_config_{}_{}.json", ::getpid(), counter++))
                .string();
    std::ofstream(path_, std::ios::binary) << text;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

JsonConfig from_text(const std::string& text) {
  JsonConfig json(train_schema());
  json.load_text(text, "test.json");
  return json;
}

std::string load_error(const std::string& text) {
  return error_of([&] { from_text(text); });
}

std::string set_error(const std::string& assignment) {
  return error_of([&] { load_train_json("", {assignment}); });
}

// A small valid config on `world` ranks, changed by `edit`, validated: the error or "(no error)".
std::string validate_error(const std::function<void(TrainConfig&)>& edit, int world = 4) {
  TrainConfig c;
  c.train.seq_len = 1024;
  c.mesh.sp = -1;
  edit(c);
  return error_of([&] { validate(c, world); });
}

}  // namespace

TEST_CASE("defaults: every key has one, and TrainConfig{} holds the same values", "[config]") {
  const JsonConfig json(train_schema());
  const TrainConfig c = to_train_config(json);  // also checks every key is read
  CHECK(c == TrainConfig{});
  CHECK(json.get_int("train.seq_len") == 2048);
  CHECK(json.get_string("attention.impl") == "ring");
  CHECK(json.get_string("attention.layout") == "zigzag");
  CHECK(json.get_int("mesh.sp") == -1);
  CHECK(json.get_float("memory_limit_gb") == 0.0);
  CHECK(json.get_int_list("eval.seq_lens").empty());
  CHECK(json.origin("train.seq_len") == "default");
  CHECK(c.model.kv_heads() == c.model.num_heads);
  CHECK(c.model.head_size() == c.model.hidden_size / c.model.num_heads);
  CHECK(c.eval_seq_lens() == std::vector<int64_t>{c.train.seq_len});
  CHECK(c.memory_limit_bytes() == 0);

  // The dump has every key, nested, in schema order.
  const auto dumped = json.to_json();
  for (const ConfigKey& k : train_schema().keys()) {
    INFO(k.name);
    std::string pointer = "/" + k.name;
    for (char& ch : pointer)
      if (ch == '.') ch = '/';
    CHECK(dumped.contains(nlohmann::ordered_json::json_pointer(pointer)));
  }
  CHECK(dumped.begin().key() == "run_dir");
  // The defaults validate wherever the sequence splits.
  for (int world : {1, 2, 4, 8}) CHECK_NOTHROW(validate(c, world));
}

TEST_CASE("a file sets only the keys it names; --set comes after it", "[config]") {
  TempFile f(R"({"train": {"seq_len": 4096, "steps": 7}, "attention": {"layout": "striped"},
                "optim": {"lr": 1}, "data": {"retrieval": {"key_digits": 5}}})");
  JsonConfig json = load_train_json(f.path(), {"train.steps=9"});
  const TrainConfig c = to_train_config(json);
  CHECK(c.train.seq_len == 4096);
  CHECK(c.train.steps == 9);
  CHECK(c.attention.layout == RingLayout::Striped);
  CHECK(c.optim.lr == 1.0);  // an integer is a valid number
  CHECK(c.data.retrieval.key_digits == 5);
  CHECK(c.train.batch_size == TrainConfig{}.train.batch_size);
  CHECK(json.origin("train.seq_len") == f.path());
  CHECK(json.origin("train.steps") == "--set");
  CHECK(json.origin("train.batch_size") == "default");

  // Dotted names at the top level mean the same as nested objects.
  CHECK(from_text(R"({"train.seq_len": 512})").get_int("train.seq_len") == 512);
}

TEST_CASE("the resolved config round-trips through its JSON dump", "[config]") {
  const JsonConfig json = load_train_json(
      (source_dir() / "configs" / "demo.json").string(),
      {"eval.seq_lens=[2048,4096]", "data.text_files=a.txt,b.txt", "optim.eps=1e-6"});
  TempFile f(json.dump());
  const JsonConfig again = load_train_json(f.path());
  CHECK(again.dump() == json.dump());
  CHECK(to_train_config(again) == to_train_config(json));
}

TEST_CASE("malformed JSON names the file, line and column", "[config]") {
  TempFile f("{\n  \"train\": {\n    \"steps\": 10,\n  }\n}\n");
  const std::string e = error_of([&] { load_train_json(f.path()); });
  CHECK_THAT(e, Contains("malformed JSON in " + f.path()));
  CHECK_THAT(e, Contains("line 4, column 3"));
  CHECK_THAT(e, Contains("unexpected '}'"));

  CHECK_THAT(load_error("{\"seed\": tru}"), Contains("line 1, column"));
  CHECK_THAT(load_error(""), Contains("malformed JSON in test.json at line 1, column 1"));
  CHECK_THAT(load_error("[1, 2]"), Contains("test.json must hold one JSON object"));
  CHECK_THAT(error_of([] { load_train_json("/nonexistent/ringattn.json"); }),
             Contains("cannot open config file '/nonexistent/ringattn.json'"));
}

TEST_CASE("a number beyond a double is malformed JSON, not a crash", "[config]") {
  // Found by the config fuzzer: nlohmann's out_of_range escaped the parser.
  CHECK_THAT(load_error(R"({"optim": {"lr": 3e2048}})"),
             Contains("malformed JSON") && Contains("number overflow"));
  CHECK_THAT(set_error("eval.seq_lens=[3e2048]"), Contains("eval.seq_lens"));
}

TEST_CASE("unknown keys name the key and suggest the nearest valid one", "[config]") {
  TempFile f(R"({"train": {"seq_length": 4096}})");
  CHECK(error_of([&] { load_train_json(f.path()); }) ==
        "unknown key 'train.seq_length' in " + f.path() + "; did you mean 'train.seq_len'?");
  // A misspelt section, the right name in the wrong section, a shortened name, other case.
  CHECK_THAT(load_error(R"({"trian": {"steps": 3}})"), Contains("did you mean 'train.steps'?"));
  CHECK_THAT(load_error(R"({"seq_len": 3})"), Contains("did you mean 'train.seq_len'?"));
  CHECK_THAT(load_error(R"({"model": {"layers": 3}})"),
             Contains("did you mean 'model.num_layers'?"));
  CHECK_THAT(load_error(R"({"Mesh": {"SP": 2}})"), Contains("did you mean 'mesh.sp'?"));
  CHECK_THAT(load_error(R"({"data": {"retrieval": {"num_record": 3}}})"),
             Contains("did you mean 'data.retrieval.num_records'?"));
  // Nothing close: no guess, a pointer to the documentation.
  const std::string far = load_error(R"({"zzzzzzzzzz": 1})");
  CHECK_THAT(far, Contains("unknown key 'zzzzzzzzzz' in test.json"));
  CHECK_THAT(far, !Contains("did you mean"));
  CHECK_THAT(far, Contains("docs/config.md"));
  // A short leaf a few edits from another short leaf is no typo of it.
  CHECK_THAT(load_error(R"({"train": {"foo": {"bar": 1}}})"), !Contains("did you mean"));
  // A section given a value instead of an object.
  CHECK_THAT(load_error(R"({"train": 5})"), Contains("'train' in test.json is a section"));
  CHECK(load_error(R"({"train.steps": 1, "train": {"steps": 2}})") ==
        "train.steps is given twice in test.json");
  // A key repeated within one object, which JSON parsers resolve by dropping one silently: a
  // whole section, or one value.
  CHECK(load_error(R"({"train": {"steps": 3}, "train": {"seq_len": 64}})") ==
        "train is given twice in test.json (one object repeats the key 'train'; JSON keeps only "
        "one)");
  CHECK_THAT(load_error(R"({"data": {"retrieval": {"questions": 1, "questions": 2}}})"),
             Contains("data.retrieval.questions is given twice in test.json"));
  // The same name in two different objects, or in objects inside an array, is no repetition.
  CHECK(load_error(R"({"train": {"steps": 3}, "eval": {"every": 3, "seq_lens": [64]}})") ==
        "(no error)");

  CHECK(set_error("train.seq_length=4") ==
        "unknown key 'train.seq_length' in --set; did you mean 'train.seq_len'?");
  CHECK_THAT(set_error("train=4"), Contains("'train' in --set is a section"));
}

TEST_CASE("edit distance and nearest key", "[config]") {
  CHECK(edit_distance("", "") == 0);
  CHECK(edit_distance("abc", "") == 3);
  CHECK(edit_distance("kitten", "sitting") == 3);
  CHECK(edit_distance("seq_len", "seq_len") == 0);
  CHECK(train_schema().nearest("train.stpes") == "train.steps");
  CHECK(train_schema().nearest("optim.beta_1") == "optim.beta1");
  CHECK(train_schema().nearest("completely.different.thing").empty());
}

TEST_CASE("wrong types name the key, the expected type and the value found", "[config]") {
  CHECK(load_error(R"({"train": {"seq_len": "2048"}})") ==
        R"(train.seq_len in test.json must be an integer, found "2048" (string))");
  CHECK_THAT(load_error(R"({"train": {"seq_len": 2048.5}})"),
             Contains("must be an integer, found 2048.5 (number)"));
  CHECK_THAT(load_error(R"({"optim": {"lr": "fast"}})"),
             Contains("optim.lr in test.json must be a number, found \"fast\" (string)"));
  CHECK_THAT(load_error(R"({"model": {"tie_embeddings": 1}})"),
             Contains("model.tie_embeddings in test.json must be true or false, found 1"));
  CHECK_THAT(load_error(R"({"run_dir": 5})"), Contains("run_dir in test.json must be a string"));
  CHECK_THAT(load_error(R"({"eval": {"seq_lens": 2048}})"),
             Contains("eval.seq_lens in test.json must be a list of integers, found 2048"));
  CHECK_THAT(load_error(R"({"eval": {"seq_lens": [2048, "x"]}})"),
             Contains("eval.seq_lens[1] in test.json must be an integer, found \"x\""));
  CHECK_THAT(load_error(R"({"data": {"text_files": ["a", 3]}})"),
             Contains("data.text_files[1] in test.json must be a string, found 3"));
  CHECK_THAT(load_error(R"({"train": {"seq_len": null}})"), Contains("found null"));
  CHECK_THAT(load_error(R"({"train": {"seq_len": {"a": 1}}})"),
             Contains("train.seq_len in test.json must be an integer"));
  CHECK_THAT(load_error(R"({"seed": 99999999999999999999})"), Contains("seed in test.json"));
}

TEST_CASE("out-of-range values name the key, the value and the range", "[config]") {
  CHECK(load_error(R"({"train": {"seq_len": 0}})") ==
        "train.seq_len = 0 in test.json is out of range: expected value >= 1");
  CHECK_THAT(load_error(R"({"optim": {"beta1": 1.0}})"),
             Contains("optim.beta1 = 1 in test.json is out of range: expected 0 <= value < 1"));
  CHECK_THAT(load_error(R"({"optim": {"eps": 0}})"), Contains("expected value > 0"));
  CHECK_THAT(load_error(R"({"memory_limit_gb": -1})"),
             Contains("memory_limit_gb = -1 in test.json is out of range"));
  CHECK_THAT(load_error(R"({"mesh": {"sp": -2}})"), Contains("expected -1 <= value <= 1048576"));
  CHECK_THAT(load_error(R"({"data": {"retrieval": {"key_digits": 19}}})"),
             Contains("expected 1 <= value <= 18"));
  CHECK_THAT(load_error(R"({"eval": {"seq_lens": [2048, 0]}})"),
             Contains("eval.seq_lens[1] = 0 in test.json is out of range"));
  CHECK_THAT(load_error(R"({"seed": 18446744073709551615})"),
             Contains("does not fit in a 64-bit integer"));
  // Choices: the allowed values, and a guess when the value is a near miss.
  CHECK(
      load_error(R"({"attention": {"impl": "rng"}})") ==
      R"(attention.impl in test.json must be one of vanilla, blockwise, ring, found "rng"; did you mean 'ring'?)");
  const std::string e = load_error(R"({"attention": {"layout": "spiral"}})");
  CHECK_THAT(e, Contains("must be one of contiguous, zigzag, striped"));
  CHECK_THAT(e, !Contains("did you mean"));
}

TEST_CASE("--set parses the value by the key's type", "[config]") {
  const JsonConfig json = load_train_json(
      "", {"train.seq_len=4096", "optim.lr=1e-4", "model.tie_embeddings=true", "run_dir=/tmp/r x",
           "attention.impl=blockwise", "eval.seq_lens=[1024, 2048]", "data.text_files=a.txt, b.txt",
           "mesh.sp=-1", "peak_tflops=3", "data.token_file="});
  CHECK(json.get_int("train.seq_len") == 4096);
  CHECK(json.get_float("optim.lr") == 1e-4);
  CHECK(json.get_bool("model.tie_embeddings"));
  CHECK(json.get_string("run_dir") == "/tmp/r x");  // as written, spaces kept
  CHECK(json.get_string("attention.impl") == "blockwise");
  CHECK(json.get_int_list("eval.seq_lens") == std::vector<int64_t>{1024, 2048});
  CHECK(json.get_string_list("data.text_files") == std::vector<std::string>{"a.txt", "b.txt"});
  CHECK(json.get_int("mesh.sp") == -1);
  CHECK(json.get_float("peak_tflops") == 3.0);
  CHECK(json.get_string("data.token_file").empty());
  CHECK(load_train_json("", {"model.tie_embeddings=false"}).get_bool("model.tie_embeddings") ==
        false);
  CHECK(load_train_json("", {"eval.seq_lens=512,1024"}).get_int_list("eval.seq_lens") ==
        std::vector<int64_t>{512, 1024});
  CHECK(load_train_json("", {"eval.seq_lens=[]"}).get_int_list("eval.seq_lens").empty());
  CHECK(load_train_json("", {"eval.seq_lens="}).get_int_list("eval.seq_lens").empty());
  CHECK(
      load_train_json("", {R"(data.text_files=["x,y.txt"])"}).get_string_list("data.text_files") ==
      std::vector<std::string>{"x,y.txt"});
  // Later --set wins.
  CHECK(load_train_json("", {"train.steps=1", "train.steps=2"}).get_int("train.steps") == 2);

  // The same mistakes, named as coming from --set.
  CHECK(set_error("train.seq_len=abc") == "train.seq_len in --set must be an integer, found 'abc'");
  CHECK_THAT(set_error("train.seq_len=12x"), Contains("found '12x'"));
  CHECK_THAT(set_error("train.seq_len=1.5"), Contains("must be an integer, found '1.5'"));
  CHECK_THAT(set_error("train.seq_len="), Contains("must be an integer, found ''"));
  CHECK_THAT(set_error("train.seq_len=99999999999999999999"),
             Contains("does not fit in a 64-bit integer"));
  CHECK_THAT(set_error("optim.lr=fast"), Contains("optim.lr in --set must be a number"));
  CHECK_THAT(set_error("optim.lr=nan"), Contains("must be a number, found 'nan'"));
  CHECK_THAT(set_error("model.tie_embeddings=yes"),
             Contains("model.tie_embeddings in --set must be true or false, found 'yes'"));
  CHECK_THAT(set_error("eval.seq_lens=[1,"), Contains("must be a list of integers"));
  CHECK_THAT(set_error("eval.seq_lens=1,two"), Contains("must be a list of integers"));
  CHECK_THAT(set_error("eval.seq_lens=[1,\"a\"]"), Contains("eval.seq_lens[1] in --set"));
  CHECK(set_error("train.seq_len=0") ==
        "train.seq_len = 0 in --set is out of range: expected value >= 1");
  CHECK_THAT(set_error("attention.layout=zigzg"), Contains("did you mean 'zigzag'?"));
  CHECK_THAT(set_error("train.seq_len"), Contains("expected KEY=VALUE"));
  CHECK_THAT(set_error("=3"), Contains("expected KEY=VALUE"));

  // Values are UTF-8 (JSON's text; the config is written out as JSON): other bytes are refused
  // where they come in, naming the byte, not later by the JSON writer (the fuzzer's find).
  const std::string path = "run_dir=/tmp/caf\xc3\xa9/\xe6\x97\xa5/\xf0\x9f\x9a\x80";
  const JsonConfig utf8 = load_train_json("", {path});
  CHECK(utf8.get_string("run_dir") == path.substr(8));
  CHECK_THAT(utf8.dump(), Contains("caf\xc3\xa9"));
  CHECK(set_error("run_dir=l.q\xff;") ==
        "--set: byte 12 of the assignment (0xFF, after 'run_dir=l.q') is not UTF-8; config keys "
        "and values must be UTF-8 text, as JSON requires (a path with other bytes cannot be set)");
  for (const char* bad : {"\xc3", "\xc3(", "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80",
                          "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\x80"}) {
    CAPTURE(bad);
    CHECK_THAT(set_error(std::string("run_dir=a") + bad + "b"),
               Contains("byte 10 of the assignment") && Contains("is not UTF-8"));
  }
  CHECK_THAT(set_error("run_\xff"
                       "dir=x"),
             Contains("byte 5") && Contains("after 'run_'"));
}

TEST_CASE("every preset in configs/ loads and validates on a matching world", "[config]") {
  const std::vector<std::string> presets{"demo", "tiny",        "125m",      "1b",
                                         "7b",   "finetune_hf", "slurm_test"};
  // Every preset on disk is one of those tested here.
  for (const auto& entry : fs::directory_iterator(source_dir() / "configs")) {
    if (entry.path().extension() != ".json") continue;
    INFO(entry.path());
    CHECK(std::find(presets.begin(), presets.end(), entry.path().stem().string()) != presets.end());
  }
  for (const std::string& name : presets) {
    INFO(name);
    const JsonConfig json = load_train_json((source_dir() / "configs" / (name + ".json")).string());
    const TrainConfig c = to_train_config(json);
    // The fixed axes set the world; an inferred (-1) axis is tried at 1 and 2.
    int fixed = 1;
    bool inferred = false;
    for (int v : {c.mesh.dp, c.mesh.fsdp, c.mesh.sp, c.mesh.tp}) {
      if (v == -1) inferred = true;
      if (v > 0) fixed *= v;
    }
    for (int factor : inferred ? std::vector<int>{1, 2} : std::vector<int>{1}) {
      INFO("world " << fixed * factor);
      CHECK_NOTHROW(validate(c, fixed * factor));
    }
    if (!inferred) CHECK_THAT(error_of([&] { validate(c, fixed + 1); }), Contains("mesh"));
  }

  const TrainConfig demo =
      to_train_config(load_train_json((source_dir() / "configs" / "demo.json").string()));
  CHECK(demo.attention.impl == AttentionImpl::Ring);
  CHECK(demo.attention.layout == RingLayout::Zigzag);
  CHECK(demo.mesh.sp == 4);
  CHECK(demo.train.seq_len >= 2048);
  CHECK(demo.data.source == DataSource::Retrieval);
  CHECK(validate(demo, 4).sp == 4);
  // What issue 4 promises: at least 64 records at >= 2048 tokens, and every curriculum length
  // (each must hold the questions and records) accepted by the data source.
  const auto demo_data = make_batch_source(demo);
  for (int64_t len : demo.train.curriculum_seq_lens) CHECK_NOTHROW(demo_data->check_seq_len(len));
  const RetrievalLayout at_eval =
      dynamic_cast<const RetrievalSource&>(*demo_data).layout(demo.train.seq_len);
  CHECK(at_eval.num_records >= 64);

  const TrainConfig big =
      to_train_config(load_train_json((source_dir() / "configs" / "7b.json").string()));
  CHECK(big.model.hidden_size == 4096);
  CHECK(big.model.num_layers == 32);
  CHECK(big.model.num_heads == 32);
  CHECK(big.model.intermediate_size == 11008);
  CHECK(big.model.vocab_size == 32000);
}

TEST_CASE("validate: the model's shape", "[config]") {
  CHECK(validate_error([](TrainConfig&) {}) == "(no error)");
  CHECK_THAT(validate_error([](TrainConfig& c) {
               c.model.num_heads = 8;
               c.model.num_kv_heads = 3;
               c.model.hidden_size = 256;
             }),
             Contains("model.num_kv_heads = 3 must divide model.num_heads = 8"));
  CHECK_THAT(validate_error([](TrainConfig& c) { c.model.num_kv_heads = 8; }),
             Contains("model.num_kv_heads = 8 must divide model.num_heads = 4"));
  CHECK_THAT(validate_error([](TrainConfig& c) { c.model.head_dim = 32; }),
             Contains("model.hidden_size = 256 must equal model.num_heads x model.head_dim = 4 x "
                      "32 = 128"));
  CHECK_THAT(validate_error([](TrainConfig& c) { c.model.hidden_size = 250; }),
             Contains("model.hidden_size = 250 must be a multiple of model.num_heads = 4"));
  CHECK_THAT(validate_error([](TrainConfig& c) {
               c.model.hidden_size = 20;
               c.model.num_heads = 4;
             }),
             Contains("must be even: RoPE"));
  // GQA and an explicit head_dim that agrees are fine.
  CHECK(validate_error([](TrainConfig& c) {
          c.model.num_kv_heads = 2;
          c.model.head_dim = 64;
        }) == "(no error)");
}

TEST_CASE("validate and select: the device and the transport", "[config]") {
  CHECK_THAT(validate_error([](TrainConfig& c) { c.comm.transport = Transport::NCCL; }),
             Contains("comm.transport = nccl moves GPU memory: it needs device = cuda"));
  CHECK(validate_error([](TrainConfig& c) {
          c.device = Device::CUDA;
          c.comm.transport = Transport::NCCL;
        }) == "(no error)");
  // bf16 attention tiles on a GPU: cuBLAS wants 16-byte aligned bf16 head slices.
  CHECK_THAT(validate_error([](TrainConfig& c) {
               c.device = Device::CUDA;
               c.model.dtype = DType::BF16;
               c.model.hidden_size = 48;
               c.model.num_heads = 4;  // head dimension 12
             }),
             Contains("model.dtype = bf16 on device = cuda needs a head dimension that is a "
                      "multiple of 8 (model.hidden_size / model.num_heads = 12)"));
  CHECK(validate_error([](TrainConfig& c) {
          c.model.dtype = DType::BF16;
          c.model.hidden_size = 48;
          c.model.num_heads = 4;  // fine on the CPU
        }) == "(no error)");
  // The fused attention kernels: bf16 only; on a GPU, heads of a multiple of 16 up to 128.
  CHECK_THAT(validate_error([](TrainConfig& c) { c.attention.kernel = AttentionKernel::Fused; }),
             Contains("attention.kernel = fused runs bf16 tensor-core kernels: it needs "
                      "model.dtype = bf16"));
  CHECK_THAT(validate_error([](TrainConfig& c) {
               c.device = Device::CUDA;
               c.model.dtype = DType::BF16;
               c.attention.kernel = AttentionKernel::Fused;
               c.model.hidden_size = 96;
               c.model.num_heads = 4;  // head dimension 24
             }),
             Contains("attention.kernel = fused on device = cuda needs a head dimension that is a "
                      "multiple of 16 and at most 128 (model.hidden_size / model.num_heads = 24)"));
  CHECK_THAT(validate_error([](TrainConfig& c) {
               c.device = Device::CUDA;
               c.model.dtype = DType::BF16;
               c.attention.kernel = AttentionKernel::Fused;
               c.model.hidden_size = 1024;
               c.model.num_heads = 4;  // head dimension 256
             }),
             Contains("at most 128 (model.hidden_size / model.num_heads = 256)"));
  CHECK(validate_error([](TrainConfig& c) {
          c.device = Device::CUDA;
          c.model.dtype = DType::BF16;
          c.attention.kernel = AttentionKernel::Fused;
          c.model.hidden_size = 64;
          c.model.num_heads = 4;  // head dimension 16
        }) == "(no error)");
  CHECK(validate_error([](TrainConfig& c) {
          c.model.dtype = DType::BF16;
          c.attention.kernel = AttentionKernel::Fused;
          c.model.hidden_size = 96;
          c.model.num_heads = 4;  // the CPU runs its tiles: any head dimension
        }) == "(no error)");
  CHECK(to_train_config(load_train_json("", {"attention.kernel=fused", "model.dtype=bf16"}))
            .attention.kernel == AttentionKernel::Fused);
  CHECK_THROWS_WITH(load_train_json("", {"attention.kernel=flash"}),
                    Contains("tiles") && Contains("fused"));
  // The key parses, and a bad name is refused with the choices.
  CHECK(to_train_config(load_train_json("", {"device=cuda"})).device == Device::CUDA);
  CHECK(to_train_config(load_train_json("", {})).device == Device::CPU);
  CHECK_THROWS_WITH(load_train_json("", {"device=gpu"}), Contains("cpu") && Contains("cuda"));
  // Without a GPU, picking the backend is the error, naming the key.
  TrainConfig c;
  CHECK(&backend_for(c) == &cpu_backend());
  c.device = Device::CUDA;
  if (cuda_device_count() == 0)
    CHECK_THROWS_WITH(backend_for(c), Contains("device = cuda"));
  else
    CHECK(backend_for(c).device() == Device::CUDA);
}

TEST_CASE("validate: the mesh against the world size and tensor parallelism", "[config]") {
  CHECK_THAT(validate_error([](TrainConfig& c) { c.mesh.tp = 2; }),
             Contains("mesh.tp = 2: the project has no tensor parallelism yet; set mesh.tp = 1"));
  CHECK_THAT(validate_error(
                 [](TrainConfig& c) {
                   c.mesh.sp = 1;
                   c.mesh.tp = -1;
                 },
                 2),
             Contains("the project has no tensor parallelism yet"));
  CHECK_THAT(validate_error([](TrainConfig& c) { c.mesh.sp = 2; }, 4),
             Contains("needs 2 ranks but the job has 4"));
  CHECK_THAT(validate_error(
                 [](TrainConfig& c) {
                   c.mesh.sp = -1;
                   c.mesh.fsdp = 3;
                 },
                 4),
             Contains("cannot be inferred"));
  CHECK_THAT(validate_error([](TrainConfig& c) { c.mesh.sp = 0; }), Contains("mesh.sp"));
  CHECK_THAT(validate_error([](TrainConfig& c) {
               c.mesh.sp = -1;
               c.mesh.dp = -1;
             }),
             Contains("at most one of"));
  // Only ring attention splits a sequence.
  CHECK_THAT(
      validate_error([](TrainConfig& c) { c.attention.impl = AttentionImpl::Blockwise; }, 2),
      Contains("attention.impl = blockwise keeps the whole sequence on every rank, so it needs "
               "mesh.sp = 1 (mesh.sp = 2 here)"));
  CHECK(validate_error(
            [](TrainConfig& c) {
              c.attention.impl = AttentionImpl::Vanilla;
              c.mesh.sp = 1;
              c.mesh.dp = -1;
              c.train.batch_size = 8;
            },
            4) == "(no error)");
  CHECK(validate(TrainConfig{}, 8).sp == 8);
}

TEST_CASE("validate: sequence lengths the layout or the attention tiles cannot split", "[config]") {
  // zigzag needs a multiple of 2 x sp.
  CHECK_THAT(validate_error([](TrainConfig& c) { c.train.seq_len = 1028; }, 4),
             Contains("train.seq_len = 1028: sequence length 1028 cannot be split by the zigzag "
                      "layout over 4 ranks: it must be a multiple of 8"));
  CHECK(validate_error(
            [](TrainConfig& c) {
              c.train.seq_len = 1028;
              c.attention.layout = RingLayout::Striped;
              c.attention.q_chunk = c.attention.k_chunk = 257;
            },
            4) == "(no error)");
  CHECK_THAT(validate_error(
                 [](TrainConfig& c) {
                   c.train.seq_len = 1030;
                   c.attention.layout = RingLayout::Contiguous;
                 },
                 4),
             Contains("must be a multiple of 4"));
  // Tiles: zigzag on 4 ranks holds runs of 1024 / 8 = 128 tokens.
  CHECK_THAT(
      validate_error([](TrainConfig& c) { c.attention.q_chunk = 96; }, 4),
      Contains("attention.q_chunk = 96 does not tile train.seq_len = 1024: with attention.layout "
               "= zigzag over mesh.sp = 4 each rank holds runs of 128 consecutive tokens"));
  CHECK_THAT(validate_error([](TrainConfig& c) { c.attention.k_chunk = 48; }, 4),
             Contains("attention.k_chunk = 48 does not tile"));
  CHECK(validate_error([](TrainConfig& c) { c.attention.q_chunk = 64; }, 4) == "(no error)");
  CHECK(validate_error([](TrainConfig& c) { c.attention.q_chunk = 4096; }, 4) == "(no error)");
  // Vanilla has one whole tile: chunk sizes do not matter.
  CHECK(validate_error(
            [](TrainConfig& c) {
              c.attention.impl = AttentionImpl::Vanilla;
              c.attention.q_chunk = 100;
              c.train.seq_len = 1000;
              c.mesh.sp = 1;
            },
            1) == "(no error)");
  // Every eval length obeys the same rules.
  CHECK_THAT(validate_error(
                 [](TrainConfig& c) {
                   c.eval.seq_lens = {1024, 1036};
                 },
                 4),
             Contains("eval.seq_lens[1] = 1036"));
}

TEST_CASE("validate: batch, schedule and data", "[config]") {
  CHECK_THAT(validate_error(
                 [](TrainConfig& c) {
                   c.mesh.sp = 1;
                   c.mesh.fsdp = -1;
                   c.train.batch_size = 6;
                 },
                 4),
             Contains("train.batch_size = 6 must be a multiple of mesh.dp x mesh.fsdp x "
                      "train.micro_batches = 1 x 4 x 1 = 4"));
  CHECK_THAT(validate_error([](TrainConfig& c) {
               c.train.batch_size = 4;
               c.train.micro_batches = 3;
             }),
             Contains("train.batch_size = 4 must be a multiple of"));
  CHECK(validate_error([](TrainConfig& c) {
          c.train.steps = 10;
          c.train.warmup_steps = 11;
        }) == "(no error)");
  CHECK_THAT(validate_error([](TrainConfig& c) { c.optim.min_lr = 1.0; }),
             Contains("optim.min_lr = 1 must be <= optim.lr = 0.0003"));
  CHECK_THAT(validate_error([](TrainConfig& c) { c.data.source = DataSource::Text; }),
             Contains("data.source = text needs data.text_files"));
  CHECK_THAT(validate_error([](TrainConfig& c) {
               c.data.source = DataSource::Text;
               c.data.text_files = {"a.txt"};
               c.model.vocab_size = 64;
             }),
             Contains("model.vocab_size must be >= 257, got 64"));
  CHECK_THAT(validate_error([](TrainConfig& c) { c.data.source = DataSource::Tokens; }),
             Contains("data.source = tokens needs data.token_file"));
  CHECK_THAT(validate_error([](TrainConfig& c) {
               c.data.retrieval.num_records = 2000;
               c.data.retrieval.key_digits = 3;
             }),
             Contains("data.retrieval.num_records = 2000 needs distinct keys, but "
                      "data.retrieval.key_digits = 3 gives only 1000"));
}

TEST_CASE("docs/config.md holds the table the schema generates", "[config]") {
  std::ifstream in(source_dir() / "docs" / "config.md");
  REQUIRE(in);
  const std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string table = train_schema().markdown();
  // Regenerate with: build/bin/ringattn config --markdown
  CHECK(doc.find(table) != std::string::npos);
  for (const ConfigKey& k : train_schema().keys()) CHECK_THAT(table, Contains("`" + k.name + "`"));
}

TEST_CASE("the first key in which two ranks' configs differ is named", "[config]") {
  const std::string a = R"({"train": {"steps": 3, "seq_len": 128}, "seed": 1})";
  CHECK(first_config_difference(a, a).empty());
  CHECK(first_config_difference(R"({"train": {"steps": 3, "seq_len": 256}, "seed": 1})", a) ==
        "train.seq_len is 256 here and 128 on rank 0");
  CHECK(first_config_difference(R"({"train": {"steps": 3}, "seed": 1})", a) ==
        "train.seq_len is not set here and is 128 on rank 0");
  CHECK(first_config_difference(R"({"train": {"steps": 3, "seq_len": 128}, "seed": 1, "x": "y"})",
                                a) == "x is \"y\" here and not set on rank 0");
  // The same keys and values in another order are the same config.
  CHECK(
      first_config_difference(R"({"seed": 1, "train": {"seq_len": 128, "steps": 3}})", a).empty());
  CHECK(first_config_difference("not json", a) == "the two differ");
}
