#include "model/transformer.h"

#include <fmt/format.h>

#include <bit>
#include <cstring>

#include "comm/host_staged_communicator.h"
#include "core/error.h"

namespace ringattn {

namespace {

// The final norm and LM head weights of the head unit, gathered for one use (with tied embeddings
// the head is the embedding table, which FSDP shards with the embedding unit), and the matching
// full gradients when asked. The views are dropped before the units are released (release_full
// frees the buffer only when nobody holds a view), at the end of the scope.
class GatheredHead {
 public:
  GatheredHead(ModelUnit& head, FlatShard& embedding, bool tied)
      : head_(head),
        emb_(embedding),
        tied_(tied),
        norm_(head.layout.find("model.norm.weight").offset),
        norm_numel_(head.layout.find("model.norm.weight").numel()),
        lm_(tied ? 0 : head.layout.find("lm_head.weight").offset),
        hp_(head.shard->gather_full()),
        ep_(tied ? embedding.gather_full() : Tensor()) {}
  ~GatheredHead() {
    hp_ = ep_ = hg_ = eg_ = norm_f32_ = Tensor();
    head_.shard->release_full();
    if (tied_) emb_.release_full();
  }
  GatheredHead(const GatheredHead&) = delete;
  GatheredHead& operator=(const GatheredHead&) = delete;

  // The norm's weight as float32 (widened from a bf16 gather); the head's as gathered.
  LmHead::Weights weights() {
    const F32OrBf16 hp = F32OrBf16::of(hp_);
    return {as_f32(head_.shard->group().backend(), hp.offset(norm_), norm_numel_, norm_f32_,
                   "final norm weight (f32)"),
            tied_ ? F32OrBf16::of(ep_) : hp.offset(lm_)};
  }
  LmHead::Grads grads() {
    hg_ = head_.shard->full_grad();
    if (tied_) eg_ = emb_.full_grad();
    return {hg_.data<float>() + norm_, tied_ ? eg_.data<float>() : hg_.data<float>() + lm_};
  }

