// The whole model (model/transformer.h): gradients against finite differences, the same loss and
// gradients on every mesh and attention implementation, and the optimizer loop.
//
// The model is tiny (vocabulary 17, hidden 16, 2 layers, 4 heads / 2 kv heads, 64 tokens,
// 4 sequences) and its parameters are redrawn with O(1) effect (stddev 0.3; RMSNorm weights
// around 1), as the 0.02 of training would make every layer nearly linear and the checks weak.
// Data: the retrieval task with the loss on every predictable token, so every row carries a
// gradient, and its answer tokens counted for accuracy.
// 1-rank references run on MPI_COMM_SELF meshes (every rank computes them alone); meshes over
// MPI_COMM_WORLD split the same global batch over the ranks.
#include <catch2/catch.hpp>

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "comm/mesh.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/random.h"
#include "model/data/make_source.h"
#include "model/data/retrieval.h"
#include "model/transformer.h"
#include "test_util.h"

using namespace ringattn;

namespace {

using VecF = std::vector<float>;

TrainConfig tiny_config(AttentionImpl impl = AttentionImpl::Blockwise,
                        RingLayout layout = RingLayout::Zigzag) {
  TrainConfig c = test::tiny_train_config("", impl, layout);
  c.seed = 5;
  c.model.rope_theta = 500.0;  // small theta: the angles vary a lot over 64 positions
  c.train.steps = 10;
  c.train.warmup_steps = 0;
  c.train.grad_clip = 0;  // the comparisons look at raw gradients
  return c;
}

RetrievalSource tiny_source(const TrainConfig& c) {
  RetrievalOptions o;
  o.key_digits = int(c.data.retrieval.key_digits);
  o.value_digits = int(c.data.retrieval.value_digits);
  o.loss_on_all_tokens = true;
  return RetrievalSource(o, c.seed);
}

// Parameters with O(1) effect, the same full values on every rank and mesh (drawn per unit from
// (seed, unit index)); each rank loads its slice.
void randomize(Transformer& m, uint64_t seed) {
  for (size_t i = 0; i < m.units().size(); ++i) {
    const ModelUnit& u = m.units()[i];
    Tensor t = Tensor::empty({u.layout.numel()}, DType::F32);
    fill_normal(t, seed * 1000 + i, 0.0f, 0.3f);
    for (const ParamEntry& e : u.layout.entries())
      if (e.name.find("norm") != std::string::npos) {
        Tensor w = Tensor::empty({e.numel()}, DType::F32);
        fill_normal(w, seed * 1000 + i + 500, 1.0f, 0.1f);
        std::memcpy(t.data<float>() + e.offset, w.data<float>(), size_t(e.numel()) * 4);
      }
    m.load_unit(i, t.data<float>(), t.numel());
  }
}

VecF vec_of(const Tensor& t) {
  return VecF(t.data<float>(), t.data<float>() + t.numel());
}

// max |a - b| / (1e-3 + max |b|): two float32 computations of the same tensor.
double max_rel_diff(const VecF& a, const VecF& b) {
  REQUIRE(a.size() == b.size());
  double m = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, std::abs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return std::isfinite(m) ? m / (1e-3 + scale) : INFINITY;
}

// The batches this rank reads for step `step` (all micro-batches).
std::vector<Batch> batches_for(const TrainConfig& c, const Mesh& mesh, int64_t step) {
  const RetrievalSource src = tiny_source(c);
  std::vector<Batch> out;
  for (int micro = 0; micro < c.train.micro_batches; ++micro)
    out.push_back(src.get(make_batch_request(c, mesh, step, micro, c.train.seq_len)));
  return out;
}

// W: the global weighted token count of a step.
double global_weight(const std::vector<Batch>& batches, Mesh& mesh) {
  StepStats w;
  for (const Batch& b : batches) w.token_weight += Transformer::loss_weight(b);
  w.all_reduce(mesh.world());
  return w.token_weight;
}

struct GradRun {
  StepStats stats;           // global
  std::vector<VecF> grads;   // full reduced gradients per unit
  std::vector<VecF> params;  // full parameters per unit
};

// One step's forward and backward of `c` on `shape` over `comm`, with the trainer's loss
// normalisation; the gradients reduced over every axis, as optimizer_step would see them.
GradRun grad_run(const TrainConfig& c, MeshShape shape, MPI_Comm comm) {
  Mesh mesh(shape, comm);
  Transformer model(c, mesh, cpu_backend());
  randomize(model, 11);
  const std::vector<Batch> batches = batches_for(c, mesh, 3);
  const double W = global_weight(batches, mesh);
  GradRun r;
  for (const Batch& b : batches) r.stats += model.forward_backward(b, float(1.0 / W));
  r.stats.all_reduce(mesh.world());
  model.reduce_grads();
  for (size_t i = 0; i < model.units().size(); ++i) {
    r.grads.push_back(vec_of(model.gather_unit(i, true)));
    r.params.push_back(vec_of(model.gather_unit(i, false)));
  }
  return r;
}

MeshShape one_rank() {
  return MeshShape{1, 1, 1, 1};
}

int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

}  // namespace

