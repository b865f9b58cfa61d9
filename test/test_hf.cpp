// Hugging Face import and export (model/hf/) against the conformance fixture test/data/hf_tiny/,
// written once by scripts/make-hf-fixture.py with transformers: a random LlamaForCausalLM (vocab
// 128, hidden 64, 2 layers, 4 heads / 2 key/value heads, untied head, rope_theta 500), input ids
// [2, 32] and transformers' float32 logits and loss for them; the same model in bfloat16,
// sharded by save_pretrained, in bf16_sharded/.
//
// Relative error here is max |ours - reference| / max |reference| over the tensor.
#include <catch2/catch.hpp>

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <sys/stat.h>

#include "comm/mesh.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "model/checkpoint.h"
#include "model/data/token_file.h"
#include "model/hf/hf_config.h"
#include "model/hf/hf_export.h"
#include "model/hf/hf_import.h"
#include "model/hf/token_forward.h"
#include "test_util.h"

using namespace ringattn;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

const std::string kFixture = std::string(RINGATTN_TEST_DATA_DIR) + "/hf_tiny";

// The trainer config an import makes: defaults, the fixture's shape, the given attention.
JsonConfig hf_json(const std::string& dir) {
  JsonConfig j = load_train_json("", {});
  apply_hf_config(read_hf_config(dir), j);
  return j;
}

TrainConfig hf_config(const std::string& dir, AttentionImpl impl, RingLayout layout) {
  TrainConfig c = to_train_config(hf_json(dir));
  c.attention.impl = impl;
  c.attention.layout = layout;
  c.attention.q_chunk = 4;  // tiles smaller than the shards: the tile loops run
  c.attention.k_chunk = 4;
  c.model.ffn_chunk = 24;
  c.model.loss_chunk = 20;
  return c;
}

MeshShape one_rank() {
  return MeshShape{1, 1, 1, 1};
}

MeshShape ring_over(MPI_Comm comm) {
  int n = 1;
  MPI_Comm_size(comm, &n);
  return MeshShape{1, 1, n, 1};
}

double rel_err(const Tensor& got, const Tensor& want) {
  REQUIRE(got.shape() == want.shape());
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double a = got.data<float>()[i], b = want.data<float>()[i];
    diff = std::max(diff, std::abs(a - b));
    scale = std::max(scale, std::abs(b));
  }
  return std::isfinite(diff) ? diff / scale : INFINITY;
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

struct Reference {
  Tensor input_ids, logits;
  double loss = 0;
};

Reference reference() {
  const SafetensorsFile f = SafetensorsFile::open(kFixture + "/reference.safetensors");
  Reference r;
  r.input_ids = read_input_ids(kFixture + "/reference.safetensors");
  r.logits = f.load_f32("logits");
  r.loss = f.load_f32("loss").data<float>()[0];
  return r;
}

// Logits and loss of the fixture on `shape` over `comm`.
TokenForward run_fixture(const std::string& dir, AttentionImpl impl, RingLayout layout,
                         MeshShape shape, MPI_Comm comm, bool logits) {
  const TrainConfig cfg = hf_config(dir, impl, layout);
  Mesh mesh(shape, comm);
  Transformer model(cfg, mesh, cpu_backend());
  load_hf_weights(HfWeights::open(dir), model);
  return forward_tokens(model, mesh, reference().input_ids, layout, logits);
}

// The fixture's tensors by name (F32).
std::vector<std::pair<std::string, Tensor>> fixture_tensors() {
  const HfWeights w = HfWeights::open(kFixture);
  std::vector<std::pair<std::string, Tensor>> out;
  for (const std::string& n : w.names()) out.emplace_back(n, w.load_f32(n));
  return out;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::trunc);
  f << text;
  REQUIRE(f.good());
}

nlohmann::json fixture_config_json() {
  std::ifstream f(kFixture + "/config.json");
  return nlohmann::json::parse(f);
}

