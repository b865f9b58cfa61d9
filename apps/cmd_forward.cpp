// `ringattn forward`: the logits (or the loss) of a Hugging Face LLaMA model for given token ids,
// on any number of ranks and with any attention implementation, so the model can be compared
// with transformers or any other implementation.
//
//   mpirun -np 4 ringattn forward --init-from HF_DIR --tokens ids.safetensors --output
//   out.safetensors
//       [--loss] [--impl vanilla|blockwise|ring] [--layout zigzag] [--seq-len N]
//       [--config F] [--set key=value ...]
//
// Tokens: a safetensors file with an integer "input_ids" [B, S] (or [S]), or a token file
// (RATOKENS) cut into rows of --seq-len tokens (default: one row of all of them).
// Output (rank 0 writes it): "logits" F32 [B, S, vocab] and "loss" F32 [1], the mean next-token
// cross-entropy over the B x (S - 1) predictions (transformers' loss with labels = input_ids).
// With --loss, only "loss": the head then runs blockwise and no [tokens, vocab] buffer exists,
// which is what long sequences need.
// Ranks: ring splits each sequence over every rank (mesh sp = world size); vanilla and blockwise
// keep whole sequences, every rank computing the same result with the parameters sharded over
// the ranks (mesh fsdp = world size).
#include <fmt/format.h>

#include <cstdlib>
#include <memory>
#include <string>
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
#include "core/backend.h"
#include "core/error.h"
#include "core/log.h"
#include "core/safetensors.h"
#include "model/hf/hf_config.h"
#include "model/hf/hf_import.h"
#include "model/hf/token_forward.h"
#include "model/train_config.h"
#include "model/trainer.h"
#include "model/transformer.h"