TEST_CASE("Transformer: units, Hugging Face names, parameter count, mesh-independent init",
          "[model]") {
  TrainConfig c = tiny_config();
  for (bool tied : {false, true}) {
    CAPTURE(tied);
    c.model.tie_embeddings = tied;
    Mesh self(one_rank(), MPI_COMM_SELF);
    Transformer ref(c, self, cpu_backend());
    REQUIRE(ref.units().size() == 4);
    CHECK(ref.units()[0].name == "embedding");
    CHECK(ref.units()[2].name == "layer.1");
    CHECK(ref.units()[3].name == "head");
    int64_t total = 0;
    for (const ModelUnit& u : ref.units()) total += u.layout.numel();
    CHECK(total == ref.parameter_count());
    const auto named = ref.gather_named(3);
    REQUIRE(named.size() == (tied ? 1u : 2u));
    CHECK(named[0].first == "model.norm.weight");
    CHECK(named[0].second.shape() == Shape{16});
    CHECK(named[0].second.data<float>()[5] == 1.0f);  // RMSNorm weights start at 1
    if (!tied) CHECK(named[1].second.shape() == Shape{17, 16});
    // No weight decay on the norms: on one rank the localized ranges are the full ones.
    const ParamLayout& l1 = ref.units()[1].layout;
    const std::vector<IndexRange>& nd = ref.units()[1].shard->no_decay_local();
    REQUIRE(nd.size() == 2);
    CHECK(nd[0] == IndexRange{0, 16});
    const int64_t post = l1.find("model.layers.0.post_attention_layernorm.weight").offset;
    CHECK(nd[1] == IndexRange{post, post + 16});

    // The seeded initialisation is the same full model on a mesh sharded over every rank.
    Mesh world(MeshShape{1, world_size(), 1, 1});
    Transformer sharded(c, world, cpu_backend());
    for (size_t i = 0; i < ref.units().size(); ++i)
      CHECK(vec_of(sharded.gather_unit(i)) == vec_of(ref.gather_unit(i)));

    // Full parameter buffers exist only while a unit runs; the reduce_grads() guard; eval's
    // per-row answer tally.
    const std::vector<Batch> batches = batches_for(c, world, 0);
    const StepStats s = sharded.forward_backward(batches.front(), 1e-3f);
    for (const ModelUnit& u : sharded.units()) CHECK_FALSE(u.shard->has_full());
    AnswerTally tally;
    const StepStats e = sharded.forward_only(batches.front(), &tally);
    for (const ModelUnit& u : sharded.units()) CHECK_FALSE(u.shard->has_full());
    CHECK(e.loss_sum == s.loss_sum);  // the same forward computation
    CHECK(e.answer_correct == s.answer_correct);
    int64_t tallied = 0;
    for (int64_t t : tally.total) tallied += t;
    CHECK(tallied == e.answer_tokens);
    sharded.reduce_grads();
    CHECK_THROWS_AS(sharded.forward_backward(batches.front(), 1e-3f), Error);
    sharded.zero_grads();
    for (const ModelUnit& u : sharded.units())
      for (float g : u.shard->grad_span()) REQUIRE(g == 0.0f);
  }
}