// A copy of the fixture directory (config.json and model.safetensors) to break.
struct FixtureCopy {
  test::TempPath dir{"hf", "copy"};
  FixtureCopy() {
    fs::create_directories(dir.path);
    fs::copy_file(kFixture + "/config.json", dir.path + "/config.json");
    fs::copy_file(kFixture + "/model.safetensors", dir.path + "/model.safetensors");
  }
  void set_config(const nlohmann::json& j) { write_text(dir.path + "/config.json", j.dump(2)); }
  void set_weights(const std::vector<std::pair<std::string, Tensor>>& t) {
    save_safetensors(dir.path + "/model.safetensors", t, {{"format", "pt"}});
  }
  // Imports the copy into a model of its config.json's shape (MPI_COMM_SELF).
  void import() const {
    const TrainConfig cfg = hf_config(dir.path, AttentionImpl::Vanilla, RingLayout::Zigzag);
    Mesh mesh(one_rank(), MPI_COMM_SELF);
    Transformer model(cfg, mesh, cpu_backend());
    load_hf_weights(HfWeights::open(dir.path), model);
  }
};

}  // namespace

TEST_CASE("hf config: the fixture's config.json sets the model shape", "[hf]") {
  const HfConfig hf = read_hf_config(kFixture);
  CHECK(hf.vocab_size == 128);
  CHECK(hf.hidden_size == 64);
  CHECK(hf.intermediate_size == 96);
  CHECK(hf.num_hidden_layers == 2);
  CHECK(hf.num_attention_heads == 4);
  CHECK(hf.num_key_value_heads == 2);
  CHECK(hf.head_dim == 16);
  CHECK(hf.rope_theta == 500.0);  // v5 keeps it in rope_parameters
  CHECK(hf.rms_norm_eps == 1e-5);
  CHECK_FALSE(hf.tie_word_embeddings);
  CHECK(hf.dtype == "float32");

  const TrainConfig c = to_train_config(hf_json(kFixture));
  CHECK(c.model.vocab_size == 128);
  CHECK(c.model.hidden_size == 64);
  CHECK(c.model.intermediate_size == 96);
  CHECK(c.model.num_layers == 2);
  CHECK(c.model.num_heads == 4);
  CHECK(c.model.kv_heads() == 2);
  CHECK(c.model.head_size() == 16);
  CHECK(c.model.rope_theta == 500.0);
  CHECK(c.model.rms_norm_eps == 1e-5);
  CHECK_FALSE(c.model.tie_embeddings);
  CHECK(c.attention == TrainConfig{}.attention);  // only model shape keys change

  // transformers v4 spelling: torch_dtype, top-level rope_theta, rope_scaling null; head_dim and
  // num_key_value_heads absent (derived), tied embeddings.
  nlohmann::json v4 = fixture_config_json();
  v4.erase("rope_parameters");
  v4.erase("dtype");
  v4.erase("head_dim");
  v4.erase("num_key_value_heads");
  v4["rope_theta"] = 250000.0;
  v4["rope_scaling"] = nullptr;
  v4["torch_dtype"] = "bfloat16";
  v4["tie_word_embeddings"] = true;
  const HfConfig h4 = parse_hf_config(v4, "v4/config.json");
  CHECK(h4.rope_theta == 250000.0);
  CHECK(h4.num_key_value_heads == 4);
  CHECK(h4.head_dim == 16);
  CHECK(h4.dtype == "bfloat16");
  CHECK(h4.tie_word_embeddings);
}

TEST_CASE("hf import: logits and loss match transformers, vanilla and blockwise on 1 rank",
          "[hf]") {
  const Reference ref = reference();
  const TokenForward v = run_fixture(kFixture, AttentionImpl::Vanilla, RingLayout::Zigzag,
                                     one_rank(), MPI_COMM_SELF, true);
  const double err = rel_err(v.logits, ref.logits);
  INFO("vanilla logits relative error " << err << ", loss " << v.loss() << " vs " << ref.loss);
  CHECK(err < 1e-4);
  CHECK(std::abs(v.loss() - ref.loss) < 1e-4 * ref.loss);
  CHECK(v.tokens == 2 * 31);

  // The loss alone goes through the blockwise head (no logits buffer).
  const TokenForward b = run_fixture(kFixture, AttentionImpl::Blockwise, RingLayout::Zigzag,
                                     one_rank(), MPI_COMM_SELF, false);
  CHECK_FALSE(b.logits.defined());
  CHECK(std::abs(b.loss() - ref.loss) < 1e-4 * ref.loss);
}

