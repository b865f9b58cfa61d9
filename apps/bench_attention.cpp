// `ringattn bench attention`: forward and forward+backward timings of one attention
// implementation, side by side with OpenBLAS sgemm on the same cores in the same run.
//
// FLOP convention (stated in the output): forward 4*B*H*S^2*D (QK^T and PV), backward 2.5x the
// forward (five GEMMs: recomputed QK^T, dV, dP, dQ, dK), both halved for causal. Recomputation in
// the backward is counted as useful work here, as FlashAttention's benchmarks do.
#include <fmt/format.h>
#include <mpi.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <thread>
#include <vector>

#include "apps/bench_common.h"
#include "apps/cli_checks.h"
#include "apps/commands.h"
#include "comm/host_staged_communicator.h"
#include "comm/mesh.h"
#include "comm/mpi_env.h"
#include "comm/watchdog.h"
#include "core/log.h"
#include "core/random.h"
#include "model/attention/attention.h"
#include "model/trainer.h"

namespace ringattn::apps {

namespace {

struct BenchAttentionArgs {
  std::string impl = "blockwise", layout = "zigzag", json, device = "cpu";
  int64_t batch = 1, seq = 4096, heads = 8, kv_heads = 8, head_dim = 64;
  int64_t q_chunk = 256, k_chunk = 256;
  bool causal = false, bf16 = false, fused = false;
  int warmup = 1, repeat = 3, threads = 0;
};

int run_bench_attention(const BenchAttentionArgs& a) {
  const int world = MpiEnv::world_size();
  const int threads = configure_bench_threads(a.threads);
  AttentionOptions opt;
  opt.impl = parse_impl(a.impl);
  opt.layout = parse_layout(a.layout);
  opt.causal = a.causal;
  opt.q_chunk = a.q_chunk;
  opt.k_chunk = a.k_chunk;
  opt.bf16 = a.bf16 || a.fused;
  opt.kernel = a.fused ? AttentionKernel::Fused : AttentionKernel::Tiles;
  RA_CHECK(opt.impl == AttentionImpl::Ring || world == 1,
           "bench attention --impl {} runs on one rank; launched on {} (use --impl ring)", a.impl,
           world);
  if (opt.impl == AttentionImpl::Ring) check_layout_split(opt.layout, a.seq, world);
  RA_CHECK(a.kv_heads >= 1 && a.heads % a.kv_heads == 0,
           "--kv-heads ({}) must be at least 1 and divide --heads ({})", a.kv_heads, a.heads);

  RA_CHECK(a.device == "cpu" || a.device == "cuda", "--device {}: expected cpu or cuda", a.device);
  Backend& be = backend_for(a.device == "cuda" ? Device::CUDA : Device::CPU);
  const Device dev = be.device();
  // A stopped or dead rank ends the job (comm/watchdog.h) at the default comm.timeout_s.
  const WatchdogArm watchdog(CommConfig{}.timeout_s);
  Mesh mesh(MeshShape{1, 1, world, 1});
  Communicator& sp = mesh.axis(Axis::SP);
  // The ring's blocks travel through host memory when the backend is a GPU (MPI transport).
  std::unique_ptr<Communicator> staged;
  if (dev != Device::CPU) staged = make_host_staged_communicator(sp, be.allocator());
  Communicator& ring = staged ? *staged : sp;
  const int64_t sl = a.seq / world;
  const int r = sp.rank();
  AttentionInput in;
  in.positions = layout_positions(
      opt.impl == AttentionImpl::Ring ? opt.layout : RingLayout::Contiguous, a.seq, world, r);
  in.q = Tensor::empty({a.batch, sl, a.heads, a.head_dim}, DType::F32, Device::CPU, "q");
  in.k = Tensor::empty({a.batch, sl, a.kv_heads, a.head_dim}, DType::F32, Device::CPU, "k");
  in.v = Tensor::empty({a.batch, sl, a.kv_heads, a.head_dim}, DType::F32, Device::CPU, "v");
  Tensor dout = Tensor::empty({a.batch, sl, a.heads, a.head_dim}, DType::F32, Device::CPU, "dO");
  fill_normal(in.q, 11 + 4 * r);
  fill_normal(in.k, 12 + 4 * r);
  fill_normal(in.v, 13 + 4 * r);
  fill_normal(dout, 14 + 4 * r);
  // Under bf16 q, k and v come as bf16, as the model keeps them (used in place by the tiles).
  if (opt.bf16)
    for (Tensor* t : {&in.q, &in.k, &in.v}) *t = t->to(DType::BF16);
  for (Tensor* t : {&in.q, &in.k, &in.v, &dout}) *t = t->to_device(dev, "bench input");

  Attention attn(opt, be, &ring, &sp);  // token tables over host MPI: no device waits
  Allocator& alloc = be.allocator();
  const size_t live_before = alloc.live_bytes();
  alloc.reset_peak();

  std::vector<double> fwd_s, fwdbwd_s, compute_s, wait_s;
  for (int it = 0; it < a.warmup + a.repeat; ++it) {
    sp.barrier();
    const auto t0 = std::chrono::steady_clock::now();
    AttentionOutput out = attn.forward(in);
    be.synchronize();  // a GPU only queued the work
    const double f_wait = attn.last_timings().kv_wait_s;
    const double t_fwd = seconds_since(t0);
    AttentionGrads g = attn.backward(in, out, dout);
    be.synchronize();
    const double b_wait = attn.last_timings().kv_wait_s;
    const double t_all = seconds_since(t0);
    if (it < a.warmup) continue;
    // The job's time is the slowest rank's.
    fwd_s.push_back(max_over_ranks(t_fwd));
    fwdbwd_s.push_back(max_over_ranks(t_all));
    compute_s.push_back(t_all - f_wait - b_wait);
    wait_s.push_back(f_wait + b_wait);
  }
  const size_t peak = alloc.peak_bytes();
  const double fwd = median(fwd_s), fwdbwd = median(fwdbwd_s);
  const double my_compute = median(compute_s), my_wait = median(wait_s);
  const double my_total = my_compute + my_wait;

  const double causal_factor = a.causal ? 0.5 : 1.0;
  const double flops_fwd =
      4.0 * a.batch * a.heads * double(a.seq) * a.seq * a.head_dim * causal_factor;
  const double flops_fwdbwd = flops_fwd * 3.5;
  // The reference GEMM of the tiles' operand type, summed over ranks, run concurrently.
  const DType operands = opt.bf16 ? DType::BF16 : DType::F32;
  const double sgemm = measure_gemm_gflops(sp, be, operands);
  const std::string gemm = gemm_name(operands);

  const std::vector<double> rank_ms = gather_doubles(sp, my_compute * 1e3);
  const std::vector<double> rank_wait = gather_doubles(sp, my_total > 0 ? my_wait / my_total : 0);
  const std::vector<double> peaks = gather_doubles(sp, double(peak));
  nlohmann::json j;
  j["impl"] = a.impl;
  j["device"] = be.name();
  j["layout"] = a.layout;
  j["ranks"] = world;
  j["threads_per_rank"] = threads;
  j["B"] = a.batch;
  j["S"] = a.seq;
  j["H"] = a.heads;
  j["Hkv"] = a.kv_heads;
  j["D"] = a.head_dim;
  j["q_chunk"] = a.q_chunk;
  j["k_chunk"] = a.k_chunk;
  j["causal"] = a.causal;
  j["fwd_ms"] = fwd * 1e3;
  j["fwdbwd_ms"] = fwdbwd * 1e3;
  j["gflops_fwd"] = flops_fwd / fwd * 1e-9;
  j["gflops_fwdbwd"] = flops_fwdbwd / fwdbwd * 1e-9;
  j["tile_gemm_operands"] = opt.bf16 ? "bf16" : "f32";
  j["kernel"] = kernel_name(opt.kernel);
  // What the device runs of the fused kernels at once (empty on the CPU, whose fused path is
  // the bf16 tiles).
  const std::string occupancy =
      opt.kernel == AttentionKernel::Fused ? be.fused_attention_occupancy(a.head_dim) : "";
  if (!occupancy.empty()) j["fused_occupancy"] = occupancy;
  j["peak_gemm"] = gemm;
  j["peak_gemm_gflops"] = sgemm;
  j["fraction_of_peak_gemm"] = flops_fwdbwd / fwdbwd * 1e-9 / sgemm;
  if (!opt.bf16) {
    j["sgemm_gflops"] = sgemm;
    j["fraction_of_sgemm"] = j["fraction_of_peak_gemm"];
  }
  j["peak_bytes"] = size_t(*std::max_element(peaks.begin(), peaks.end()));
  j["input_bytes"] = live_before;
  // What attention itself allocated (outputs, gradients, buffers, tiles): the peak minus the
  // inputs that were live before the first call. This is what scales as S^2 for vanilla.
  j["workspace_peak_bytes"] = j["peak_bytes"].get<size_t>() - live_before;
  j["kv_wait_fraction"] = *std::max_element(rank_wait.begin(), rank_wait.end());
  j["rank_ms"] = rank_ms;
  j["flop_convention"] =
      "forward 4*B*H*S^2*D, backward 2.5x forward, halved when causal; job time = slowest rank";

  if (MpiEnv::world_rank() == 0) {
    const double slow = *std::max_element(rank_ms.begin(), rank_ms.end());
    const double fast = *std::min_element(rank_ms.begin(), rank_ms.end());
    fmt::print(
        "attention {} ({}) on {}, {} rank(s) x {} thread(s), B={} S={} H={} Hkv={} D={} "
        "causal={} chunks {}x{}{}\n"
        "  forward          {:9.2f} ms  {:7.1f} GFLOP/s\n"
        "  forward+backward {:9.2f} ms  {:7.1f} GFLOP/s  ({:.0f}% of {})\n"
        "  {} (same cores or GPU, same run) {:7.1f} GFLOP/s\n"
        "  peak bytes per rank (max)  {}   (inputs {}, attention's own {})\n"
        "  KV wait fraction (max over ranks) {:.1f}%   rank compute ms: {}  (slowest/fastest "
        "{:.2f})\n"
        "  FLOPs: {}\n{}",
        a.impl, opt.impl == AttentionImpl::Ring ? a.layout : "whole sequence", be.name(), world,
        threads, a.batch, a.seq, a.heads, a.kv_heads, a.head_dim, a.causal, a.q_chunk, a.k_chunk,
        a.fused  ? ", fused bf16 kernels"
        : a.bf16 ? ", bf16 tile GEMMs"
                 : "",
        fwd * 1e3, j["gflops_fwd"].get<double>(), fwdbwd * 1e3, j["gflops_fwdbwd"].get<double>(),
        100 * j["fraction_of_peak_gemm"].get<double>(), gemm, gemm, sgemm,
        format_bytes(j["peak_bytes"].get<size_t>()), format_bytes(live_before),
        format_bytes(j["workspace_peak_bytes"].get<size_t>()),
        100 * j["kv_wait_fraction"].get<double>(), fmt::join(rank_ms, " "),
        fast > 0 ? slow / fast : 0.0, j["flop_convention"].get<std::string>(),
        occupancy.empty() ? "" : fmt::format("  fused kernels: {}\n", occupancy));
    if (!a.json.empty()) {
      std::ofstream f(a.json);
      RA_CHECK(f.good(), "cannot write --json file '{}'", a.json);
      f << j.dump(2) << "\n";
    }
  }
  return 0;
}

}  // namespace

void add_bench_attention_command(CLI::App& bench, Action& run) {
  auto a = std::make_shared<BenchAttentionArgs>();
  auto* cmd = bench.add_subcommand("attention", "Attention forward / forward+backward throughput");
  cmd->add_option("--impl", a->impl, "vanilla | blockwise | ring")->capture_default_str();
  cmd->add_option("--layout", a->layout, "contiguous | zigzag | striped")->capture_default_str();
  cmd->add_option("--batch", a->batch, "B")->capture_default_str()->check(positive_count());
  cmd->add_option("--seq", a->seq, "S (global)")->capture_default_str()->check(positive_count());
  cmd->add_option("--heads", a->heads, "H")->capture_default_str()->check(positive_count());
  cmd->add_option("--kv-heads", a->kv_heads, "Hkv")->capture_default_str()->check(positive_count());
  cmd->add_option("--head-dim", a->head_dim, "D")->capture_default_str()->check(positive_count());
  cmd->add_flag("--causal", a->causal, "Causal mask");
  cmd->add_flag("--bf16", a->bf16,
                "Tile GEMMs on bf16 operands (model.dtype = bf16); compared with the bf16 GEMM");
  cmd->add_flag("--fused", a->fused,
                "bf16 with the fused kernels (attention.kernel = fused; implies --bf16; the CPU "
                "runs its tiles)");
  cmd->add_option("--q-chunk", a->q_chunk, "Query tile")
      ->capture_default_str()
      ->check(positive_count());
  cmd->add_option("--k-chunk", a->k_chunk, "Key tile")
      ->capture_default_str()
      ->check(positive_count());
  cmd->add_option("--warmup", a->warmup, "Untimed iterations")
      ->capture_default_str()
      ->check(number_in(0));
  cmd->add_option("--repeat", a->repeat, "Timed iterations (median)")
      ->capture_default_str()
      ->check(positive_count());
  cmd->add_option("--threads", a->threads, "Threads per rank (0: cores / ranks on the node)")
      ->capture_default_str()
      ->check(number_in(0));
  cmd->add_option("--device", a->device, "cpu | cuda (GPU local_rank mod GPUs)")
      ->capture_default_str();
  cmd->add_option("--json", a->json, "Write the results as one JSON object");
  cmd->callback([&run, a] { run = [a] { return run_bench_attention(*a); }; });
}

}  // namespace ringattn::apps
