#include "model/trainer.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "comm/agreed_error.h"
#include "comm/mpi_env.h"
#include "comm/ordered_sum.h"
#include "core/allocator.h"
#include "core/backend.h"
#include "core/debug_faults.h"
#include "core/error.h"
#include "core/log.h"
#include "model/data/make_source.h"
#include "model/progress.h"
#include "model/stop_signal.h"

namespace ringattn {

namespace fs = std::filesystem;

namespace {

int64_t max_over(Communicator& comm, int64_t x) {
  comm.all_reduce(&x, 1, DType::I64, ReduceOp::Max);
  return x;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Backend& backend_for(const TrainConfig& cfg) {
  return backend_for(cfg.device);
}

Backend& backend_for(Device device) {
  if (device == Device::CPU) return cpu_backend();
  RA_CHECK(cuda_compiled(),
           "device = cuda, but this build has no CUDA backend (configure with RINGATTN_CUDA=ON on "
           "a machine with nvcc)");
  const int gpus = cuda_device_count();
  RA_CHECK(gpus > 0,
           // Without the rank's number (the log line has it): ranks that fail alike say it once.
           "device = cuda, but this rank sees no usable CUDA device (no GPU, or the driver is "
           "missing or too old)");
  // One rank per GPU when there are enough; ranks beyond that share GPUs (MPI transport only:
  // NCCL refuses two ranks on one device).
  return cuda_backend(MpiEnv::local_rank() % gpus);
}

Trainer::Trainer(const TrainConfig& cfg, Mesh& mesh, TrainerOptions options)
    : cfg_(cfg), mesh_(mesh), opt_(std::move(options)) {
  if (!opt_.backend) opt_.backend = &backend_for(cfg_);
  // Every rank opens the data alike (a missing file is missing for all): one message for all of
  // them, or the one rank's that failed (comm/agreed_error.h). No collective inside.
  agreed_across_ranks(&mesh_.world(), "opening the training data", [&] {
    source_ = make_batch_source(cfg_);
    source_->check_seq_len(cfg_.train.seq_len);
    for (int64_t s : cfg_.train.curriculum_seq_lens) source_->check_seq_len(s);
    for (int64_t s : cfg_.eval_seq_lens()) source_->check_seq_len(s);
  });
  // Building the model is local (no collective): a failure, alike on every rank or not, is agreed.
  agreed_across_ranks(&mesh_.world(), "building the model", [&] {
    try {
      model_ = std::make_unique<Transformer>(cfg_, mesh_, *opt_.backend);
    } catch (const Error& e) {
      if (cfg_.memory_limit_gb <= 0) throw;
      RA_FAIL("the model does not fit memory_limit_gb = {} GiB per rank: building it failed: {}",
              cfg_.memory_limit_gb, e.what());
    }
  });
  // A model that cannot fit is said before the first step, with the estimate behind the verdict.
  // Ranks may differ (their shards do): agreed, so that none goes on alone.
  const size_t limit = cfg_.memory_limit_bytes();
  agreed_across_ranks(&mesh_.world(), "checking its memory plan", [&] {
    RA_CHECK(limit == 0 || memory_estimate_bytes() <= limit,
             "the model does not fit memory_limit_gb = {} GiB per rank: {}. Lower "
             "train.batch_size or train.seq_len, set model.checkpointing = layer, use more ranks "
             "(mesh.fsdp, mesh.sp), or raise memory_limit_gb",
             cfg_.memory_limit_gb, memory_plan());
  });
  if (const std::string w = device_memory_warning(); !w.empty()) log::warn("{}", w);
  state_.seed = cfg_.seed;
  state_.train_steps = cfg_.train.steps;
  state_.warmup_steps = cfg_.train.warmup_steps;
  state_.cpu_threads = cfg_.device == Device::CPU ? cpu_threads() : 0;
  if (opt_.peak_flops <= 0) opt_.peak_flops = cfg_.peak_tflops * 1e12;
}

Trainer::~Trainer() = default;

std::string Trainer::checkpoints_dir() const {
  return (fs::path(cfg_.run_dir) / "checkpoints").string();
}

double Trainer::flops_per_token() const {
  return flops_per_token(cfg_.train.seq_len);
}

double Trainer::flops_per_token(int64_t seq_len) const {
  const ModelDims& d = model_->dims();
  return 6.0 * double(model_->parameter_count()) +
         6.0 * d.layers * double(d.heads) * d.head_dim * double(seq_len);
}

size_t Trainer::memory_estimate_bytes(std::string* plan) const {
  int64_t full = 0, shard = 0, largest = 0, second = 0, layer = 0, embedding = 0;
  for (const ModelUnit& u : model_->units()) {
    full += u.layout.numel();
    shard += u.shard->layout().shard_numel;
    const int64_t padded = u.shard->layout().padded_numel;
    if (padded > largest) {
      second = largest;
      largest = padded;
    } else {
      second = std::max(second, padded);
    }
    if (u.name.rfind("layer.", 0) == 0) layer = std::max(layer, padded);
    if (u.name == "embedding") embedding = padded;
  }
  const ModelDims& d = model_->dims();
  const int64_t rows = cfg_.train.batch_size / (mesh_.size(Axis::DP) * mesh_.size(Axis::FSDP)) /
                       cfg_.train.micro_batches * (cfg_.train.seq_len / mesh_.size(Axis::SP));
  // Rough: per layer the backward keeps its input plus the caches (q, k, v, attention output
  // and statistics, the norms, the FFN input and gate/up chunks), about 8 hidden-sized rows per
  // token without checkpointing; with layer checkpointing only the inputs plus one layer's.
  const double per_layer = cfg_.model.checkpointing == Checkpointing::Layer ? 1.0 : 8.0;
  const double act =
      double(rows) * double(d.hidden) * 4.0 *
      (per_layer * d.layers + (cfg_.model.checkpointing == Checkpointing::Layer ? 8.0 : 0.0));
  const size_t b = sizeof(float), h = sizeof(uint16_t);
  const bool bf16 = cfg_.model.dtype == DType::BF16;
  // Gathered units, the larger of two moments: full parameters in the gather type (bf16 under
  // bf16: the GEMMs read them as gathered), full gradients in float32.
  // At the largest unit (the embedding or the head): its full parameters and full gradients,
  // and the next unit prefetched. In a layer's backward: its full parameters and gradients, the
  // layer below prefetched, the layer above's full gradients still held for their reduce-scatter
  // (FlatShard::start_rs retires one behind), and with tied embeddings the embedding's full
  // gradients, live from the head's backward to the embedding's.
  // (A group of one reads float32 parameters in place: FlatShard::reads_params_in_place.)
  const bool in_place = model_->units().front().shard->reads_params_in_place();
  const size_t p = bf16 ? h : in_place ? 0 : b;
  const size_t at_largest = size_t(largest) * (p + b) + size_t(second) * p;
  const size_t in_layers =
      size_t(layer) * 2 * (p + b) + (d.tie_embeddings ? size_t(embedding) * b : 0);
  const size_t gathered = std::max(at_largest, in_layers);
  // The LM head's loss chunk: float32 logits of `chunk` rows (the peak of most configurations
  // is here, in the backward, with the embedding's full gradients live); under bf16 the
  // gradient's bf16 copy for the head's GEMMs, and on the CPU the float32 widening of it and of
  // the weight that its bf16 GEMM emulation makes (core/cpu/cpu_optim.cpp).
  const size_t chunk =
      size_t(cfg_.model.loss_chunk > 0 ? std::min(cfg_.model.loss_chunk, rows) : rows);
  const size_t logits = chunk * size_t(d.vocab);
  const size_t head_weight = size_t(d.vocab) * size_t(d.hidden);
  size_t head = logits * b;
  if (bf16) head += logits * h;
  if (bf16 && cfg_.device == Device::CPU) head += (logits + head_weight) * b;
  // Ring attention over sp > 1 ranks keeps its transfers in flight: two K/V blocks (the one
  // computed on, the one arriving; bf16 under bf16) and, in backward, three float32 dK/dV
  // accumulators (computing, sending, arriving), each of the local shard's size.
  const size_t kv = size_t(rows) * size_t(d.kv_heads) * size_t(d.head_dim) * 2;
  const size_t ring = cfg_.attention.impl == AttentionImpl::Ring && mesh_.size(Axis::SP) > 1
                          ? 2 * kv * (bf16 ? h : b) + 3 * kv * b
                          : 0;
  const size_t total = 4 * size_t(shard) * b + gathered + head + ring + size_t(act);
  if (plan == nullptr) return total;
  *plan = fmt::format(
      "memory plan per rank: parameters (full model) {}; parameter + gradient shards {}; AdamW "
      "state {}; gathered units in flight ({}{}) {}; LM head and loss chunk "
      "({} rows{}) {}; {}activations (estimate) {}; total about {}",
      format_bytes(size_t(full) * b), format_bytes(2 * size_t(shard) * b),
      format_bytes(2 * size_t(shard) * b),
      at_largest >= in_layers ? "the largest unit and its gradients, the next unit"
                              : "two layers and their gradients",
      bf16 ? ", parameters in bf16" : "", format_bytes(gathered), chunk,
      bf16 ? (cfg_.device == Device::CPU ? ", bf16 operands and their CPU widening"
                                         : ", bf16 operands")
           : "",
      format_bytes(head),
      ring ? fmt::format("ring buffers in flight {}; ", format_bytes(ring)) : std::string(),
      format_bytes(size_t(act)), format_bytes(total));
  return total;
}

std::string Trainer::device_memory_warning() const {
  Backend& be = *opt_.backend;
  const size_t total = be.device_memory_total();
  if (total == 0) return {};
  be.allocator().release_cached();  // the pool's cached free blocks are not "used"
  const size_t used = be.device_memory_used();
  // What the allocator holds now (the model's shards) is part of the plan and of `used`.
  const size_t available = total - std::min(total, used) + be.allocator().live_bytes();
  const size_t planned = memory_estimate_bytes();
  if (planned <= available) return {};
  return fmt::format(
      "the memory plan needs about {} per rank, more than {} can give (it has {} free of {}, "
      "besides the {} already allocated): the first step will probably run out of memory. "
      "Lower train.batch_size or train.seq_len, set model.checkpointing = layer, or use more "
      "ranks (mesh.fsdp, mesh.sp)",
      format_bytes(planned), be.name(), format_bytes(total - std::min(total, used)),
      format_bytes(total), format_bytes(be.allocator().live_bytes()));
}

std::string Trainer::memory_plan() const {
  std::string plan;
  memory_estimate_bytes(&plan);
  return plan;
}

StepMetrics Trainer::train_step() {
  // The peak of the memory the model computes in: host memory on the CPU, the GPU's on CUDA.
  Allocator& alloc = opt_.backend->allocator();
  alloc.reset_peak();
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t data_step = state_.step;
  const int micro = int(cfg_.train.micro_batches);
  const int64_t seq_len = cfg_.train.seq_len_at(data_step);     // a curriculum stage's, or seq_len
  if (const int64_t ms = debug_fault("step_sleep_ms"); ms > 0)  // test-only: slow steps
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));