TEST_CASE("hf import: logits and loss match transformers, ring over every rank", "[hf]") {
  const Reference ref = reference();
  for (RingLayout layout : {RingLayout::Zigzag, RingLayout::Striped, RingLayout::Contiguous}) {
    const TokenForward r = run_fixture(kFixture, AttentionImpl::Ring, layout,
                                       ring_over(MPI_COMM_WORLD), MPI_COMM_WORLD, true);
    const double err = rel_err(r.logits, ref.logits);
    INFO(layout_name(layout) << ": logits relative error " << err << ", loss " << r.loss() << " vs "
                             << ref.loss);
    CHECK(err < 1e-4);
    CHECK(std::abs(r.loss() - ref.loss) < 1e-4 * ref.loss);
    const TokenForward l = run_fixture(kFixture, AttentionImpl::Ring, layout,
                                       ring_over(MPI_COMM_WORLD), MPI_COMM_WORLD, false);
    CHECK(std::abs(l.loss() - ref.loss) < 1e-4 * ref.loss);
  }
}

TEST_CASE("hf import: a tied head reads the embedding", "[hf]") {
  // The fixture with lm_head.weight replaced by the embedding, untied and tied: the same logits.
  auto t = fixture_tensors();
  const Tensor* embed = nullptr;
  for (const auto& [name, x] : t)
    if (name == "model.embed_tokens.weight") embed = &x;
  REQUIRE(embed != nullptr);
  FixtureCopy untied, tied;
  auto same_head = t;
  for (auto& [name, x] : same_head)
    if (name == "lm_head.weight") x = embed->clone();
  untied.set_weights(same_head);
  tied.set_weights(same_head);  // a tied checkpoint may store lm_head.weight too: skipped
  nlohmann::json j = fixture_config_json();
  j["tie_word_embeddings"] = true;
  tied.set_config(j);
  CHECK(read_hf_config(tied.dir.path).tie_word_embeddings);
  const TokenForward a = run_fixture(untied.dir.path, AttentionImpl::Vanilla, RingLayout::Zigzag,
                                     one_rank(), MPI_COMM_SELF, true);
  const TokenForward b = run_fixture(tied.dir.path, AttentionImpl::Ring, RingLayout::Zigzag,
                                     ring_over(MPI_COMM_WORLD), MPI_COMM_WORLD, true);
  CHECK(rel_err(b.logits, a.logits) < 1e-5);
  CHECK(std::abs(b.loss() - a.loss()) < 1e-5 * a.loss());
}