// Finite differences of the whole model in float32. A single coordinate's derivative here is
// ~1e-3 and the float32 loss carries ~1e-7 of rounding noise, so coordinate-wise differences
// would measure noise. Instead, per unit: the directional derivative along a unit vector u
// supported on a sample of 32 coordinates (u = the sampled gradient's direction, and u random),
// central differences with step 1e-2 along u. Truncation error ~ step^2 * L''' ~ 1e-4 of the
// slope and rounding ~ 1e-7 / 1e-2 = 1e-5 absolute; a wrong term in any layer's backward is O(1)
// of the slope. Required: |fd - <g, u>| <= 1e-2 * |g restricted to the sample|.
TEST_CASE("Transformer: whole-model directional finite differences on one rank", "[model]") {
  for (bool tied : {false, true})
    for (Checkpointing ck : {Checkpointing::None, Checkpointing::Layer}) {
      CAPTURE(tied, checkpointing_name(ck));
      TrainConfig c = tiny_config();
      c.model.tie_embeddings = tied;
      c.model.checkpointing = ck;
      Mesh mesh(one_rank(), MPI_COMM_SELF);
      Transformer model(c, mesh, cpu_backend());
      randomize(model, 21);
      const Batch b = batches_for(c, mesh, 1).front();
      const double W = Transformer::loss_weight(b);
      REQUIRE(W > 100);
      model.forward_backward(b, float(1.0 / W));
      auto loss = [&] { return model.forward_only(b).loss_sum / W; };
      for (size_t i = 0; i < model.units().size(); ++i) {
        ModelUnit& u = model.units()[i];
        CAPTURE(u.name);
        const VecF g = vec_of(model.gather_unit(i, true));
        std::span<float> p = u.shard->param_span();  // the whole unit on one rank
        REQUIRE(p.size() == g.size());
        // Up to 32 distinct coordinates spread over the unit (a stride that visits every
        // tensor); all of them for a unit this small (the tied head is one norm vector).
        std::vector<size_t> idx;
        for (size_t k = 0; k < std::min<size_t>(32, p.size()); ++k)
          idx.push_back(p.size() <= 32 ? k : (k * 7919 + 13) % p.size());
        std::sort(idx.begin(), idx.end());
        REQUIRE(std::adjacent_find(idx.begin(), idx.end()) == idx.end());
        Tensor r = Tensor::empty({int64_t(idx.size())}, DType::F32);
        fill_normal(r, 100 + i);
        double gnorm = 0;
        for (size_t k : idx) gnorm += double(g[k]) * g[k];
        gnorm = std::sqrt(gnorm);
        REQUIRE(gnorm > 1e-4);
        for (int dir = 0; dir < 2; ++dir) {
          std::vector<double> v(idx.size());
          double vn = 0;
          for (size_t k = 0; k < idx.size(); ++k) {
            v[k] = dir == 0 ? g[idx[k]] : r.data<float>()[k];
            vn += v[k] * v[k];
          }
          double analytic = 0;
          for (size_t k = 0; k < idx.size(); ++k) {
            v[k] /= std::sqrt(vn);
            analytic += v[k] * g[idx[k]];
          }
          const VecF saved(p.begin(), p.end());
          const double h = 1e-2;
          for (size_t k = 0; k < idx.size(); ++k) p[idx[k]] = float(saved[idx[k]] + h * v[k]);
          const double up = loss();
          for (size_t k = 0; k < idx.size(); ++k) p[idx[k]] = float(saved[idx[k]] - h * v[k]);
          const double down = loss();
          std::copy(saved.begin(), saved.end(), p.begin());
          const double fd = (up - down) / (2 * h);
          CAPTURE(dir, analytic, fd, gnorm);
          CHECK(std::abs(fd - analytic) <= 1e-2 * gnorm);
        }
      }
    }
}

