// `ringattn train` and `ringattn eval`: the trainer (model/trainer.h) behind the command line.
//
//   mpirun -np 4 ringattn train --config configs/demo.json [--set train.steps=50] [--resume]
//   mpirun -np 4 ringattn eval --config configs/demo.json [--checkpoint DIR] [--seq-lens 2048,4096]
//   mpirun -np 4 ringattn train --config configs/finetune_hf.json --init-from HF_DIR
#include <fmt/ranges.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "apps/bench_common.h"
#include "apps/cli_checks.h"
#include "apps/commands.h"
#include "comm/agreed_config.h"
#include "comm/agreed_error.h"
#include "comm/mesh.h"
#include "comm/mpi_check.h"
#include "comm/mpi_env.h"
#include "comm/watchdog.h"
#include "core/allocator.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/log.h"
#include "model/checkpoint.h"
#include "model/hf/hf_config.h"
#include "model/hf/hf_import.h"
#include "model/run_dir_lock.h"
#include "model/stop_signal.h"
#include "model/train_config.h"
#include "model/trainer.h"

namespace ringattn::apps {

namespace {

namespace fs = std::filesystem;

struct TrainArgs {
  std::string file;
  std::vector<std::string> sets;
  bool resume = false;
  std::string init_from;  // a Hugging Face model directory
};

struct EvalArgs {
  std::string file;
  std::vector<std::string> sets;
  std::string checkpoint;
  std::vector<int64_t> seq_lens;
  std::string init_from;     // a Hugging Face model directory
  double min_accuracy = -1;  // < 0: no check
};

// The resolved config, validated for this launch, and the mesh it asks for.
struct Setup {
  JsonConfig json;
  TrainConfig cfg;
  MeshShape shape;
};

// What a training run's config makes likely to disappoint, said before it starts (and before
// the backend is picked, which fails without a GPU). Train only: eval shares resolve().
void warn_about_training_plan(const TrainConfig& cfg, const MeshShape& shape) {
  // Often a short trial of a preset (--set train.steps=50): legal, but it trains only the
  // curriculum's first lengths, never seq_len, which nothing else would say.
  int64_t curriculum = 0;
  std::vector<int64_t> lengths;  // those the run reaches
  for (size_t i = 0; i < cfg.train.curriculum_steps.size(); ++i) {
    if (curriculum < cfg.train.steps) lengths.push_back(cfg.train.curriculum_seq_lens[i]);
    curriculum += cfg.train.curriculum_steps[i];
  }
  if (curriculum > 0 && cfg.train.steps <= curriculum)
    log::warn(
        "train.steps = {} ends within the sequence-length curriculum (its stages take {} "
        "steps): this run trains at {} only, never at train.seq_len = {}",
        cfg.train.steps, curriculum, fmt::join(lengths, ", "), cfg.train.seq_len);
  // The cuBLAS tile path runs each (batch row, head, query chunk, key chunk) tile as one problem
  // of a batched GEMM: tiles much smaller than cuBLAS's own (128 x 128) leave the GPU idle, and
  // every tile is planned and staged on the host. Said only where it costs something: many tiles.
  if (cfg.device == Device::CUDA && cfg.attention.kernel == AttentionKernel::Tiles &&
      cfg.attention.impl != AttentionImpl::Vanilla) {
    const int64_t local = cfg.train.seq_len / std::max(shape.sp, 1);
    const auto chunk = [&](int64_t c) { return c > 0 ? std::min(c, local) : local; };
    const auto chunks = [&](int64_t c) {
      return (local + chunk(c) - 1) / std::max<int64_t>(chunk(c), 1);
    };
    const int64_t pairs = chunks(cfg.attention.q_chunk) * chunks(cfg.attention.k_chunk);
    if (pairs > 4096 && chunk(cfg.attention.q_chunk) * chunk(cfg.attention.k_chunk) < 128 * 128)
      log::warn(
          "attention.kernel = tiles with q_chunk = {} and k_chunk = {} cuts the {} tokens "
          "of a rank into {} tile pairs per attention call, each a GEMM smaller than cuBLAS's "
          "own 128 x 128 tile: the GPU will mostly wait. Raise attention.q_chunk and k_chunk "
          "(256 or more), or set attention.kernel = fused (bf16)",
          cfg.attention.q_chunk, cfg.attention.k_chunk, local, pairs);
  }
}

Setup resolve(const std::string& file, const std::vector<std::string>& sets,
              const std::string& init_from = "", bool training = false) {
  JsonConfig json = load_train_json(file, sets);
  // The Hugging Face config sets the model shape (model/hf/hf_config.h), over file and --set.
  if (!init_from.empty()) apply_hf_config(read_hf_config(init_from), json);
  TrainConfig cfg = to_train_config(json);
  const MeshShape shape = validate(cfg, MpiEnv::world_size());
  log::set_level(cfg.log_level);
  if (training) warn_about_training_plan(cfg, shape);
  // The limit applies where the model lives (the GPU's memory with device = cuda).
  backend_for(cfg).allocator().set_limit(cfg.memory_limit_bytes());
  // An explicit OPENBLAS_NUM_THREADS (or OMP_NUM_THREADS) wins (the tests pin it to 1);
  // otherwise the node's cores are shared evenly by its ranks, as oversubscribed BLAS threads
  // slow every rank down.
  if (cpu_threads_from_environment() == 0) configure_bench_threads(0);
  return {std::move(json), std::move(cfg), shape};
}

// Every rank writes its optimizer shard into the checkpoint directory, so every rank must see the
// one rank 0 prepared, not a namesake of its own (a node-local or relative run_dir on several
// nodes: before, such a run trained to its first save and lost everything there), and be able to
// write in it. Rank 0 leaves a marker of a name no other run uses; the others look for it.
// Collective over MPI_COMM_WORLD; a failure on any rank ends every rank together.
void check_every_rank_sees(const std::string& checkpoints, const std::string& run_dir) {
  if (MpiEnv::world_size() == 1) return;
  const bool root = MpiEnv::world_rank() == 0;
  uint64_t nonce = 0;
  if (root) nonce = (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
  {
    const WatchdogScope watch("run directory check (rank 0's marker name)", 0);
    MPI_CHECK(MPI_Bcast(&nonce, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD));
  }
  const fs::path marker = fs::path(checkpoints) / fmt::format(".shared_check.{:016x}", nonce);
  struct RemoveMarker {  // rank 0's, however the check ends
    const fs::path* path;
    ~RemoveMarker() {
      std::error_code ec;
      if (path) fs::remove(*path, ec);
    }
  } remove{root ? &marker : nullptr};
  agreed_across_ranks("leaving a marker in the checkpoint directory", [&] {
    if (!root) return;
    std::ofstream f(marker);
    f << "ringattn: every rank of a run must see this file\n";
    f.close();
    RA_CHECK(f.good(), "cannot write '{}'", marker.string());
  });
  agreed_across_ranks("checking that it sees the checkpoint directory", [&] {
    if (root) return;
    std::error_code ec;
    const bool seen = fs::exists(marker, ec);
    RA_CHECK(!ec, "cannot look into the checkpoint directory '{}': {}", checkpoints, ec.message());
    // Without this rank's number: ranks that fail alike say it once (core/error.h).
    RA_CHECK(seen,
             "this rank does not see the checkpoint directory that rank 0 prepared ('{}' here has "
             "no '{}'): run_dir '{}' must be one directory every rank shares (a shared file "
             "system; an absolute path when the ranks start in different directories)",
             fs::absolute(checkpoints, ec).string(), marker.filename().string(), run_dir);
    prepare_checkpoints_dir(checkpoints, "run_dir");
  });
}

// The run directory, claimed by rank 0 before the mesh and the model exist, so that a refusal
// unwinds nothing that waits for peers (NCCL's finalize would wait for ranks already in their
// first collective); every rank learns the verdict and raises it.
//  * A fresh run where a run's checkpoints are would prune and replace them and restart its
//    metrics: refused, with nothing written.
//  * One job per run directory, for the whole run (model/run_dir_lock.h).
//  * The checkpoint directory is created and written to once, so that a file in its way or a
//    missing permission shows now, not at the first save.
std::optional<RunDirLock> claim_run_dir(const TrainConfig& cfg, bool resume) {
  std::optional<RunDirLock> lock;
  std::string error;
  std::optional<Error> root_error;
  if (MpiEnv::world_rank() == 0) {
    try {
      const std::string checkpoints = (fs::path(cfg.run_dir) / "checkpoints").string();
      if (!resume)
        if (const auto latest = find_latest_checkpoint(checkpoints))
          RA_FAIL(
              "run_dir '{}' already holds a run's checkpoints (the latest: {}); add --resume to "
              "continue it, or set another run_dir to start a new run (nothing was changed)",
              cfg.run_dir, *latest);
      lock.emplace(cfg.run_dir);
      prepare_checkpoints_dir(checkpoints, "run_dir");
    } catch (const Error& e) {
      lock.reset();
      error = e.what();
      root_error = e;
    }
  }
  int n = int(error.size());
  {
    const WatchdogScope watch("run directory check (rank 0's verdict)", 0);
    MPI_CHECK(MPI_Bcast(&n, 1, MPI_INT, 0, MPI_COMM_WORLD));
    error.resize(size_t(n));
    if (n > 0) MPI_CHECK(MPI_Bcast(error.data(), n, MPI_CHAR, 0, MPI_COMM_WORLD));
  }
  // Rank 0 says why; the others end with it, silently (core/error.h: AgreedError).
  if (root_error) throw AgreedError(*root_error, /*own=*/true);
  if (!error.empty()) throw AgreedError(Error(error, __FILE__, __LINE__), /*own=*/false);
  check_every_rank_sees((fs::path(cfg.run_dir) / "checkpoints").string(), cfg.run_dir);
  return lock;
}

int run_train(const TrainArgs& a) {
  Setup s = agreed_across_ranks("reading the config",
                                [&] { return resolve(a.file, a.sets, a.init_from, true); });
  require_same_config_on_every_rank(s.json.dump());
  // A dead or stopped rank ends the job after comm.timeout_s instead of hanging it (from the run
  // directory's check on, and until MPI_Finalize: comm/mpi_env.h).
  const WatchdogArm watchdog(s.cfg.comm.timeout_s);
  const std::optional<RunDirLock> lock = claim_run_dir(s.cfg, a.resume);
  // From here on SIGTERM / SIGUSR1 mean "checkpoint after this step and exit 0". Before, with
  // nothing to save, they end the process as usual (a run stuck reading its inputs included).
  install_stop_signals();
  Mesh mesh(s.shape, MPI_COMM_WORLD, s.cfg.comm.transport);
  double peak = s.cfg.peak_tflops * 1e12;
  bool measured = false;
  if (peak <= 0) {
    peak = measure_gemm_gflops(mesh.world(), backend_for(s.cfg), s.cfg.model.dtype) * 1e9;
    measured = true;
  }
  TrainerOptions opt;
  opt.config_json = s.json.dump();
  opt.peak_flops = peak;
  Trainer trainer(s.cfg, mesh, opt);

  log::info("config:\n{}", s.json.dump());
  log::info("mesh: {}", mesh.describe());
  log::info("compute: {}; device buffers travel by {}", trainer.backend().name(),
            s.cfg.device == Device::CPU               ? "MPI"
            : s.cfg.comm.transport == Transport::NCCL ? "NCCL"
                                                      : "MPI, staged through host memory");
  log::info("data: {}", trainer.source().describe());
  log::info("parameters: {} ({:.2f} M)", trainer.model().parameter_count(),
            double(trainer.model().parameter_count()) / 1e6);
  log::info("tokens per step: {} ({} sequences x {} tokens, {} micro-batch(es))",
            trainer.tokens_per_step(), s.cfg.train.batch_size, s.cfg.train.seq_len,
            s.cfg.train.micro_batches);
  log::info("FLOPs per token: {:.3e} (6N + 6 L H d S, causal); peak {:.1f} GFLOP/s ({})",
            trainer.flops_per_token(), peak / 1e9,
            measured ? gemm_name(s.cfg.model.dtype) + " measured on these cores"
                     : std::string("peak_tflops from the config"));
  log::info("threads per rank: {}", cpu_threads());
  log::info("{}", trainer.memory_plan());

  if (a.resume) {
    if (!trainer.resume_latest())
      log::warn("--resume: no complete checkpoint in {}; starting from step 0",
                trainer.checkpoints_dir());
  }
  // A resumed run continues from its checkpoint; a fresh one starts from the imported weights.
  if (!a.init_from.empty() && trainer.step() == 0)
    agreed_across_ranks("loading the --init-from weights",
                        [&] { init_from_hf(a.init_from, trainer.model()); });
  if (trainer.step() >= s.cfg.train.steps) {
    log::info("already at step {} of train.steps = {}; nothing to do", trainer.step(),
              s.cfg.train.steps);
    return 0;
  }
  trainer.run();
  if (trainer.stopped()) {
    log::info("stopped by a signal at step {} of {}: checkpoint written; continue with --resume",
              trainer.step(), s.cfg.train.steps);
    return 0;
  }
  log::info("done: {} steps ({} skipped as non-finite); metrics in {}/metrics.jsonl",
            trainer.step(), trainer.skipped(), s.cfg.run_dir);
  return 0;
}

int run_eval(const EvalArgs& a) {
  Setup s = agreed_across_ranks("reading the config",
                                [&] { return resolve(a.file, a.sets, a.init_from); });
  require_same_config_on_every_rank(s.json.dump());
  const WatchdogArm watchdog(s.cfg.comm.timeout_s);
  if (!a.seq_lens.empty()) s.cfg.eval.seq_lens = a.seq_lens;
  Mesh mesh(s.shape, MPI_COMM_WORLD, s.cfg.comm.transport);
  TrainerOptions opt;
  opt.write_metrics = false;
  Trainer trainer(s.cfg, mesh, opt);
  // Every rank finds and reads the weights alike (local work): one message for all of them.
  const bool hf = a.checkpoint.empty() && !a.init_from.empty();  // evaluate the imported weights
  // Rank 0's choice of checkpoint for every rank (one whose listing differed loaded another).
  const std::string found = agreed_across_ranks("finding the checkpoint to evaluate", [&] {
    std::string dir = hf ? a.init_from : a.checkpoint;
    // A run directory given as --checkpoint names its newest complete checkpoint (as export
    // takes it); a checkpoint directory, complete or not, is taken as it is.
    const fs::path given(dir);
    if (!hf && !dir.empty() && !fs::exists(given / "state.json") &&
        !fs::exists(given / "COMPLETE") && fs::is_directory(given / "checkpoints")) {
      const auto latest = find_latest_checkpoint((given / "checkpoints").string());
      RA_CHECK(latest.has_value(), "eval: '{}' is a run directory without a complete checkpoint",
               dir);
      dir = *latest;
    }
    if (dir.empty()) {
      const auto latest = find_latest_checkpoint(trainer.checkpoints_dir());
      RA_CHECK(latest.has_value(),
               "eval: no complete checkpoint in '{}' (train first, or pass --checkpoint DIR)",
               trainer.checkpoints_dir());
      dir = *latest;
    }
    return dir;
  });
  const std::string dir = broadcast_text(mesh.world(), found, 0);
  agreed_across_ranks("loading the weights to evaluate", [&] {
    if (hf)
      init_from_hf(dir, trainer.model());
    else
      trainer.load_weights(dir);
  });
  log::info("eval of {} (step {}) on {}; {} batches of {} sequences per length", dir,
            trainer.step(), mesh.describe(), s.cfg.eval.batches, s.cfg.train.batch_size);
  int below = 0;
  for (int64_t len : s.cfg.eval_seq_lens()) {
    const EvalResult e = trainer.evaluate(len, s.cfg.eval.batches);
    log::info(
        "seq_len {}: val_loss {:.4f}  answer token accuracy {:.4f} ({} tokens)  exact answer "
        "accuracy {:.4f} ({} answers)",
        e.seq_len, e.loss, e.token_accuracy, e.answer_tokens, e.exact_accuracy, e.answers);
    if (a.min_accuracy >= 0 && !(e.answers > 0 && e.exact_accuracy >= a.min_accuracy)) {
      log::warn(
          "seq_len {}: exact answer accuracy {:.4f} over {} answers is below "
          "--min-accuracy {}",
          e.seq_len, e.exact_accuracy, e.answers, a.min_accuracy);
      ++below;
    }
  }
  // Every rank computed the same evaluation, so every rank exits with the same status.
  return below > 0 ? 3 : 0;
}

}  // namespace

void add_train_command(CLI::App& parent, Action& run) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* cmd = parent.add_subcommand("train", "Train the model described by a config");
  cmd->add_option("--config", args->file, "JSON config file (default: built-in defaults)");
  cmd->add_option("--set", args->sets, "Override one key: --set train.steps=50 (repeatable)")
      ->allow_extra_args(false);
  cmd->add_flag("--resume", args->resume,
                "Continue from the newest complete checkpoint in <run_dir>/checkpoints");
  cmd->add_option("--init-from", args->init_from,
                  "Start from a Hugging Face LLaMA directory (config.json + safetensors); its "
                  "config sets the model shape");
  cmd->callback([args, &run] { run = [args] { return run_train(*args); }; });
}

void add_eval_command(CLI::App& parent, Action& run) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* cmd = parent.add_subcommand(
      "eval", "Validation loss and answer accuracy of a checkpoint at given context lengths");
  cmd->add_option("--config", args->file, "JSON config file (default: built-in defaults)");
  cmd->add_option("--set", args->sets, "Override one key (repeatable)")->allow_extra_args(false);
  cmd->add_option("--checkpoint", args->checkpoint,
                  "Checkpoint directory (default: the newest complete one in run_dir)");
  cmd->add_option("--seq-lens", args->seq_lens, "Context lengths, e.g. 2048,4096")
      ->delimiter(',')
      ->check(positive_count());
  cmd->add_option("--min-accuracy", args->min_accuracy,
                  "Exit with status 3 if the exact answer accuracy at any length is below this "
                  "(0 to 1): a pass/fail check for scripts")
      ->check(number_in(0.0, 1.0));
  cmd->add_option("--init-from", args->init_from,
                  "Evaluate a Hugging Face LLaMA directory instead of a checkpoint");
  cmd->callback([args, &run] { run = [args] { return run_eval(*args); }; });
}

}  // namespace ringattn::apps