 private:
  ModelUnit& head_;
  FlatShard& emb_;
  bool tied_;
  int64_t norm_, norm_numel_, lm_;  // offsets in the head unit, the norm's size
  Tensor hp_, ep_, hg_, eg_, norm_f32_;
};

}  // namespace

// ---- StepStats ----------------------------------------------------------------------------------

StepStats& StepStats::operator+=(const StepStats& o) {
  loss_sum += o.loss_sum;
  token_weight += o.token_weight;
  answer_correct += o.answer_correct;
  answer_tokens += o.answer_tokens;
  return *this;
}

void StepStats::all_reduce(Communicator& world) {
  // Communicators have no float64 type, and a float32 sum would lose the loss's low digits: the
  // doubles travel as their bit patterns (I64) in an all-gather, and every rank adds the parts
  // in rank order, so every rank gets bitwise the same totals whatever MPI's reduction order.
  const int n = world.size();
  std::vector<int64_t> mine{std::bit_cast<int64_t>(loss_sum), std::bit_cast<int64_t>(token_weight),
                            answer_correct, answer_tokens};
  std::vector<int64_t> all(mine.size() * size_t(n));
  world.all_gather(mine.data(), all.data(), mine.size(), DType::I64);
  StepStats sum;
  for (int r = 0; r < n; ++r) {
    const int64_t* p = all.data() + size_t(r) * mine.size();
    sum.loss_sum += std::bit_cast<double>(p[0]);
    sum.token_weight += std::bit_cast<double>(p[1]);
    sum.answer_correct += p[2];
    sum.answer_tokens += p[3];
  }
  *this = sum;
}

// ---- construction -------------------------------------------------------------------------------

Transformer::Transformer(const TrainConfig& cfg, Mesh& mesh, Backend& backend,
                         FsdpGroup::Mode fsdp_mode)
    : cfg_(cfg), mesh_(mesh), be_(backend), dims_(ModelDims::from_config(cfg.model)) {
  dims_.validate();
  adamw_.beta1 = cfg.optim.beta1;
  adamw_.beta2 = cfg.optim.beta2;
  adamw_.eps = cfg.optim.eps;
  adamw_.weight_decay = cfg.optim.weight_decay;
  adamw_.validate();
  schedule_.lr = cfg.optim.lr;
  schedule_.min_lr = cfg.optim.min_lr;
  schedule_.warmup_steps = cfg.train.warmup_steps;
  schedule_.total_steps = cfg.train.steps;
  schedule_.validate();

  group_ =
      std::make_unique<FsdpGroup>(on_device(mesh.fsdp_sp(), mesh.device_fsdp_sp()), be_, fsdp_mode);
  dp_ = &on_device(mesh.axis(Axis::DP), mesh.device_axis(Axis::DP));
  // The token tables go over the host MPI communicator: no wait for the device per micro-batch.
  attention_ = std::make_unique<Attention>(
      attention_options(cfg), be_, &on_device(mesh.axis(Axis::SP), mesh.device_axis(Axis::SP)),
      &mesh.axis(Axis::SP));
  embedding_ = Embedding{dims_.vocab, dims_.hidden};
  const DecoderOptions dopt{cfg.model.ffn_chunk, cfg.model.checkpointing};
  for (int l = 0; l < dims_.layers; ++l)
    layers_.push_back(std::make_unique<DecoderLayer>(dims_, l, be_, *attention_, dopt));
  head_ = std::make_unique<LmHead>(dims_, be_, cfg.model.loss_chunk);

  auto add_unit = [&](std::string name, ParamLayout layout) {
    ModelUnit u;
    u.name = std::move(name);
    u.layout = std::move(layout);
    u.shard = std::make_unique<FlatShard>(*group_, u.layout.numel(), u.name);
    // bf16: the layers run on bf16 weights, gathered at half the bytes (the masters stay f32).
    u.shard->set_gather_dtype(cfg.model.dtype);
    // The full unit on every rank, then this rank's slice: the same model whatever the mesh.
    std::vector<float> full(size_t(u.layout.numel()));
    init_parameters(u.layout, full.data(), cfg.seed);
    u.shard->load_full(full.data(), int64_t(full.size()));
    set_no_decay(u);
    units_.push_back(std::move(u));
  };
  add_unit("embedding", embedding_layout(dims_));
  for (int l = 0; l < dims_.layers; ++l)
    add_unit(fmt::format("layer.{}", l), layers_[size_t(l)]->layout());
  add_unit("head", head_layout(dims_));
}

Communicator& Transformer::on_device(Communicator& host, Communicator* device) {
  if (host.device() == be_.device()) return host;
  if (device && device->device() == be_.device()) return *device;  // NCCL
  // A host (MPI) communicator for a device backend: stage through host memory.
  staged_.push_back(make_host_staged_communicator(host, be_.allocator()));
  return *staged_.back();
}

Transformer::~Transformer() {
  // Jobs still queued (reduce-scatters of the last micro-batch) use the shards' buffers and are
  // collectives the other ranks take part in: let them finish before anything is freed.
  try {
    for (ModelUnit& u : units_) u.shard->wait_grads();
  } catch (...) {
  }
  if (group_) group_->synchronize();
}

void Transformer::set_no_decay(ModelUnit& unit) {
  // RMSNorm weights multiply activations (their neutral value is 1, not 0): decaying them
  // towards 0 would fight the normalisation, so they get none, as in LLaMA training recipes.
  std::vector<IndexRange> ranges;
  for (const ParamEntry& e : unit.layout.entries())
    if (e.name.find("norm") != std::string::npos)
      ranges.push_back({e.offset, e.offset + e.numel()});
  unit.shard->set_no_decay(ranges);
}

// ---- batches ------------------------------------------------------------------------------------

double Transformer::loss_weight(const Batch& batch) {
  // Summed in float64 in token order: the same value on every call for the same batch.
  double w = 0;
  const float* m = batch.loss_mask.data<float>();
  for (int64_t i = 0; i < batch.loss_mask.numel(); ++i) w += double(m[i]);
  return w;
}

void Transformer::check_batch(const Batch& batch) const {
  RA_CHECK(batch.tokens.defined() && batch.tokens.ndim() == 2 &&
               batch.tokens.dtype() == DType::I32 && batch.tokens.is_contiguous(),
           "model: batch tokens must be a contiguous [B, Sl] I32 tensor");
  const int64_t B = batch.tokens.dim(0), Sl = batch.tokens.dim(1);
  RA_CHECK(Sl == batch.local_len() && Sl > 0, "model: batch has {} positions for {} tokens per row",
           batch.local_len(), Sl);
  RA_CHECK(batch.targets.defined() && batch.targets.dtype() == DType::I32 &&
               batch.targets.numel() == B * Sl && batch.targets.is_contiguous(),
           "model: batch targets must be a contiguous [B, Sl] I32 tensor");
  // Token ids and targets are checked here, on the host, once per batch: the GPU's loss kernels
  // take them as given (an id check there would wait for the device once per loss chunk).
  const int32_t* tok = batch.tokens.data<int32_t>();
  const int32_t* tgt = batch.targets.data<int32_t>();
  for (int64_t i = 0; i < B * Sl; ++i) {
    RA_CHECK(tok[i] >= 0 && tok[i] < dims_.vocab,
             "model: batch token {} at row {}, position {} is outside the vocabulary [0, {})",
             tok[i], i / Sl, i % Sl, dims_.vocab);
    RA_CHECK(tgt[i] >= -1 && tgt[i] < dims_.vocab,
             "model: batch target {} at row {}, position {} is outside the vocabulary [0, {}) "
             "(-1 = not counted)",
             tgt[i], i / Sl, i % Sl, dims_.vocab);
  }
  RA_CHECK(batch.loss_mask.defined() && batch.loss_mask.dtype() == DType::F32 &&
               batch.loss_mask.numel() == B * Sl && batch.loss_mask.is_contiguous(),
           "model: batch loss_mask must be a contiguous [B, Sl] F32 tensor");
  RA_CHECK(!batch.answer_mask.defined() ||
               (batch.answer_mask.dtype() == DType::U8 && batch.answer_mask.numel() == B * Sl &&
                batch.answer_mask.is_contiguous()),
           "model: batch answer_mask must be a contiguous [B, Sl] U8 tensor");
}

ShardTokens Transformer::shard_tokens(const Batch& batch) const {
  ShardTokens t;
  t.batch = batch.tokens.dim(0);
  t.seq = batch.tokens.dim(1);
  t.positions = batch.positions;
  // Segment ids only steer the attention's tile plans and masks, which are made on the host:
  // they stay in host memory. Every sp rank's tokens are gathered here once for all layers, so
  // that no ring step waits for the device (collective over sp with the ring).
  t.segment_ids = batch.segment_ids;
  t.ring_tokens = attention_->share_tokens(t.positions, t.segment_ids, t.batch);
  return t;
}

Transformer::DeviceBatch Transformer::upload(const Batch& batch) const {
  // The data pipeline makes host tensors; on the CPU these are the same tensors (no copy).
  const Device d = be_.device();
  return {batch.tokens.to_device(d, "tokens"), batch.targets.to_device(d, "targets"),
          batch.loss_mask.to_device(d, "loss mask")};
}

StepStats Transformer::count_answers(const Batch& batch, const std::vector<uint8_t>& correct_rows,
                                     AnswerTally* tally) const {
  StepStats s;
  s.token_weight = loss_weight(batch);
  const int64_t B = batch.tokens.dim(0), Sl = batch.tokens.dim(1);
  if (tally) tally->reset(B);
  if (!batch.answer_mask.defined()) return s;
  const uint8_t* am = batch.answer_mask.data<uint8_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < Sl; ++i) {
      const size_t r = size_t(b * Sl + i);
      if (!am[r]) continue;
      ++s.answer_tokens;
      s.answer_correct += correct_rows[r] ? 1 : 0;
      if (tally) tally->add(b, int(am[r]), correct_rows[r] != 0);
    }
  return s;
}