// Loss and gradients of one step agree across implementations and meshes within 1e-5: the loss
// relative, each unit's gradient as max |diff| / max |reference| (float32 summation orders
// differ between tiles, rings and reduce-scatters; a wrong shard or a double count is O(1)).
// Checkpointing is compared bitwise (same operations on the same inputs).
TEST_CASE("Transformer: same loss and gradients for every attention and mesh", "[model]") {
  const int N = world_size();
  const GradRun ref = grad_run(tiny_config(AttentionImpl::Vanilla), one_rank(), MPI_COMM_SELF);
  REQUIRE(ref.stats.token_weight > 0);
  REQUIRE(ref.stats.answer_tokens == 4 * 2);  // 4 sequences, 2 answer digits each
  auto compare = [&](const GradRun& r) {
    CHECK(r.stats.token_weight == ref.stats.token_weight);
    CHECK(r.stats.answer_tokens == ref.stats.answer_tokens);
    CHECK(r.stats.answer_correct == ref.stats.answer_correct);
    CHECK(std::abs(r.stats.mean_loss() - ref.stats.mean_loss()) <=
          1e-5 * std::abs(ref.stats.mean_loss()));
    REQUIRE(r.grads.size() == ref.grads.size());
    for (size_t i = 0; i < r.grads.size(); ++i) {
      CAPTURE(i);
      CHECK(r.params[i] == ref.params[i]);
      CHECK(max_rel_diff(r.grads[i], ref.grads[i]) < 1e-5);
    }
  };
  SECTION("blockwise, one rank") {
    compare(grad_run(tiny_config(AttentionImpl::Blockwise), one_rank(), MPI_COMM_SELF));
  }
  SECTION("gradient accumulation over 2 micro-batches, one rank") {
    TrainConfig c = tiny_config();
    c.train.micro_batches = 2;
    compare(grad_run(c, one_rank(), MPI_COMM_SELF));
  }
  SECTION("ring over every rank, each layout") {
    for (RingLayout layout : {RingLayout::Contiguous, RingLayout::Striped, RingLayout::Zigzag}) {
      CAPTURE(layout_name(layout));
      compare(grad_run(tiny_config(AttentionImpl::Ring, layout), MeshShape{1, 1, N, 1},
                       MPI_COMM_WORLD));
    }
  }
  SECTION("FSDP over every rank") {
    compare(grad_run(tiny_config(), MeshShape{1, N, 1, 1}, MPI_COMM_WORLD));
  }
  SECTION("data parallel over every rank") {
    compare(grad_run(tiny_config(), MeshShape{N, 1, 1, 1}, MPI_COMM_WORLD));
  }
  SECTION("mixed dp x fsdp x sp") {
    if (N == 4) {
      compare(grad_run(tiny_config(AttentionImpl::Ring), MeshShape{1, 2, 2, 1}, MPI_COMM_WORLD));
      compare(grad_run(tiny_config(AttentionImpl::Ring), MeshShape{2, 1, 2, 1}, MPI_COMM_WORLD));
    }
  }
  SECTION("activation checkpointing: bitwise equal, ring over every rank, tied head") {
    TrainConfig c = tiny_config(AttentionImpl::Ring);
    c.model.tie_embeddings = true;
    const GradRun none = grad_run(c, MeshShape{1, 1, N, 1}, MPI_COMM_WORLD);
    c.model.checkpointing = Checkpointing::Layer;
    const GradRun layer = grad_run(c, MeshShape{1, 1, N, 1}, MPI_COMM_WORLD);
    CHECK(none.stats.loss_sum == layer.stats.loss_sum);
    for (size_t i = 0; i < none.grads.size(); ++i) CHECK(none.grads[i] == layer.grads[i]);
  }
}

TEST_CASE("Transformer: optimizer steps reduce the loss; identical seeds give identical runs",
          "[model]") {
  const int N = world_size();
  // dp and sp both in play when there are ranks for them.
  const MeshShape shape = N == 4 ? MeshShape{2, 1, 2, 1} : MeshShape{N, 1, 1, 1};
  struct Curve {
    std::vector<double> loss, norm;
    std::vector<VecF> params;
  };
  auto train = [&] {
    TrainConfig c = tiny_config(AttentionImpl::Ring);
    c.train.grad_clip = 1.0;
    Mesh mesh(shape);
    Transformer model(c, mesh, cpu_backend());
    const std::vector<Batch> batches = batches_for(c, mesh, 0);  // one fixed batch
    const double W = global_weight(batches, mesh);
    Curve curve;
    for (int64_t t = 1; t <= 6; ++t) {
      StepStats s;
      for (const Batch& b : batches) s += model.forward_backward(b, float(1.0 / W));
      s.all_reduce(mesh.world());
      const OptimizerResult r = model.optimizer_step(t);
      CHECK(r.finite);
      CHECK(r.lr == Approx(c.optim.min_lr + (c.optim.lr - c.optim.min_lr) * 0.5 *
                                                (1 + std::cos(M_PI * double(t) / 10.0))));
      curve.loss.push_back(s.mean_loss());
      curve.norm.push_back(r.grad_norm);
    }
    curve.loss.push_back(model.forward_only(batches.front()).loss_sum);
    for (size_t i = 0; i < model.units().size(); ++i)
      curve.params.push_back(vec_of(model.gather_unit(i)));
    return curve;
  };
  const Curve a = train(), b = train();
  CAPTURE(a.loss);
  CHECK(a.loss[5] < a.loss[0] - 0.2);  // log(17) = 2.83 at the start; the unigram is learnt fast
  CHECK(a.loss == b.loss);
  CHECK(a.norm == b.norm);
  CHECK(a.params == b.params);
}