  std::vector<Batch> batches;
  batches.reserve(size_t(micro));
  double w_local = 0;
  for (int m = 0; m < micro; ++m) {
    batches.push_back(source_->get(make_batch_request(
        cfg_, mesh_, data_step, m, seq_len, Split::Train, cfg_.train.batch_size_at(data_step))));
    w_local += Transformer::loss_weight(batches.back());
  }
  const double w = ordered_sum(mesh_.world(), w_local);
  RA_CHECK(w > 0, "step {}: the batch has no token that carries loss", data_step + 1);
  float scale = float(1.0 / w);
  // Test-only fault (core/debug_faults.h): a NaN gradient on one rank at a chosen step.
  if (data_step + 1 == debug_fault("nan_grad_step") &&
      mesh_.world_rank() == debug_fault("nan_grad_rank", 0))
    scale = std::numeric_limits<float>::quiet_NaN();

  StepStats stats;
  for (Batch& b : batches) {
    stats += model_->forward_backward(b, scale);
    b = Batch{};  // frees the micro-batch before the next one
  }
  stats.all_reduce(mesh_.world());

  const int64_t t = state_.updates + 1;
  const OptimizerResult r = model_->optimizer_step(t);
  const double loss = stats.mean_loss();
  const bool finite = r.finite && std::isfinite(loss);
  if (!finite && cfg_.on_nonfinite == OnNonfinite::Abort)
    RA_FAIL(
        "step {}: non-finite {} (loss {}, gradient norm {}); stopping as on_nonfinite = abort. "
        "Lower optim.lr, raise train.warmup_steps, or set on_nonfinite = skip",
        data_step + 1, std::isfinite(loss) ? "gradient" : "loss", loss, r.grad_norm);
  if (r.finite) ++state_.updates;  // the update was applied (even if the loss alone was odd)
  if (!finite) ++state_.skipped;
  state_.step = data_step + 1;