namespace ringattn::apps {

namespace {

struct ForwardArgs {
  std::string init_from, tokens, output, config, impl, layout;
  std::vector<std::string> sets;
  int64_t seq_len = 0;
  bool loss_only = false;
};

// What forward works on, read and checked alike by every rank before any communication.
struct ForwardInputs {
  TrainConfig cfg;
  std::string config_json;  // the resolved config, for the check that every rank has the same
  Tensor ids;               // [B, S] int32, host
  MeshShape shape;
};

int run_forward(const ForwardArgs& a) {
  // One message for all ranks when they fail alike (comm/agreed_error.h).
  ForwardInputs in = agreed_across_ranks("reading forward's inputs", [&] {
    RA_CHECK(!a.init_from.empty() && !a.tokens.empty() && !a.output.empty(),
             "forward: --init-from, --tokens and --output are required");
    ForwardInputs got;
    JsonConfig json = load_train_json(a.config, a.sets);
    if (!a.impl.empty()) json.set("attention.impl=" + a.impl);
    if (!a.layout.empty()) json.set("attention.layout=" + a.layout);
    apply_hf_config(read_hf_config(a.init_from), json);
    TrainConfig& cfg = got.cfg;
    cfg = to_train_config(json);
    got.config_json = json.dump();
    log::set_level(cfg.log_level);
    if (cpu_threads_from_environment() == 0) configure_bench_threads(0);

    got.ids = read_input_ids(a.tokens, a.seq_len);
    const Tensor& ids = got.ids;
    const int64_t S = ids.dim(1);
    for (int64_t i = 0; i < ids.numel(); ++i)
      RA_CHECK(ids.data<int32_t>()[i] < cfg.model.vocab_size,
               "forward: token {} (row {}, position {}) of '{}' is outside the model's vocabulary "
               "of {} tokens",
               ids.data<int32_t>()[i], i / S, i % S, a.tokens, cfg.model.vocab_size);

    // The mesh and lengths the config rules check: every rank runs the whole batch, so the
    // batch size only has to satisfy the data-parallel split rule.
    const int world = MpiEnv::world_size();
    const bool ring = cfg.attention.impl == AttentionImpl::Ring;
    const MeshConfig used{1, ring ? 1 : world, ring ? world : 1, 1};
    if (!(cfg.mesh == MeshConfig{}) && !(cfg.mesh == used))
      log::warn(
          "forward: mesh.* of the config (dp={} fsdp={} sp={} tp={}) is not used: forward "
          "runs {} over all {} rank(s)",
          cfg.mesh.dp, cfg.mesh.fsdp, cfg.mesh.sp, cfg.mesh.tp,
          ring ? "one sequence split by the ring" : "the whole batch, parameters sharded,", world);
    cfg.mesh = used;
    cfg.train.seq_len = S;
    cfg.train.batch_size = ring ? 1 : world;
    cfg.train.micro_batches = 1;
    cfg.eval.seq_lens.clear();
    try {
      got.shape = validate(cfg, world);
    } catch (const Error& e) {
      RA_FAIL("forward: {} tokens per row on {} rank(s): {}", S, world, e.what());
    }
    return got;
  });
  require_same_config_on_every_rank(in.config_json);
  TrainConfig& cfg = in.cfg;
  const Tensor& ids = in.ids;
  const int64_t B = ids.dim(0), S = ids.dim(1);
  const MeshShape& shape = in.shape;
  const WatchdogArm watchdog(cfg.comm.timeout_s);  // a stopped or dead rank ends the job
  Mesh mesh(shape, MPI_COMM_WORLD, cfg.comm.transport);
  // Building the model and reading the weights are local, and fail alike on every rank.
  std::unique_ptr<Transformer> built;
  HfLoadSummary loaded;
  std::string weights_text;
  agreed_across_ranks(&mesh.world(), "loading the model", [&] {
    built = std::make_unique<Transformer>(cfg, mesh, backend_for(cfg));
    const HfWeights weights = HfWeights::open(a.init_from);
    loaded = load_hf_weights(weights, *built);
    weights_text = weights.describe();
  });
  Transformer& model = *built;
  log::info("forward: {} from {} ({}); {} x {} tokens; attention {} on {}", loaded.describe(),
            a.init_from, weights_text, B, S, impl_name(cfg.attention.impl), mesh.describe());

  const TokenForward r = forward_tokens(model, mesh, ids, cfg.attention.layout, !a.loss_only);
  log::info("forward: loss {:.8f} over {} predictions", r.loss(), int64_t(r.tokens));
  if (mesh.world_rank() == 0) {
    Tensor loss = Tensor::empty({1}, DType::F32, Device::CPU, "loss");
    loss.data<float>()[0] = float(r.loss());
    std::vector<std::pair<std::string, Tensor>> out;
    if (!a.loss_only) out.emplace_back("logits", r.logits);
    out.emplace_back("loss", loss);
    save_safetensors(a.output, out,
                     {{"loss", fmt::format("{:.17g}", r.loss())},
                      {"predictions", fmt::format("{}", int64_t(r.tokens))},
                      {"init_from", a.init_from}});
    log::info("forward: wrote {}", a.output);
  }
  // Rank 0 writes alone, which may take long: the others wait for it here, not in the watched
  // MPI_Finalize (comm/mpi_env.h), whose timeout is for ranks that stopped answering.
  MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
  return 0;
}

}  // namespace

void add_forward_command(CLI::App& parent, Action& run) {
  auto args = std::make_shared<ForwardArgs>();
  CLI::App* cmd = parent.add_subcommand(
      "forward", "Logits (or the loss) of a Hugging Face LLaMA model for given token ids");
  cmd->add_option("--init-from", args->init_from,
                  "Hugging Face model directory (config.json and safetensors weights)")
      ->required();
  cmd->add_option("--tokens", args->tokens,
                  "Token ids: safetensors with an integer 'input_ids' [B, S], or a RATOKENS file")
      ->required();
  cmd->add_option("--output", args->output, "Output safetensors: 'logits' and 'loss'")->required();
  cmd->add_flag("--loss", args->loss_only,
                "Write only the loss (blockwise head, no [tokens, vocab] logits buffer)");
  cmd->add_option("--impl", args->impl, "Attention: vanilla, blockwise or ring (default: ring)")
      ->check(CLI::IsMember({"vanilla", "blockwise", "ring"}));
  cmd->add_option("--layout", args->layout,
                  "Ring layout: contiguous, zigzag or striped (default: zigzag)")
      ->check(CLI::IsMember({"contiguous", "zigzag", "striped"}));
  cmd->add_option("--seq-len", args->seq_len,
                  "Tokens per row when reading a RATOKENS file (default: one row of all)")
      ->check(positive_count());
  cmd->add_option("--config", args->config,
                  "Trainer config for chunk sizes and the like (the model shape comes from "
                  "config.json)");
  cmd->add_option("--set", args->sets, "Override one config key (repeatable)")
      ->allow_extra_args(false);
  cmd->callback([args, &run] { run = [args] { return run_forward(*args); }; });
}

}  // namespace ringattn::apps