// ---- forward and backward -----------------------------------------------------------------------

Tensor Transformer::run_forward(const DeviceBatch& batch, const ShardTokens& t,
                                std::vector<Tensor>* inputs, std::vector<DecoderCache>* caches) {
  const int64_t n = t.rows(), L = dims_.layers;
  const bool training = inputs != nullptr;
  // Every rank issues the same gathers in the same order (the FSDP ordering contract): unit i is
  // gathered (or its prefetch waited for), then unit i + 1's gather is queued so that it moves
  // while unit i computes.
  FlatShard& emb = *units_[0].shard;
  Tensor x = Tensor::empty({t.batch, t.seq, dims_.hidden}, DType::F32, be_.device(), "embeddings");
  {
    Tensor e = emb.gather_full();
    units_[1].shard->prefetch_full();
    // A bf16 table's rows are widened as they are looked up: no float32 copy of the table.
    embedding_.forward(be_, F32OrBf16::of(e), batch.tokens.data<int32_t>(), n, x.data<float>());
  }
  emb.release_full();
  for (int64_t l = 0; l < L; ++l) {
    FlatShard& s = *units_[size_t(1 + l)].shard;
    Tensor p = s.gather_full();
    units_[size_t(2 + l)].shard->prefetch_full();
    if (l + 1 == L && dims_.tie_embeddings) emb.prefetch_full();  // the tied head reads it
    DecoderCache scratch;
    DecoderCache& cache = caches ? (*caches)[size_t(l)] : scratch;
    Tensor y = layers_[size_t(l)]->forward(F32OrBf16::of(p), x, t, cache);
    if (training) (*inputs)[size_t(l)] = std::move(x);  // backward needs the layer's input
    x = std::move(y);
    p = Tensor();
    // The last layer runs first in backward: training keeps its parameters instead of
    // releasing and gathering them again a moment later.
    if (!(training && l + 1 == L)) s.release_full();
  }
  return x;
}