TEST_CASE("hf export: export then import is lossless, sharded or not", "[hf]") {
  const auto original = fixture_tensors();
  const TrainConfig cfg = hf_config(kFixture, AttentionImpl::Vanilla, RingLayout::Zigzag);
  Mesh mesh(one_rank(), MPI_COMM_SELF);
  Transformer model(cfg, mesh, cpu_backend());
  load_hf_weights(HfWeights::open(kFixture), model);
  std::vector<std::pair<std::string, Tensor>> named;
  for (size_t u = 0; u < model.units().size(); ++u)
    for (auto& p : model.gather_named(u)) named.push_back(std::move(p));

  for (int64_t shard_bytes : {int64_t(1) << 30, int64_t(60000)}) {
    test::TempPath out("hf", "export");
    HfExportOptions o;
    o.shard_bytes = shard_bytes;
    const HfExportResult r = write_hf_model(out.path, cfg, named, o);
    const bool sharded = shard_bytes < 100000;
    CHECK(fs::exists(out.path + "/model.safetensors.index.json") == sharded);
    CHECK(fs::exists(out.path + "/model.safetensors") == !sharded);
    CHECK(r.tensors == int64_t(original.size()));

    const HfWeights back = HfWeights::open(out.path);
    CHECK(back.file_count() == (sharded ? 6u : 1u));
    REQUIRE(back.names().size() == original.size());
    for (const auto& [name, t] : original) {
      INFO(name);
      CHECK(back.info(name).dtype == DType::F32);
      CHECK(bit_equal(back.load_f32(name), t));
    }
    // The config round-trips too, and a model imported from the export holds the same bits.
    const HfConfig a = read_hf_config(kFixture), b = read_hf_config(out.path);
    CHECK(to_train_config(hf_json(out.path)).model == to_train_config(hf_json(kFixture)).model);
    CHECK(b.max_position_embeddings == cfg.train.seq_len);
    CHECK(a.rope_theta == b.rope_theta);
    Transformer again(cfg, mesh, cpu_backend());
    load_hf_weights(back, again);
    for (size_t u = 0; u < model.units().size(); ++u)
      CHECK(bit_equal(again.gather_unit(u), model.gather_unit(u)));
  }

  // From a training checkpoint (what `ringattn export` reads): the same bits again.
  test::TempPath run("hf", "run");
  CheckpointState st;
  st.step = 1;
  const std::string ckpt = save_checkpoint(run.path, model, mesh, st, hf_json(kFixture).dump(), 0);
  CHECK(resolve_checkpoint_dir(run.path) == ckpt);
  test::TempPath out("hf", "from_checkpoint");
  HfExportOptions o;
  export_checkpoint_to_hf(ckpt, out.path, o);
  const HfWeights back = HfWeights::open(out.path);
  for (const auto& [name, t] : original) CHECK(bit_equal(back.load_f32(name), t));
}

TEST_CASE("hf import: bf16 shards written by transformers, and f16", "[hf]") {
  const auto original = fixture_tensors();
  // bfloat16 from torch rounds to nearest even, as f32_to_bf16 does: bit-exact expectations.
  const HfWeights bf = HfWeights::open(kFixture + "/bf16_sharded");
  CHECK(bf.file_count() == 3);
  CHECK_THAT(bf.describe(), Contains("model.safetensors.index.json"));
  for (const auto& [name, t] : original) {
    INFO(name);
    CHECK(bf.info(name).dtype == DType::BF16);
    const Tensor got = bf.load_f32(name);
    bool same = got.shape() == t.shape();
    for (int64_t i = 0; same && i < t.numel(); ++i)
      same = got.data<float>()[i] == bf16_to_f32(f32_to_bf16(t.data<float>()[i]));
    CHECK(same);
  }
  // The bf16 model still runs on the ring and lands near the f32 reference.
  const TokenForward r =
      run_fixture(kFixture + "/bf16_sharded", AttentionImpl::Ring, RingLayout::Zigzag,
                  ring_over(MPI_COMM_WORLD), MPI_COMM_WORLD, false);
  CHECK(std::abs(r.loss() - reference().loss) < 0.05 * reference().loss);

  // f16 through our own export, sharded.
  test::TempPath out("hf", "f16");
  HfExportOptions o;
  o.dtype = DType::F16;
  o.shard_bytes = 50000;
  const TrainConfig cfg = hf_config(kFixture, AttentionImpl::Vanilla, RingLayout::Zigzag);
  write_hf_model(out.path, cfg, original, o);
  CHECK(read_hf_config(out.path).dtype == "float16");
  const HfWeights h = HfWeights::open(out.path);
  CHECK(h.file_count() > 1);
  for (const auto& [name, t] : original) {
    CHECK(h.info(name).dtype == DType::F16);
    const Tensor got = h.load_f32(name);
    bool same = true;
    for (int64_t i = 0; same && i < t.numel(); ++i)
      same = got.data<float>()[i] == f16_to_f32(f32_to_f16(t.data<float>()[i]));
    CHECK(same);
  }
}

