// ringattn: one executable, launched by mpirun/srun with one rank per GPU (or on CPUs).
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "apps/commands.h"
#include "comm/agreed_config.h"
#include "comm/agreed_error.h"
#include "comm/launch_check.h"
#include "comm/mpi_env.h"
#include "comm/watchdog.h"
#include "core/backend.h"
#include "core/debug_faults.h"
#include "core/error.h"
#include "core/log.h"

namespace {

std::string version_text() {
  using namespace ringattn;
  return fmt::format(
      "ringattn {}\nbuild type: {}\nCUDA backend: {}\nNCCL: {}\nCUDA devices visible: {}\n",
      RINGATTN_VERSION, RINGATTN_BUILD_TYPE, cuda_compiled() ? "compiled in" : "not compiled",
      nccl_compiled() ? "compiled in" : "not compiled", cuda_device_count());
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ringattn;
  // NCCL (2.22 and later) sets up a collective's connections when it first runs
  // (NCCL_RUNTIME_CONNECT=1) and allocates their buffers then, with cudaMalloc, outside the
  // compute stream's memory pool. In training that is after the first backward's peak, which the
  // pool keeps for reuse (core/cuda/cuda_backend.cu): the dp group's first all-reduce, for one,
  // would find the GPU full. Connecting as each communicator is created takes that memory before
  // the pool grows (send/receive, the ring's, still connect at their first use, in the first
  // forward). Set before MPI or any thread starts (setenv beside threads that read the
  // environment is unsafe; NCCL reads it once); a value the user set is kept.
  ::setenv("NCCL_RUNTIME_CONNECT", "0", /*overwrite=*/0);
  MpiEnv mpi(&argc, &argv);
  CLI::App app{"ringattn: exact long-context attention and training with Ring Attention"};
  app.require_subcommand(0, 1);
  bool show_version = false;
  std::string log_level = "info";
  app.add_flag("--version", show_version, "Print version, build type and compiled-in backends");
  CLI::Option* log_level_option =
      app.add_option("--log-level", log_level,
                     "trace|debug|info|warn|error|off (overrides the config's log_level)")
          ->capture_default_str();

  apps::Action run;
  apps::add_attention_command(app, run);
  apps::add_bench_command(app, run);
  apps::add_config_command(app, run);
  apps::add_train_command(app, run);
  apps::add_eval_command(app, run);
  apps::add_forward_command(app, run);
  apps::add_export_command(app, run);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = 0;
    if (MpiEnv::world_rank() == 0)
      code = app.exit(e);
    else
      code = e.get_exit_code();
    return code;
  }

  int code = 0;
  try {
    if (log_level_option->count() > 0)
      log::pin_level(log_level);
    else
      log::set_level(log_level);
    if (show_version) {
      if (MpiEnv::world_rank() == 0) std::fputs(version_text().c_str(), stdout);
      return 0;
    }
    if (!run) {
      if (MpiEnv::world_rank() == 0) std::fputs(app.help().c_str(), stdout);
      return 0;
    }
    // Before any work: N singletons from a launcher/MPI mismatch must not each train alone.
    check_launch_size(MpiEnv::world_size());
    // Flags outside the config (--resume, --checkpoint) decide what the ranks do together too.
    require_same_command_line(std::vector<std::string>(argv + 1, argv + argc));
    code = run();
    // The command's comm.timeout_s (if it armed the watchdog) also bounds MPI_Finalize's wait.
    if (Watchdog::timeout_s() > 0) MpiEnv::watch_finalize(Watchdog::timeout_s());
    // Test-only fault (core/debug_faults.h): a rank that stops after the command's last
    // collective, before MPI_Finalize (comm/mpi_env.h: the watchdog ends the job).
    if (MpiEnv::world_rank() == debug_fault("exit_stop_rank")) {
      log::rank_error("RINGATTN_DEBUG_FAULTS: rank {} stops before MPI_Finalize",
                      MpiEnv::world_rank());
      spdlog::default_logger()->flush();
      std::raise(SIGSTOP);
    }
  } catch (const AgreedError& e) {
    // Every rank raised it at the same point (a config every rank read alike, a checkpoint that
    // could not be saved): none waits in a collective, so each message is said once and the job
    // ends as usual, without MPI_Abort. Bounded all the same, should a rank not arrive.
    const double timeout_s = Watchdog::timeout_s() > 0 ? Watchdog::timeout_s() : kAgreementTimeoutS;
    try {
      report_agreed_error(e, timeout_s);
    } catch (const std::exception& report) {  // the report's collective failed: say both, abort
      log::rank_error("{} (and reporting it failed: {})", e.describe(), report.what());
      MpiEnv::abort(1);
      return 1;
    }
    MpiEnv::watch_finalize(timeout_s);
    return 1;
  } catch (const Error& e) {
    log::rank_error("{}", e.describe());
    // The same bad input fails on every rank; a failure of one rank alone must not leave the
    // others waiting forever, so the job is ended as a whole.
    if (MpiEnv::world_size() > 1) MpiEnv::abort(1);
    return 1;
  } catch (const std::bad_alloc&) {
    // Host memory outside the allocator's count (a container, a library), or a limit (ulimit -v,
    // a cgroup) below what the allocator's own check allows.
    log::rank_error(
        "out of host memory (std::bad_alloc): this process may not allocate what the command "
        "needs; lower the sizes it works on (batch, sequence length, model), use more ranks, or "
        "raise the process's memory limit");
    if (MpiEnv::world_size() > 1) MpiEnv::abort(1);
    return 1;
  } catch (const std::exception& e) {
    log::rank_error("{}", e.what());
    if (MpiEnv::world_size() > 1) MpiEnv::abort(1);
    return 1;
  }
  return code;
}
