// `ringattn attention`: run one attention implementation on tensors from a safetensors file and
// write the results, so any implementation (ours or another) can be checked against any other.
//
//   mpirun -np N ringattn attention --input IN --output OUT --impl ring --layout zigzag --causal
//   ringattn attention --make-input IN --seq 4096 --heads 8 --kv-heads 2 --head-dim 64 --with-grad
//   ringattn attention --compare A.safetensors B.safetensors --tolerance 1e-4 [--subset]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

#include "apps/cli_checks.h"
#include "apps/commands.h"
#include "comm/agreed_error.h"
#include "comm/host_staged_communicator.h"
#include "comm/mesh.h"
#include "comm/mpi_check.h"
#include "comm/mpi_env.h"
#include "comm/watchdog.h"
#include "core/log.h"
#include "core/random.h"
#include "core/safetensors.h"
#include "core/tensor_compare.h"
#include "model/attention/attention.h"
#include "model/attention/sequence_shard.h"
#include "model/trainer.h"

namespace ringattn::apps {

namespace {

struct AttentionArgs {
  std::string input, output, impl = "ring", layout = "zigzag", device = "cpu";
  std::string precision = "f32", kernel = "tiles";
  bool causal = false;
  int64_t q_chunk = 256, k_chunk = 256;
  // --make-input
  std::string make_input;
  int64_t batch = 1, seq = 1024, heads = 8, kv_heads = 8, head_dim = 64, segments = 1;
  bool with_grad = false, bf16 = false;
  uint64_t seed = 1;
  // --compare
  std::vector<std::string> compare;
  bool subset = false;  // A's tensors only: B (a reference with inputs, say) may hold more
  double tolerance = 1e-4;
};

Tensor require(const SafetensorsFile& f, const std::string& name, const Shape& expect_prefix,
               int ndim, bool floating) {
  RA_CHECK(f.contains(name), "input '{}' has no tensor '{}' (it holds: {})", f.path(), name,
           fmt::join(f.names(), ", "));
  const TensorInfo& info = f.info(name);
  RA_CHECK(int(info.shape.size()) == ndim,
           "input '{}': tensor '{}' must have {} dimensions, has {}", f.path(), name, ndim,
           shape_str(info.shape));
  for (size_t i = 0; i < expect_prefix.size(); ++i)
    RA_CHECK(expect_prefix[i] < 0 || info.shape[i] == expect_prefix[i],
             "input '{}': tensor '{}' has shape {}, expected dimension {} to be {}", f.path(), name,
             shape_str(info.shape), i, expect_prefix[i]);
  if (floating) {
    RA_CHECK(is_floating(info.dtype), "input '{}': tensor '{}' is {}, expected F32, BF16 or F16",
             f.path(), name, dtype_name(info.dtype));
    return f.load(name);
  }
  RA_CHECK(info.dtype == DType::I32, "input '{}': tensor '{}' is {}, expected I32", f.path(), name,
           dtype_name(info.dtype));
  return f.load(name);
}

// What run_check works on, read and checked alike by every rank before any communication.
struct Inputs {
  AttentionOptions opt;
  Tensor q, k, v, dout, seg;  // host, as the input file holds them; dout and seg may be undefined
};

int run_check(const AttentionArgs& a) {
  // One message for all ranks when they fail alike (comm/agreed_error.h).
  const Inputs inputs = agreed_across_ranks("reading the attention input", [&] {
    RA_CHECK(!a.input.empty() && !a.output.empty(), "attention: --input and --output are required");
    Inputs got;
    AttentionOptions& opt = got.opt;
    opt.impl = parse_impl(a.impl);
    opt.layout = parse_layout(a.layout);
    opt.causal = a.causal;
    opt.q_chunk = a.q_chunk;
    opt.k_chunk = a.k_chunk;
    RA_CHECK(a.precision == "f32" || a.precision == "bf16", "--precision {}: expected f32 or bf16",
             a.precision);
    RA_CHECK(a.kernel == "tiles" || a.kernel == "fused", "--kernel {}: expected tiles or fused",
             a.kernel);
    opt.bf16 = a.precision == "bf16";
    opt.kernel = a.kernel == "fused" ? AttentionKernel::Fused : AttentionKernel::Tiles;
    RA_CHECK(opt.kernel == AttentionKernel::Tiles || opt.bf16,
             "--kernel fused runs bf16 kernels: it needs --precision bf16");
    const int world = MpiEnv::world_size();
    RA_CHECK(opt.impl == AttentionImpl::Ring || world == 1,
             "--impl {} runs on one rank; launched on {} ranks (use --impl ring to split the "
             "sequence)",
             a.impl, world);

    const SafetensorsFile f = SafetensorsFile::open(a.input);
    got.q = require(f, "q", {}, 4, true);
    const Tensor& q = got.q;
    const int64_t B = q.dim(0), S = q.dim(1), H = q.dim(2), D = q.dim(3);
    got.k = require(f, "k", {B, S, -1, D}, 4, true);
    const Tensor& k = got.k;
    got.v = require(f, "v", {B, S, k.dim(2), D}, 4, true);
    RA_CHECK(k.dim(2) >= 1 && H % k.dim(2) == 0,
             "input '{}': kv heads ({}) must be at least 1 and divide heads ({})", a.input,
             k.dim(2), H);
    if (f.contains("do")) got.dout = require(f, "do", {B, S, H, D}, 4, true);
    if (f.contains("segment_ids")) got.seg = require(f, "segment_ids", {B, S}, 2, false);
    if (opt.impl == AttentionImpl::Ring) check_layout_split(opt.layout, S, world);
    RA_CHECK(a.device == "cpu" || a.device == "cuda", "--device {}: expected cpu or cuda",
             a.device);
    return got;
  });
  const AttentionOptions& opt = inputs.opt;
  const Tensor &q = inputs.q, &k = inputs.k, &v = inputs.v, &dout = inputs.dout, &seg = inputs.seg;
  const int64_t S = q.dim(1);
  const int world = MpiEnv::world_size();
  // A stopped or dead rank ends the job (comm/watchdog.h) at the default comm.timeout_s.
  const WatchdogArm watchdog(CommConfig{}.timeout_s);
  Mesh mesh(MeshShape{1, 1, world, 1});
  Communicator& sp = mesh.axis(Axis::SP);
  const std::vector<int64_t> pos =
      layout_positions(opt.impl == AttentionImpl::Ring ? opt.layout : RingLayout::Contiguous, S,
                       sp.size(), sp.rank());

  // On a GPU the shards are uploaded (as float32: dtype conversion is a host operation), the
  // ring's blocks are staged through host memory, and the results come back for the gather.
  Backend& be = backend_for(a.device == "cuda" ? Device::CUDA : Device::CPU);
  const Device dev = be.device();
  std::unique_ptr<Communicator> staged;
  if (dev != Device::CPU) staged = make_host_staged_communicator(sp, be.allocator());
  auto shard = [&](const Tensor& full) {
    Tensor t = take_positions(full, 1, pos);
    if (dev != Device::CPU && is_floating(t.dtype()) && t.dtype() != DType::F32)
      t = t.to(DType::F32);
    return t.to_device(dev, "attention input");
  };
  auto gather = [&](const Tensor& t, int dim) {
    return gather_sequence(sp, t.to_device(Device::CPU, "attention output"), dim, pos, S);
  };
  AttentionInput in;
  in.q = shard(q);
  in.k = shard(k);
  in.v = shard(v);
  in.positions = pos;
  if (seg.defined()) in.segment_ids = shard(seg);

  Attention attn(opt, be, staged ? staged.get() : &sp, &sp);  // token tables over host MPI
  // Timed to the end of the device's work: a GPU returns from the calls once it is queued.
  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();
  AttentionOutput out = attn.forward(in);
  be.synchronize();
  const double fwd_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const AttentionTimings fwd = attn.last_timings();
  std::vector<std::pair<std::string, Tensor>> results;
  results.emplace_back("o", gather(out.o, 1));
  results.emplace_back("lse", gather(out.lse, 2));
  AttentionTimings bwd;
  double bwd_s = 0;
  if (dout.defined()) {
    t0 = Clock::now();
    AttentionGrads g = attn.backward(in, out, shard(dout));
    be.synchronize();
    bwd_s = std::chrono::duration<double>(Clock::now() - t0).count();
    bwd = attn.last_timings();
    results.emplace_back("dq", gather(g.dq, 1));
    results.emplace_back("dk", gather(g.dk, 1));
    results.emplace_back("dv", gather(g.dv, 1));
  }
  log::rank_info("{} attention ({}), rank {}/{}: forward {:.1f} ms (KV wait {:.1f} ms){}", a.impl,
                 opt.impl == AttentionImpl::Ring ? a.layout + " layout" : "whole sequence",
                 sp.rank(), sp.size(), fwd_s * 1e3, fwd.kv_wait_s * 1e3,
                 dout.defined() ? fmt::format(", backward {:.1f} ms (wait {:.1f} ms)", bwd_s * 1e3,
                                              bwd.kv_wait_s * 1e3)
                                : std::string());
  if (MpiEnv::world_rank() == 0) {
    save_safetensors(a.output, results,
                     {{"impl", a.impl},
                      {"layout", a.layout},
                      {"ranks", std::to_string(world)},
                      {"precision", a.precision},
                      {"kernel", a.kernel},
                      {"causal", a.causal ? "true" : "false"}});
    log::info("wrote {} ({} tensors)", a.output, results.size());
  }
  // Rank 0 writes alone, which may take long: the others wait for it here, not in the watched
  // MPI_Finalize (comm/mpi_env.h), whose timeout is for ranks that stopped answering.
  MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
  return 0;
}

int run_make_input(const AttentionArgs& a) {
  if (MpiEnv::world_rank() != 0) return 0;
  RA_CHECK(a.heads % a.kv_heads == 0, "--kv-heads ({}) must divide --heads ({})", a.kv_heads,
           a.heads);
  const DType dt = a.bf16 ? DType::BF16 : DType::F32;
  std::vector<std::pair<std::string, Tensor>> t;
  auto make = [&](const std::string& name, Shape shape, uint64_t salt) {
    Tensor x = Tensor::empty(shape, dt, Device::CPU, name);
    fill_normal(x, a.seed * 1000003ull + salt);
    t.emplace_back(name, x);
  };
  make("q", {a.batch, a.seq, a.heads, a.head_dim}, 1);
  make("k", {a.batch, a.seq, a.kv_heads, a.head_dim}, 2);
  make("v", {a.batch, a.seq, a.kv_heads, a.head_dim}, 3);
  if (a.with_grad) make("do", {a.batch, a.seq, a.heads, a.head_dim}, 4);
  if (a.segments > 1) {
    // Packed documents: `segments` runs of equal length per sequence.
    Tensor s = Tensor::empty({a.batch, a.seq}, DType::I32, Device::CPU, "segment_ids");
    for (int64_t b = 0; b < a.batch; ++b)
      for (int64_t i = 0; i < a.seq; ++i)
        s.data<int32_t>()[b * a.seq + i] = int32_t(i * a.segments / a.seq);
    t.emplace_back("segment_ids", s);
  }
  save_safetensors(a.make_input, t);
  log::info("wrote {}: q [{}, {}, {}, {}], kv heads {}{}", a.make_input, a.batch, a.seq, a.heads,
            a.head_dim, a.kv_heads, a.with_grad ? ", with do" : "");
  return 0;
}

int run_compare(const AttentionArgs& a) {
  if (MpiEnv::world_rank() != 0) return 0;
  const SafetensorsFile x = SafetensorsFile::open(a.compare.at(0));
  const SafetensorsFile y = SafetensorsFile::open(a.compare.at(1));
  bool ok = true;
  // A tensor of one file that the other lacks is a mismatch, whichever file holds it (with
  // --subset, only one of the first file's), and a comparison of nothing is not an agreement.
  for (const SafetensorsFile* f : {&x, &y}) {
    if (a.subset && f == &y) break;
    const SafetensorsFile& other = f == &x ? y : x;
    for (const std::string& name : f->names())
      if (!other.contains(name)) {
        log::warn("{}: only in {}", name, f->path());
        ok = false;
      }
  }
  if (x.names().empty()) {
    log::warn("{} holds no tensors: nothing to compare", x.path());
    ok = false;
  }
  for (const std::string& name : x.names()) {
    if (!y.contains(name)) continue;
    Tensor tx = x.load_f32(name), ty = y.load_f32(name);
    if (tx.shape() != ty.shape()) {
      log::warn("{}: shapes {} and {} differ", name, shape_str(tx.shape()), shape_str(ty.shape()));
      ok = false;
      continue;
    }
    const TensorDiff d = compare_tensors(tx, ty);
    const bool pass = d.within(a.tolerance);
    log::info("{:4}: max |diff| {:.3g}, relative to max |value| {:.3g}{}: {}", name, d.max_abs,
              d.relative(),
              d.nonfinite
                  ? fmt::format(", {} elements where they disagree on inf or hold NaN", d.nonfinite)
                  : std::string(),
              pass ? "ok" : "MISMATCH");
    ok = ok && pass;
  }
  if (ok) log::info("{} and {} agree within {}", x.path(), y.path(), a.tolerance);
  return ok ? 0 : 1;
}

}  // namespace

void add_attention_command(CLI::App& parent, Action& run) {
  auto args = std::make_shared<AttentionArgs>();
  auto* cmd = parent.add_subcommand(
      "attention", "Run vanilla, blockwise or ring attention on a safetensors input (check tool)");
  cmd->add_option("--input", args->input,
                  "q [B,S,H,D], k, v [B,S,Hkv,D], optional do, segment_ids");
  cmd->add_option("--output", args->output, "Writes o, lse (and dq, dk, dv) in global order");
  cmd->add_option("--impl", args->impl, "vanilla | blockwise | ring")->capture_default_str();
  cmd->add_option("--layout", args->layout, "contiguous | zigzag | striped")->capture_default_str();
  cmd->add_flag("--causal", args->causal, "Causal mask (global positions)");
  cmd->add_option("--device", args->device,
                  "cpu | cuda: where attention computes (GPU local_rank mod GPUs)")
      ->capture_default_str();
  cmd->add_option("--precision", args->precision,
                  "f32 | bf16: the tile GEMMs' operands (bf16: model.dtype = bf16's rounding)")
      ->capture_default_str();
  cmd->add_option("--kernel", args->kernel,
                  "tiles | fused: attention.kernel (fused: bf16 only; the CPU runs its tiles)")
      ->capture_default_str();
  cmd->add_option("--q-chunk", args->q_chunk, "Query tile size")
      ->capture_default_str()
      ->check(positive_count());
  cmd->add_option("--k-chunk", args->k_chunk, "Key tile size")
      ->capture_default_str()
      ->check(positive_count());
  cmd->add_option("--make-input", args->make_input, "Write a random input file instead");
  cmd->add_option("--batch", args->batch, "(--make-input) batch")
      ->capture_default_str()
      ->check(positive_count());
  cmd->add_option("--seq", args->seq, "(--make-input) sequence length")
      ->capture_default_str()
      ->check(positive_count());
  cmd->add_option("--heads", args->heads, "(--make-input) query heads")
      ->capture_default_str()
      ->check(positive_count());
  cmd->add_option("--kv-heads", args->kv_heads, "(--make-input) key/value heads")
      ->capture_default_str()
      ->check(positive_count());
  cmd->add_option("--head-dim", args->head_dim, "(--make-input) head dimension")
      ->capture_default_str()
      ->check(positive_count());
  cmd->add_option("--segments", args->segments, "(--make-input) packed documents per sequence")
      ->capture_default_str()
      ->check(positive_count());
  cmd->add_flag("--with-grad", args->with_grad, "(--make-input) also write do");
  cmd->add_flag("--bf16", args->bf16, "(--make-input) store bf16");
  cmd->add_option("--seed", args->seed, "(--make-input) random seed")->capture_default_str();
  cmd->add_flag("--subset", args->subset,
                "(--compare) only the first file's tensors must be in the second, which may hold "
                "more (a reference with its inputs)");
  cmd->add_option("--compare", args->compare, "Compare two output files tensor by tensor")
      ->expected(2);
  cmd->add_option("--tolerance", args->tolerance,
                  "(--compare) max |diff| / max(1, max |value| of either); an inf must match, a "
                  "NaN never does")
      ->check(number_in(0.0))
      ->capture_default_str();
  cmd->callback([&run, args] {
    run = [args] {
      if (!args->make_input.empty()) return run_make_input(*args);
      if (!args->compare.empty()) return run_compare(*args);
      return run_check(*args);
    };
  });
}

}  // namespace ringattn::apps