TEST_CASE("hf import: bad directories give errors naming the file and the tensor", "[hf]") {
  test::TempPath missing("hf", "missing");
  CHECK_THROWS_WITH(read_hf_config(missing.path), Contains("does not exist"));
  CHECK_THROWS_WITH(HfWeights::open(missing.path), Contains("does not exist"));

  SECTION("config.json") {
    FixtureCopy c;
    fs::remove(c.dir.path + "/config.json");
    CHECK_THROWS_WITH(read_hf_config(c.dir.path), Contains("has no readable config.json"));
    // A named pipe is refused at once (it waited for a writer for ever, deaf to a first SIGTERM).
    REQUIRE(::mkfifo((c.dir.path + "/config.json").c_str(), 0600) == 0);
    CHECK_THROWS_WITH(read_hf_config(c.dir.path), Contains("config.json': not a regular file"));
    fs::remove(c.dir.path + "/config.json");
    write_text(c.dir.path + "/config.json", "{\"hidden_size\": 64,");
    CHECK_THROWS_WITH(read_hf_config(c.dir.path), Contains("config.json' is not valid JSON"));
    auto bad = [&](const char* key, const nlohmann::json& value, const char* message) {
      nlohmann::json j = fixture_config_json();
      if (value.is_discarded())
        j.erase(key);
      else
        j[key] = value;
      c.set_config(j);
      CHECK_THROWS_WITH(read_hf_config(c.dir.path), Contains(message) && Contains("config.json"));
    };
    const nlohmann::json erase = nlohmann::json::value_t::discarded;
    bad("hidden_size", erase, "'hidden_size' is missing");
    bad("num_hidden_layers", -2, "'num_hidden_layers' must be a positive integer, got -2");
    bad("num_key_value_heads", 3, "num_key_value_heads = 3 must divide num_attention_heads = 4");
    bad("head_dim", 32, "head_dim = 32 but hidden_size / num_attention_heads");
    bad("hidden_act", "gelu", "hidden_act is 'gelu'");
    bad("attention_bias", true, "attention_bias is true");
    bad("model_type", "mistral", "model_type is 'mistral'");
    bad("rope_parameters", {{"rope_type", "llama3"}, {"rope_theta", 500000.0}},
        "RoPE scaling of type 'llama3'");
    bad("rope_scaling", {{"type", "linear"}, {"factor", 2.0}}, "RoPE scaling of type 'linear'");
    bad("rms_norm_eps", "small", "'rms_norm_eps' must be a positive number");
  }

  SECTION("weights") {
    FixtureCopy c;
    auto t = fixture_tensors();
    const std::string file = c.dir.path + "/model.safetensors";
    // A missing tensor.
    auto fewer = t;
    fewer.erase(std::find_if(fewer.begin(), fewer.end(),
                             [](const auto& p) { return p.first == "lm_head.weight"; }));
    c.set_weights(fewer);
    CHECK_THROWS_WITH(c.import(), Contains("'lm_head.weight' (shape [128, 64]) is missing") &&
                                      Contains(c.dir.path));
    // A config that does not match the weights: the shape error names the file and tensor.
    c.set_weights(t);
    nlohmann::json j = fixture_config_json();
    j["intermediate_size"] = 128;
    c.set_config(j);
    CHECK_THROWS_WITH(c.import(), Contains("tensor 'model.layers.0.mlp.gate_proj.weight' in '" +
                                           file + "' has shape [96, 64], expected [128, 64]"));
    c.set_config(fixture_config_json());
    // A tensor the model does not have (a bias), and one of an integer type.
    auto more = t;
    more.emplace_back("model.layers.0.self_attn.q_proj.bias", Tensor::zeros({64}, DType::F32));
    c.set_weights(more);
    CHECK_THROWS_WITH(c.import(), Contains("tensor 'model.layers.0.self_attn.q_proj.bias' in '" +
                                           file + "' is not a parameter"));
    auto ints = t;
    for (auto& [name, x] : ints)
      if (name == "model.norm.weight") x = Tensor::zeros({64}, DType::I32);
    c.set_weights(ints);
    CHECK_THROWS_WITH(c.import(), Contains("tensor 'model.norm.weight' in '" + file +
                                           "' is I32, expected F32, BF16 or F16"));
    // Old checkpoints' rotary buffers are skipped.
    auto inv = t;
    inv.emplace_back("model.layers.1.self_attn.rotary_emb.inv_freq",
                     Tensor::zeros({8}, DType::F32));
    c.set_weights(inv);
    CHECK_NOTHROW(c.import());
    // No weights at all.
    fs::remove(file);
    CHECK_THROWS_WITH(HfWeights::open(c.dir.path),
                      Contains("has neither model.safetensors nor model.safetensors.index.json"));
  }

  SECTION("sharded index") {
    FixtureCopy c;
    fs::remove(c.dir.path + "/model.safetensors");
    for (const auto& e : fs::directory_iterator(kFixture + "/bf16_sharded"))
      fs::copy_file(e.path(), c.dir.path + "/" + e.path().filename().string(),
                    fs::copy_options::overwrite_existing);
    CHECK_NOTHROW(c.import());
    const std::string index = c.dir.path + "/model.safetensors.index.json";
    std::ifstream in(index);
    nlohmann::json j = nlohmann::json::parse(in);
    in.close();
    j["weight_map"]["model.norm.weight"] = "model-00009-of-00009.safetensors";
    write_text(index, j.dump());
    CHECK_THROWS_WITH(HfWeights::open(c.dir.path),
                      Contains("lists tensor 'model.norm.weight' in '") &&
                          Contains("model-00009-of-00009.safetensors', which does not exist"));
    j["weight_map"]["model.norm.weight"] = "model-00001-of-00003.safetensors";
    j["weight_map"]["lm_head.weight"] = "model-00001-of-00003.safetensors";
    write_text(index, j.dump());
    CHECK_THROWS_WITH(HfWeights::open(c.dir.path),
                      Contains("lists tensor 'lm_head.weight' in '") &&
                          Contains("model-00001-of-00003.safetensors', but that file has no such "
                                   "tensor"));
    write_text(index, "{\"metadata\": {}}");
    CHECK_THROWS_WITH(HfWeights::open(c.dir.path), Contains("has no \"weight_map\""));
  }
}

