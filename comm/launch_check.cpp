#include "comm/launch_check.h"

#include <cstdlib>
#include <vector>

#include "core/error.h"

namespace ringattn {

namespace {

bool is_set(const EnvLookup& env, const std::string& name) {
  const auto v = env(name);
  return v.has_value() && !v->empty();
}

// A positive decimal integer, or nullopt ("4x", "", "-1", "0" are not sizes).
std::optional<long> parse_size(const std::string& s) {
  if (s.empty() || s.size() > 9) return std::nullopt;
  long n = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + (c - '0');
  }
  if (n <= 0) return std::nullopt;
  return n;
}

}  // namespace

EnvLookup process_env() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

std::string launch_size_mismatch(const EnvLookup& env, int world_size) {
  if (env("RINGATTN_SKIP_LAUNCH_CHECK").value_or("") == "1") return "";
  std::vector<std::string> names = {"RINGATTN_WORLD_SIZE"};
  // SLURM_NTASKS is also set in the batch script of an sbatch job, where it counts the job's tasks;
  // a rank started there by a nested mpirun may legitimately use fewer. Inside a job step (srun)
  // it is the step's task count, which is what the ranks must add up to.
  if (is_set(env, "SLURM_JOB_ID") && is_set(env, "SLURM_STEP_ID")) {
    names.push_back("SLURM_STEP_NUM_TASKS");
    names.push_back("SLURM_NTASKS");
  }
  names.insert(names.end(), {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"});
  for (const std::string& name : names) {
    const auto value = env(name);
    if (!value.has_value()) continue;
    const auto expected = parse_size(*value);
    if (expected.has_value() && *expected == world_size) continue;
    std::string hint =
        world_size == 1
            ? " Every process started as a separate one-rank MPI job: the launcher's "
              "process-management interface does not match this MPI library (with srun, use the "
              "--mpi= plugin this OpenMPI was built for, e.g. srun --mpi=pmix; see `srun "
              "--mpi=list`), or the binary was started without mpirun/srun."
            : " The launcher and MPI disagree on the number of ranks.";
    return fmt::format(
        "launch check: {}={} but MPI's world size is {}.{} (RINGATTN_SKIP_LAUNCH_CHECK=1 turns "
        "this check off.)",
        name, *value, world_size, hint);
  }
  return "";
}

void check_launch_size(int world_size) {
  const std::string message = launch_size_mismatch(process_env(), world_size);
  RA_CHECK(message.empty(), "{}", message);
}

}  // namespace ringattn