StepStats Transformer::forward_backward(const Batch& batch, float grad_scale) {
  RA_CHECK(!grads_reduced_,
           "model: forward_backward after reduce_grads(): call zero_grads() (or "
           "optimizer_step()) first");
  check_batch(batch);
  const ShardTokens t = shard_tokens(batch);
  const DeviceBatch db = upload(batch);
  const int64_t n = t.rows(), L = dims_.layers;
  std::vector<Tensor> inputs(static_cast<size_t>(L));
  std::vector<DecoderCache> caches(static_cast<size_t>(L));
  Tensor x = run_forward(db, t, &inputs, &caches);

  // Head: loss and its gradient in one pass (LmHead fuses them chunk by chunk).
  ModelUnit& hu = units_[head_unit()];
  FlatShard& emb = *units_[0].shard;
  const bool tied = dims_.tie_embeddings;
  Tensor grad =
      Tensor::empty({t.batch, t.seq, dims_.hidden}, DType::F32, be_.device(), "residual grad");
  std::vector<uint8_t> correct(static_cast<size_t>(n), 0);
  LossStats ls;
  {
    GatheredHead h(hu, emb, tied);
    ls = head_->forward_backward(h.weights(), h.grads(), x.data<float>(),
                                 db.targets.data<int32_t>(), db.loss_mask.data<float>(), n,
                                 grad_scale, grad.data<float>(), correct.data());
  }
  x = Tensor();
  hu.shard->start_reduce_scatter_grads();

  // Layers in reverse: gather (the last one is still there), prefetch the one below, accumulate
  // into the full gradient, reduce-scatter it on the helper thread, free everything of the layer.
  for (int64_t l = L - 1; l >= 0; --l) {
    FlatShard& s = *units_[size_t(1 + l)].shard;
    {
      Tensor p = s.gather_full();
      if (l > 0) units_[size_t(l)].shard->prefetch_full();
      Tensor g = s.full_grad();
      layers_[size_t(l)]->backward(F32OrBf16::of(p), g.data<float>(), inputs[size_t(l)], t,
                                   caches[size_t(l)], grad);
    }
    inputs[size_t(l)] = Tensor();
    s.release_full();
    s.start_reduce_scatter_grads();
  }

  // The embedding's backward is a scatter-add of the residual gradient: it needs the token ids,
  // not the table, so nothing is gathered.
  {
    Tensor g = emb.full_grad();
    embedding_.backward(be_, db.tokens.data<int32_t>(), grad.data<float>(), n, g.data<float>());
  }
  emb.start_reduce_scatter_grads();

  StepStats s = count_answers(batch, correct, nullptr);
  s.loss_sum = ls.loss_sum;
  return s;
}

StepStats Transformer::forward_only(const Batch& batch, AnswerTally* tally) {
  check_batch(batch);
  const ShardTokens t = shard_tokens(batch);
  const DeviceBatch db = upload(batch);
  const int64_t n = t.rows();
  Tensor x = run_forward(db, t, nullptr, nullptr);
  ModelUnit& hu = units_[head_unit()];
  FlatShard& emb = *units_[0].shard;
  const bool tied = dims_.tie_embeddings;
  std::vector<uint8_t> correct(static_cast<size_t>(n), 0);
  LossStats ls;
  {
    GatheredHead h(hu, emb, tied);
    ls = head_->forward(h.weights(), x.data<float>(), db.targets.data<int32_t>(),
                        db.loss_mask.data<float>(), n, correct.data());
  }
  StepStats s = count_answers(batch, correct, tally);
  s.loss_sum = ls.loss_sum;
  return s;
}