TEST_CASE("hf forward: token ids from a token file or a safetensors file", "[hf]") {
  const Tensor ref = reference().input_ids;
  CHECK(ref.shape() == Shape{2, 32});
  CHECK(ref.dtype() == DType::I32);

  test::TempPath tokens("hf", "tokens", ".ratokens");
  std::vector<uint32_t> ids(70);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = uint32_t(i * 7 % 128);
  write_token_file(tokens.path, ids, 2);
  const Tensor rows = read_input_ids(tokens.path, 32);
  CHECK(rows.shape() == Shape{2, 32});  // the 6 tokens past two rows are dropped
  CHECK(rows.data<int32_t>()[33] == int32_t(ids[33]));
  CHECK(read_input_ids(tokens.path).shape() == Shape{1, 70});
  CHECK_THROWS_WITH(read_input_ids(tokens.path, 100), Contains("fewer than one row of 100"));

  test::TempPath st("hf", "ids", ".safetensors");
  save_safetensors(st.path, {{"tokens", Tensor::zeros({4}, DType::I32)}});
  CHECK_THROWS_WITH(read_input_ids(st.path), Contains("tensor 'input_ids'"));
  save_safetensors(st.path, {{"input_ids", Tensor::zeros({4}, DType::F32)}});
  CHECK_THROWS_WITH(read_input_ids(st.path), Contains("expected I32 or I64"));

  // The batch a rank builds: its layout positions, the next token as target, none at the end.
  // Zigzag over 2 ranks: rank 0 holds chunks 0 and 3 of 4, positions 0..7 and 24..31.
  const Batch b = make_token_batch(ref, RingLayout::Zigzag, 0, 2);
  REQUIRE(b.positions.size() == 16);
  CHECK(b.positions[8] == 24);
  CHECK(b.positions.back() == 31);
  CHECK(b.tokens.data<int32_t>()[8] == ref.data<int32_t>()[24]);
  CHECK(b.targets.data<int32_t>()[8] == ref.data<int32_t>()[25]);
  CHECK(b.targets.data<int32_t>()[15] == kIgnoreIndex);
  CHECK(b.loss_mask.data<float>()[15] == 0.0f);
}
