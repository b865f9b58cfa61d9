#include "apps/bench_train_run.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>

#include "apps/bench_common.h"
#include "core/allocator.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/profiling_backend.h"
#include "model/trainer.h"

namespace ringattn::apps {

double RankBreakdown::other_s() const {
  return std::max(0.0, wall_s - gemm_s - attention_s - elementwise_s - communication_s());
}

namespace {

// Counters of one rank at one moment; a step's figures are the difference of two snapshots.
struct Snapshot {
  OpProfile ops;
  FsdpGroup::WaitTimes fsdp;
  double ring_s = 0;
};

Snapshot snapshot(ProfilingBackend& prof, Transformer& model) {
  return {prof.profile(), model.fsdp_group().wait_times(), model.attention().ring_wait_seconds()};
}

void add_step(RankBreakdown& r, const Snapshot& a, const Snapshot& b, double wall,
              double& gemm_flops) {
  const OpProfile d = b.ops - a.ops;
  r.wall_s += wall;
  r.gemm_s += d.at(OpCategory::Gemm);
  r.attention_s += d.at(OpCategory::Attention);
  r.elementwise_s += d.at(OpCategory::Elementwise) + d.at(OpCategory::Copy);
  r.fsdp_gather_s += b.fsdp.gather_s - a.fsdp.gather_s;
  r.fsdp_reduce_scatter_s += b.fsdp.reduce_scatter_s - a.fsdp.reduce_scatter_s;
  r.dp_all_reduce_s += b.fsdp.dp_all_reduce_s - a.fsdp.dp_all_reduce_s;
  r.ring_wait_s += b.ring_s - a.ring_s;
  gemm_flops += d.gemm_flops;
}

// Every rank's breakdown on every rank (one all-gather per field; a handful of doubles).
std::vector<RankBreakdown> gather_breakdowns(Communicator& world, const RankBreakdown& mine) {
  const int n = world.size();
  std::vector<RankBreakdown> all(static_cast<size_t>(n));
  auto field = [&](double RankBreakdown::*f) {
    const std::vector<double> v = gather_doubles(world, mine.*f);
    for (int r = 0; r < n; ++r) all[size_t(r)].*f = v[size_t(r)];
  };
  field(&RankBreakdown::wall_s);
  field(&RankBreakdown::gemm_s);
  field(&RankBreakdown::attention_s);
  field(&RankBreakdown::elementwise_s);
  field(&RankBreakdown::fsdp_gather_s);
  field(&RankBreakdown::fsdp_reduce_scatter_s);
  field(&RankBreakdown::dp_all_reduce_s);
  field(&RankBreakdown::ring_wait_s);
  field(&RankBreakdown::gemm_gflops);
  return all;
}

RankBreakdown mean_of(const std::vector<RankBreakdown>& all) {
  RankBreakdown m;
  for (const RankBreakdown& r : all) {
    m.wall_s += r.wall_s;
    m.gemm_s += r.gemm_s;
    m.attention_s += r.attention_s;
    m.elementwise_s += r.elementwise_s;
    m.fsdp_gather_s += r.fsdp_gather_s;
    m.fsdp_reduce_scatter_s += r.fsdp_reduce_scatter_s;
    m.dp_all_reduce_s += r.dp_all_reduce_s;
    m.ring_wait_s += r.ring_wait_s;
    m.gemm_gflops += r.gemm_gflops;
  }
  const double k = all.empty() ? 0.0 : 1.0 / double(all.size());
  for (double* f : {&m.wall_s, &m.gemm_s, &m.attention_s, &m.elementwise_s, &m.fsdp_gather_s,
                    &m.fsdp_reduce_scatter_s, &m.dp_all_reduce_s, &m.ring_wait_s, &m.gemm_gflops})
    *f *= k;
  return m;
}

}  // namespace

TrainMeasurement measure_training(const TrainConfig& cfg, Mesh& mesh, int steps,
                                  double peak_gflops) {
  RA_CHECK(steps >= 2, "--steps = {}: need at least 2 (the first is an untimed warm-up)", steps);
  Communicator& world = mesh.world();
  ProfilingBackend prof(backend_for(cfg));
  TrainerOptions opt;
  opt.log_steps = false;
  opt.write_metrics = false;
  opt.peak_flops = peak_gflops * 1e9;
  opt.backend = &prof;
  Allocator& alloc = prof.allocator();  // the device the model computes on
  // The host cache holds up to the most ever out at once: not the GEMM calibration's matrices.
  alloc.release_cached();
  // Named from the first parameter on, so the peak's composition names every block.
  struct Tracking {
    Allocator& a;
    explicit Tracking(Allocator& x) : a(x) { a.track_peak_composition(true); }
    ~Tracking() { a.track_peak_composition(false); }
  } tracking(alloc);
  Trainer trainer(cfg, mesh, opt);

  TrainMeasurement m;
  m.ranks = world.size();
  m.threads_per_rank = cpu_threads();
  m.timed_steps = steps - 1;
  m.seq_len = cfg.train.seq_len;
  m.tokens_per_step = trainer.tokens_per_step();
  m.parameters = trainer.model().parameter_count();
  m.flops_per_token = trainer.flops_per_token();
  m.peak_gflops = peak_gflops;
  m.peak_gemm = gemm_name(cfg.model.dtype);
  m.memory_limit_bytes = alloc.limit();
  m.memory_plan_bytes = trainer.memory_estimate_bytes();

  RankBreakdown mine;
  double gemm_flops = 0, job_s = 0;
  size_t my_peak = 0;
  for (int s = 0; s < steps; ++s) {
    world.barrier();  // every rank starts the step together: the job's time is the slowest's
    const Snapshot a = snapshot(prof, trainer.model());
    const auto t0 = std::chrono::steady_clock::now();
    const StepMetrics sm = trainer.train_step();
    const double wall = seconds_since(t0);
    const Snapshot b = snapshot(prof, trainer.model());
    // train_step() resets the peak when it starts: this is the step's peak on this rank.
    if (alloc.peak_bytes() > my_peak) {
      my_peak = alloc.peak_bytes();
      m.peak_composition = alloc.peak_composition();
    }
    m.loss = sm.loss;
    const double slowest = max_over_ranks(wall);
    if (s == 0) continue;  // warm-up: first touches of buffers, AdamW state allocation
    add_step(mine, a, b, wall, gemm_flops);
    job_s += slowest;
  }
  const double k = 1.0 / double(m.timed_steps);
  for (double* f :
       {&mine.wall_s, &mine.gemm_s, &mine.attention_s, &mine.elementwise_s, &mine.fsdp_gather_s,
        &mine.fsdp_reduce_scatter_s, &mine.dp_all_reduce_s, &mine.ring_wait_s})
    *f *= k;
  mine.gemm_gflops = mine.gemm_s > 0 ? gemm_flops * k / mine.gemm_s * 1e-9 : 0.0;

  m.step_s = job_s * k;
  m.tokens_per_s = double(m.tokens_per_step) * m.timed_steps / std::max(job_s, 1e-12);
  m.mfu = peak_gflops > 0 ? m.flops_per_token * m.tokens_per_s / (peak_gflops * 1e9) : 0.0;
  for (double p : gather_doubles(world, double(my_peak))) m.rank_peak_bytes.push_back(size_t(p));
  m.peak_bytes = *std::max_element(m.rank_peak_bytes.begin(), m.rank_peak_bytes.end());
  m.device_memory_used_bytes = size_t(max_over_ranks(double(prof.device_memory_used())));
  // Only the host allocator keeps this figure (a device's reports 0).
  m.host_memory_held_bytes = size_t(max_over_ranks(double(prof.allocator().held_bytes())));
  m.rank_breakdown = gather_breakdowns(world, mine);
  m.mean = mean_of(m.rank_breakdown);
  return m;
}

namespace {

nlohmann::ordered_json breakdown_json(const RankBreakdown& r) {
  nlohmann::ordered_json j;
  j["wall_s"] = r.wall_s;
  j["gemm_s"] = r.gemm_s;
  j["attention_s"] = r.attention_s;
  j["elementwise_s"] = r.elementwise_s;
  j["communication_s"] = r.communication_s();
  j["fsdp_gather_wait_s"] = r.fsdp_gather_s;
  j["fsdp_reduce_scatter_wait_s"] = r.fsdp_reduce_scatter_s;
  j["dp_all_reduce_s"] = r.dp_all_reduce_s;
  j["ring_kv_wait_s"] = r.ring_wait_s;
  j["other_s"] = r.other_s();
  j["gemm_gflops"] = r.gemm_gflops;
  return j;
}

}  // namespace

nlohmann::ordered_json to_json(const TrainMeasurement& m) {
  nlohmann::ordered_json j;
  j["ranks"] = m.ranks;
  j["threads_per_rank"] = m.threads_per_rank;
  j["timed_steps"] = m.timed_steps;
  j["seq_len"] = m.seq_len;
  j["tokens_per_step"] = m.tokens_per_step;
  j["parameters"] = m.parameters;
  j["flops_per_token"] = m.flops_per_token;
  j["step_s"] = m.step_s;
  j["tokens_per_s"] = m.tokens_per_s;
  j["peak_gemm"] = m.peak_gemm;
  j["peak_gemm_gflops"] = m.peak_gflops;
  if (m.peak_gemm == gemm_name(DType::F32)) j["sgemm_gflops"] = m.peak_gflops;
  j["mfu"] = m.mfu;
  j["loss"] = m.loss;
  j["peak_bytes"] = m.peak_bytes;
  j["rank_peak_bytes"] = m.rank_peak_bytes;
  j["memory_plan_bytes"] = m.memory_plan_bytes;
  nlohmann::ordered_json parts = nlohmann::ordered_json::array();
  for (const Allocator::PeakPart& p : m.peak_composition)
    parts.push_back({{"what", p.what}, {"bytes", p.bytes}, {"blocks", p.blocks}});
  j["rank0_peak_composition"] = parts;
  j["device_memory_used_bytes"] = m.device_memory_used_bytes;
  j["host_memory_held_bytes"] = m.host_memory_held_bytes;
  j["memory_limit_bytes"] = m.memory_limit_bytes;
  // Fractions of the mean rank's step: where the time goes.
  const RankBreakdown& b = m.mean;
  const double w = b.wall_s > 0 ? b.wall_s : 1.0;
  j["time_fraction"] = {{"gemm", b.gemm_s / w},
                        {"attention", b.attention_s / w},
                        {"elementwise", b.elementwise_s / w},
                        {"communication", b.communication_s() / w},
                        {"other", b.other_s() / w}};
  j["breakdown_mean_s"] = breakdown_json(b);
  nlohmann::ordered_json ranks = nlohmann::ordered_json::array();
  for (const RankBreakdown& r : m.rank_breakdown) ranks.push_back(breakdown_json(r));
  j["rank_breakdown_s"] = ranks;
  j["conventions"] =
      "FLOPs per token 6N + 6 L H d S (causal; recomputation not counted); MFU against the "
      "peak_gemm (sgemm, or the bf16 GEMM for model.dtype = bf16) measured on the same cores "
      "or GPUs in the same run, summed over ranks; times are seconds "
      "per timed step; step time = slowest rank; communication = time blocked on FSDP gathers "
      "and reduce-scatters, the dp all-reduce and ring transfers (overlapped transfers cost "
      "nothing); attention includes its tile GEMMs";
  return j;
}

std::string format_report(const TrainMeasurement& m, const std::string& title) {
  const RankBreakdown& b = m.mean;
  const double w = b.wall_s > 0 ? b.wall_s : 1.0;
  auto row = [&](const char* name, double s) {
    return fmt::format("    {:<40} {:9.1f} ms  {:5.1f}%\n", name, s * 1e3, 100 * s / w);
  };
  std::string out = fmt::format(
      "{}\n  {} rank(s) x {} thread(s), S={} tokens/step={} params={:.2f}M, {} timed step(s) after "
      "1 warm-up\n"
      "  step {:.3f} s   tokens/s {:.0f}   MFU {:.1f}% (of {} {:.1f} GFLOP/s, same cores, same "
      "run)   loss {:.4f}\n"
      "  peak bytes per rank: max {}   per rank [{}]{}\n",
      title, m.ranks, m.threads_per_rank, m.seq_len, m.tokens_per_step, double(m.parameters) / 1e6,
      m.timed_steps, m.step_s, m.tokens_per_s, 100 * m.mfu, m.peak_gemm, m.peak_gflops, m.loss,
      format_bytes(m.peak_bytes),
      [&] {
        std::string s;
        for (size_t i = 0; i < m.rank_peak_bytes.size(); ++i)
          s += (i ? ", " : "") + format_bytes(m.rank_peak_bytes[i]);
        return s;
      }(),
      m.memory_limit_bytes ? fmt::format("   limit {}", format_bytes(m.memory_limit_bytes))
                           : std::string());
  if (m.memory_plan_bytes)
    out += fmt::format("  memory plan (checked against memory_limit_gb): {} = {:.2f} x the peak\n",
                       format_bytes(m.memory_plan_bytes),
                       double(m.memory_plan_bytes) / double(std::max<size_t>(m.peak_bytes, 1)));
  if (!m.peak_composition.empty()) {
    out += "  rank 0's peak is made of (largest first):";
    size_t shown = 0, rest = 0;
    for (const Allocator::PeakPart& p : m.peak_composition) {
      if (shown < 8) {
        out += fmt::format("{} {} {}", shown ? "," : "", p.what, format_bytes(p.bytes));
        if (p.blocks > 1) out += fmt::format(" ({} blocks)", p.blocks);
        ++shown;
      } else {
        rest += p.bytes;
      }
    }
    if (rest) out += fmt::format(", others {}", format_bytes(rest));
    out += "\n";
  }
  if (m.device_memory_used_bytes)
    out += fmt::format("  device memory in use (driver, cudaMemGetInfo, max over ranks): {}\n",
                       format_bytes(m.device_memory_used_bytes));
  if (m.host_memory_held_bytes)
    out += fmt::format(
        "  host memory held in large blocks (the allocator's block cache included, max over "
        "ranks): {}\n",
        format_bytes(m.host_memory_held_bytes));
  out += "  where the time goes (mean over ranks, per step):\n";
  out += row("GEMM (projections, FFN, LM head)", b.gemm_s);
  out += row("attention kernels", b.attention_s);
  out += row("elementwise (norms, RoPE, SwiGLU, loss)", b.elementwise_s);
  out += row("communication (blocked)", b.communication_s());
  out += row("  FSDP all-gather wait", b.fsdp_gather_s);
  out += row("  FSDP reduce-scatter wait", b.fsdp_reduce_scatter_s);
  out += row("  dp all-reduce", b.dp_all_reduce_s);
  out += row("  ring KV / dKV wait", b.ring_wait_s);
  out += row("other (optimizer, data, allocation)", b.other_s());
  out += fmt::format("    {:<40} {:9.1f} ms\n", "step (mean over ranks)", b.wall_s * 1e3);
  out +=
      fmt::format("  GEMM rate {:.1f} GFLOP/s per rank (mean); per-rank step ms:", b.gemm_gflops);
  for (const RankBreakdown& r : m.rank_breakdown) out += fmt::format(" {:.1f}", r.wall_s * 1e3);
  out += "\n";
  return out;
}

}  // namespace ringattn::apps