TEST_CASE("Transformer: forward_logits gives forward_only's loss, f32 and bf16", "[model]") {
  for (DType dtype : {DType::F32, DType::BF16}) {
    INFO("model.dtype " << dtype_name(dtype));
    TrainConfig c = tiny_config();
    c.model.dtype = dtype;
    Mesh mesh(one_rank(), MPI_COMM_SELF);
    Transformer model(c, mesh, cpu_backend());
    randomize(model, 5);
    const Batch b = batches_for(c, mesh, 2).front();
    const double want = model.forward_only(b).loss_sum;
    // The loss of the logits, in float64 on the host: the same head GEMM (bf16 operands under
    // bf16), so only the order of the float64 sums differs. A head run in float32 while the
    // loss path ran bf16 would differ by about 1e-4 relative.
    const Tensor logits = model.forward_logits(b);
    const int64_t rows = b.batch() * b.local_len(), V = c.model.vocab_size;
    REQUIRE(logits.numel() == rows * V);
    double got = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t t = b.targets.data<int32_t>()[r];
      const float w = b.loss_mask.data<float>()[r];
      if (t == kIgnoreIndex || w == 0.0f) continue;
      const float* x = logits.data<float>() + r * V;
      double m = x[0];
      for (int64_t j = 1; j < V; ++j) m = std::max(m, double(x[j]));
      double s = 0;
      for (int64_t j = 0; j < V; ++j) s += std::exp(double(x[j]) - m);
      got += double(w) * (m + std::log(s) - double(x[t]));
    }
    REQUIRE(want > 0);
    CHECK(std::abs(got - want) <= 1e-9 * want);
  }
}

TEST_CASE("Transformer: a batch token or target outside the vocabulary is refused on the host",
          "[model]") {
  // The GPU's loss kernels take the targets as given (checking them there would wait for the
  // device once per loss chunk), so the batch is checked before anything runs.
  TrainConfig c = tiny_config();
  Mesh mesh(one_rank(), MPI_COMM_SELF);
  Transformer model(c, mesh, cpu_backend());
  const Batch good = batches_for(c, mesh, 1).front();
  const int64_t V = c.model.vocab_size, Sl = good.local_len();
  REQUIRE(good.targets.numel() > Sl + 3);
  CHECK(model.forward_only(good).loss_sum > 0);
  Batch bad = good;
  bad.targets = good.targets.clone();
  bad.targets.data<int32_t>()[Sl + 3] = int32_t(V);
  CHECK_THROWS_WITH(
      model.forward_backward(bad, 1.0f),
      Catch::Contains("batch target " + std::to_string(V) + " at row 1, position 3") &&
          Catch::Contains("outside the vocabulary"));
  bad.targets.data<int32_t>()[Sl + 3] = -2;
  CHECK_THROWS_WITH(model.forward_only(bad), Catch::Contains("batch target -2"));
  bad = good;
  bad.tokens = good.tokens.clone();
  bad.tokens.data<int32_t>()[2] = -1;  // -1 ignores a target, never a token
  CHECK_THROWS_WITH(model.forward_only(bad),
                    Catch::Contains("batch token -1 at row 0, position 2"));
  // The model is still usable afterwards.
  CHECK(model.forward_only(good).loss_sum > 0);
}