  StepMetrics m;
  m.step = state_.step;
  m.loss = loss;
  m.lr = r.lr;
  m.grad_norm = r.grad_norm;
  m.finite = finite;
  m.seconds = seconds_since(t0);
  m.tokens_per_s = double(tokens_per_step()) / std::max(m.seconds, 1e-9);
  m.mfu = opt_.peak_flops > 0 ? flops_per_token(seq_len) * m.tokens_per_s / opt_.peak_flops : 0;
  m.seq_len = seq_len;
  m.peak_bytes = size_t(max_over(mesh_.world(), int64_t(alloc.peak_bytes())));
  m.has_answers = stats.answer_tokens > 0;
  m.answer_accuracy = stats.answer_accuracy();
  history_.push_back(m);
  return m;
}

EvalResult Trainer::evaluate(int64_t seq_len, int64_t batches) {
  source_->check_seq_len(seq_len);
  StepStats stats;
  int64_t exact = 0, answers = 0;
  Communicator& sp = mesh_.axis(Axis::SP);
  for (int64_t step = 0; step < batches; ++step)
    for (int m = 0; m < int(cfg_.train.micro_batches); ++m) {
      const Batch b =
          source_->get(make_batch_request(cfg_, mesh_, step, m, seq_len, Split::Validation));
      AnswerTally tally;
      stats += model_->forward_only(b, &tally);
      // An answer's tokens may sit on several sp ranks: sum its counts over the ring before
      // deciding whether the whole answer is right.
      if (!tally.total.empty() && sp.size() > 1) {
        sp.all_reduce(tally.correct.data(), tally.correct.size(), DType::I64, ReduceOp::Sum);
        sp.all_reduce(tally.total.data(), tally.total.size(), DType::I64, ReduceOp::Sum);
      }
      // Every sp rank now holds the same sums; count them once (sp rank 0).
      if (sp.rank() == 0) {
        answers += tally.answers();
        exact += tally.exact();
      }
    }
  stats.all_reduce(mesh_.world());
  int64_t counts[2] = {exact, answers};
  mesh_.world().all_reduce(counts, 2, DType::I64, ReduceOp::Sum);
  EvalResult e;
  e.seq_len = seq_len;
  e.loss = stats.mean_loss();
  e.answer_tokens = stats.answer_tokens;
  e.token_accuracy = stats.answer_accuracy();
  e.answers = counts[1];
  e.exact_accuracy = counts[1] > 0 ? double(counts[0]) / double(counts[1]) : 0.0;
  return e;
}

void Trainer::write_metrics(const StepMetrics& m, const std::vector<EvalResult>& evals) {
  if (!opt_.write_metrics || mesh_.world_rank() != 0) return;
  nlohmann::ordered_json j;
  j["step"] = m.step;
  j["loss"] = m.loss;
  j["lr"] = m.lr;
  j["grad_norm"] = m.grad_norm;
  j["tokens_per_s"] = m.tokens_per_s;
  j["mfu"] = m.mfu;
  j["peak_bytes"] = m.peak_bytes;
  j["seconds"] = m.seconds;
  j["seq_len"] = m.seq_len;
  if (m.has_answers) j["answer_accuracy"] = m.answer_accuracy;
  if (!m.finite) j["skipped"] = true;
  j["skipped_steps"] = state_.skipped;  // non-finite steps skipped so far (on_nonfinite = skip)
  if (!evals.empty()) {
    // The first eval length is the headline; every length is listed too.
    j["val_loss"] = evals[0].loss;
    j["val_accuracy"] = evals[0].token_accuracy;
    j["val_exact_accuracy"] = evals[0].exact_accuracy;
    nlohmann::ordered_json all = nlohmann::ordered_json::array();
    for (const EvalResult& e : evals)
      all.push_back({{"seq_len", e.seq_len},
                     {"val_loss", e.loss},
                     {"val_accuracy", e.token_accuracy},
                     {"val_exact_accuracy", e.exact_accuracy}});
    j["eval"] = all;
  }
  fs::create_directories(cfg_.run_dir);
  const fs::path p = fs::path(cfg_.run_dir) / "metrics.jsonl";
  std::ofstream f(p, std::ios::app);
  RA_CHECK(f.good(), "cannot write '{}'", p.string());
  if (metrics_failing_) f << "\n";  // after a torn line, so that this one stands alone
  f << j.dump() << "\n";
  f.flush();
  // A full disk loses this line, not the run (the checkpoint saves say so themselves); said once,
  // and again once lines are written again. A torn line is skipped when a resume reads the file.
  if (!f.good() && !metrics_failing_)
    log::warn(
        "could not append step {} to '{}' ({}); training goes on, but the metrics of the "
        "steps until it can write again are not recorded there",
        m.step, p.string(), std::strerror(errno));
  else if (f.good() && metrics_failing_)
    log::info("'{}' is written again, from step {}", p.string(), m.step);
  metrics_failing_ = !f.good();
}

std::string Trainer::checkpoint_space_warning(int64_t last) const {
  const int64_t every = cfg_.checkpoint.every, keep = cfg_.checkpoint.keep_last;
  const int64_t remaining = last - state_.step;
  if (remaining <= 0) return {};
  // Saves still to come (every `every` steps and the last), of which at most keep_last + 1 exist
  // at once: the newest keep_last and the one being written. Checkpoints already there count.
  const int64_t saves =
      every > 0 ? last / every - state_.step / every + (last % every != 0 ? 1 : 0) : 1;
  const int64_t existing = int64_t(complete_checkpoint_count(checkpoints_dir()));
  const int64_t at_once = keep > 0 ? std::min(saves + existing, keep + 1) : saves + existing;
  const int64_t new_copies = std::max<int64_t>(1, at_once - existing);
  const uint64_t one = checkpoint_bytes(*model_, mesh_);
  const std::optional<uint64_t> free = checkpoint_free_bytes(checkpoints_dir());
  if (!free || *free >= uint64_t(new_copies) * one) return {};
  return fmt::format(
      "'{}' has {} free, and this run will need about {} there ({} more checkpoint{} of about {}; "
      "checkpoint.keep_last = {}): a save will probably fail for lack of space. Make room, lower "
      "checkpoint.keep_last, or choose another run_dir",
      checkpoints_dir(), format_bytes(size_t(*free)), format_bytes(size_t(new_copies * one)),
      new_copies, new_copies == 1 ? "" : "s", format_bytes(size_t(one)), keep);
}

void Trainer::run(int64_t last) {
  if (last < 0) last = cfg_.train.steps;
  // A fresh run starts a fresh metrics file; a resumed one appends after its own earlier lines.
  // Lines of steps after the checkpoint (written before an interruption) are dropped, as those
  // steps run again.
  // Rank 0 alone rewrites it; a failure there is raised on every rank (comm/agreed_error.h), so
  // that no rank waits for it in the first step's collectives.
  std::string metrics_error;
  if (opt_.write_metrics && mesh_.world_rank() == 0) {
    try {
      fs::create_directories(cfg_.run_dir);
      const fs::path p = fs::path(cfg_.run_dir) / "metrics.jsonl";
      std::error_code ec;
      RA_CHECK(!fs::exists(p, ec) || fs::is_regular_file(p, ec),
               "'{}' is in the way: the metrics file must be a regular file (move it away)",
               p.string());
      std::vector<std::string> keep;
      if (state_.step > 0) {
        std::ifstream in(p);
        std::string line;
        while (std::getline(in, line)) {
          const auto j = nlohmann::json::parse(line, nullptr, false);
          if (!j.is_discarded() && j.is_object() && j.value("step", int64_t(0)) <= state_.step)
            keep.push_back(line);
        }
      }
      // Rewritten beside and renamed over, so that a full disk cannot leave the earlier steps'
      // lines half written.
      fs::path tmp = p;
      tmp += ".tmp";
      {
        std::ofstream out(tmp, std::ios::trunc);
        for (const std::string& line : keep) out << line << "\n";
        out.flush();
        if (!out.good()) {
          const int err = errno;
          out.close();
          std::error_code ec;
          fs::remove(tmp, ec);
          RA_FAIL("cannot write '{}': {}; '{}' is left as it was", tmp.string(), std::strerror(err),
                  p.string());
        }
      }
      fs::rename(tmp, p);
    } catch (const std::exception& e) {
      metrics_error = e.what();
    }
  }
  raise_if_any_rank_failed(mesh_.world(), metrics_error, [](int r) {
    return fmt::format("rank {} could not prepare metrics.jsonl (its message says why)", r);
  });
  if (mesh_.world_rank() == 0)
    if (const std::string w = checkpoint_space_warning(last); !w.empty()) log::warn("{}", w);
  Progress progress(state_.step, last);
  while (state_.step < last) {
    const StepMetrics m = train_step();
    std::vector<EvalResult> evals;
    if (cfg_.eval.every > 0 && (m.step % cfg_.eval.every == 0 || m.step == last))
      for (int64_t s : cfg_.eval_seq_lens()) evals.push_back(evaluate(s, cfg_.eval.batches));
    progress.step_done(m.step);
    const bool log_this = m.step % cfg_.train.log_every == 0 || m.step == last || !evals.empty() ||
                          !m.finite || m.step == 1;
    if (opt_.log_steps && log_this) {
      std::string line = fmt::format(
          "{} step {}/{} loss {:.4f} lr {:.3e} grad_norm {:.3f} tokens/s {:.0f} mfu {:.2f}% peak "
          "{}",
          progress.percent(m.step), m.step, last, m.loss, m.lr, m.grad_norm, m.tokens_per_s,
          100.0 * m.mfu, format_bytes(m.peak_bytes));
      if (m.has_answers) line += fmt::format(" answer_acc {:.3f}", m.answer_accuracy);
      if (m.seq_len != cfg_.train.seq_len) line += fmt::format(" (curriculum S={})", m.seq_len);
      line += fmt::format(" {}", progress.timing(m.step));
      if (!m.finite) line += fmt::format(" SKIPPED (non-finite; {} so far)", state_.skipped);
      log::info("{}", line);
      for (const EvalResult& e : evals)
        log::info("  eval S={}: val_loss {:.4f} answer token acc {:.3f} exact {:.3f} ({} answers)",
                  e.seq_len, e.loss, e.token_accuracy, e.exact_accuracy, e.answers);
    }
    write_metrics(m, evals);
    if ((cfg_.checkpoint.every > 0 && m.step % cfg_.checkpoint.every == 0) || m.step == last)
      save();
    if (m.step < last && stop_agreed()) {
      if (last_saved_ != state_.step) save();
      stopped_ = true;
      log::info("stopping after step {} as asked by a signal; resume with --resume", m.step);
      break;
    }
  }
}

bool Trainer::stop_agreed() {
  // Test-only fault: a preemption signal that reaches one rank only.
  if (state_.step == debug_fault("stop_step") && mesh_.world_rank() == debug_fault("stop_rank", 0))
    request_stop();
  // Every rank must stop after the same step, whichever ranks the signal reached.
  return max_over(mesh_.world(), stop_requested() ? 1 : 0) != 0;
}

std::string Trainer::save() {
  const std::string dir = save_checkpoint(checkpoints_dir(), *model_, mesh_, state_,
                                          opt_.config_json, cfg_.checkpoint.keep_last);
  last_saved_ = state_.step;
  if (opt_.log_steps) log::info("checkpoint {}", dir);
  return dir;
}

void Trainer::load(const std::string& dir) {
  const CheckpointState s = load_checkpoint(dir, *model_, mesh_);
  agreed_across_ranks(&mesh_.world(), "checking the checkpoint's seed", [&] {
    RA_CHECK(s.seed == cfg_.seed,
             "checkpoint '{}' was trained with seed {}, this config has seed {}; the data would "
             "not continue where it stopped",
             dir, s.seed, cfg_.seed);
  });
  if (s.train_steps != cfg_.train.steps || s.warmup_steps != cfg_.train.warmup_steps)
    log::warn(
        "checkpoint '{}' was written by a run with train.steps = {}, warmup_steps = {}; this "
        "run has {} and {}: the learning-rate schedule changes, so the result will differ from "
        "an uninterrupted run",
        dir, s.train_steps, s.warmup_steps, cfg_.train.steps, cfg_.train.warmup_steps);
  if (s.cpu_threads > 0 && state_.cpu_threads > 0 && s.cpu_threads != state_.cpu_threads)
    log::warn(
        "checkpoint '{}' was trained with {} CPU thread{} per rank, this run has {}: sums are "
        "split differently, so the result will differ in the last bits from an uninterrupted "
        "run (OPENBLAS_NUM_THREADS={} continues it exactly)",
        dir, s.cpu_threads, s.cpu_threads == 1 ? "" : "s", state_.cpu_threads, s.cpu_threads);
  // Other changes may be meant (a longer context, new data) or not: each is said.
  if (mesh_.world_rank() == 0)
    if (const auto changed = config_changes(s.config_json, opt_.config_json); !changed.empty())
      log::warn("resuming {} with a config that differs from the one it was trained with: {}", dir,
                fmt::join(changed, "; "));
  state_.step = s.step;
  state_.updates = s.updates;
  state_.skipped = s.skipped;
  last_saved_ = s.step;
}

bool Trainer::resume_latest() {
  // Rank 0's choice for every rank: one whose listing differs (a file system's cache, another
  // node's copy of the directory) must not resume from another step, or start afresh while the
  // others resume (which met in mismatched collectives). load() checks every rank's files.
  std::string dir;
  if (mesh_.world_rank() == 0) dir = find_latest_checkpoint(checkpoints_dir()).value_or("");
  dir = broadcast_text(mesh_.world(), dir, 0);
  if (dir.empty()) return false;
  load(dir);
  log::info("resumed from {} (step {}, {} updates)", dir, state_.step, state_.updates);
  return true;
}

void Trainer::load_weights(const std::string& dir) {
  const CheckpointState s = load_checkpoint_weights(dir, *model_);
  state_.step = s.step;
  state_.updates = s.updates;
  state_.skipped = s.skipped;
}

}  // namespace ringattn