Tensor Transformer::forward_logits(const Batch& batch) {
  check_batch(batch);
  const ShardTokens t = shard_tokens(batch);
  const int64_t n = t.rows();
  Tensor x = run_forward(upload(batch), t, nullptr, nullptr);
  ModelUnit& hu = units_[head_unit()];
  FlatShard& emb = *units_[0].shard;
  const bool tied = dims_.tie_embeddings;
  Tensor logits = Tensor::empty({t.batch, t.seq, dims_.vocab}, DType::F32, be_.device(), "logits");
  {
    GatheredHead h(hu, emb, tied);
    head_->logits(h.weights(), x.data<float>(), n, logits.data<float>());
  }
  return logits.to_device(Device::CPU, "logits");
}

// ---- optimizer ----------------------------------------------------------------------------------

OptimizerResult Transformer::optimizer_step(int64_t step) {
  reduce_grads();
  std::vector<FlatShard*> shards;
  for (ModelUnit& u : units_) shards.push_back(u.shard.get());
  // The norm's partial sums are host doubles: reduced over the mesh's MPI group (the FSDP
  // group's own communicator may be NCCL, which takes device buffers only).
  const GradNormResult norm = clip_grad_norm(shards, cfg_.train.grad_clip, &mesh_.fsdp_sp());
  OptimizerResult r;
  r.grad_norm = norm.norm;
  r.finite = norm.finite;
  r.clipped = norm.clipped();
  if (norm.finite) {
    r.lr = schedule_.lr_at(step);
    for (FlatShard* s : shards) s->adamw_step(adamw_, step, r.lr);
  }
  zero_grads();
  return r;
}

void Transformer::reduce_grads() {
  if (grads_reduced_) return;
  // Sum, not mean: each replica's gradient is already divided by the global token weight (see
  // the header), so the replicas' gradients are parts of one sum, like the fsdp ranks' are.
  for (ModelUnit& u : units_) {
    if (mesh_.size(Axis::DP) > 1)
      u.shard->all_reduce_grads(*dp_, /*mean=*/false);
    else
      u.shard->wait_grads();
  }
  grads_reduced_ = true;
}

void Transformer::zero_grads() {
  for (ModelUnit& u : units_) u.shard->zero_grads();
  grads_reduced_ = false;
}

// ---- units --------------------------------------------------------------------------------------

Tensor Transformer::gather_unit(size_t unit, bool grads) {
  RA_CHECK(unit < units_.size(), "model: no unit {} (the model has {})", unit, units_.size());
  FlatShard& s = *units_[unit].shard;
  s.wait_grads();
  // The group's communicator is free only once its helper thread is idle.
  group_->synchronize();
  const ShardLayout& l = s.layout();
  Tensor full = Tensor::empty({l.padded_numel}, DType::F32, be_.device(),
                              units_[unit].name + (grads ? " gathered grads" : " gathered params"));
  const Tensor& src = grads ? s.grads() : s.params();
  be_.synchronize();  // the shard may have been written by queued operations (AdamW)
  group_->comm().all_gather(src.data<float>(), full.data<float>(), size_t(l.shard_numel),
                            DType::F32);
  const Tensor real = full.slice(0, 0, l.numel);
  return real.device() == Device::CPU ? real.clone() : real.to_device(Device::CPU, "gathered");
}

std::vector<std::pair<std::string, Tensor>> Transformer::gather_named(size_t unit) {
  const Tensor full = gather_unit(unit);
  std::vector<std::pair<std::string, Tensor>> out;
  for (const ParamEntry& e : units_[unit].layout.entries()) {
    Tensor t = Tensor::empty(e.shape, DType::F32, Device::CPU, e.name);
    std::memcpy(t.data<float>(), full.data<float>() + e.offset, size_t(e.numel()) * sizeof(float));
    out.emplace_back(e.name, std::move(t));
  }
  return out;
}

void Transformer::load_unit(size_t unit, const float* full, int64_t n) {
  RA_CHECK(unit < units_.size(), "model: no unit {} (the model has {})", unit, units_.size());
  units_[unit].shard->load_full(full, n);
}

}  // namespace ringattn
