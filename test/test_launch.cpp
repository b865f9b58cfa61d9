// The launch check (comm/launch_check.h): the world size each launcher announced in the
// environment against MPI's world size. Pure function of a given environment; every rank runs it
// alike, and one case checks the real process environment of this test run.
#include <catch2/catch.hpp>

#include <map>
#include <string>

#include "comm/launch_check.h"
#include "comm/mpi_env.h"
#include "core/error.h"

using namespace ringattn;
using Catch::Contains;

namespace {

EnvLookup env_of(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    const auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

}  // namespace

TEST_CASE("launch check: no launcher variables, any world size", "[launch]") {
  CHECK(launch_size_mismatch(env_of({}), 1).empty());
  CHECK(launch_size_mismatch(env_of({}), 4).empty());
}

TEST_CASE("launch check: matching sizes pass", "[launch]") {
  CHECK(launch_size_mismatch(env_of({{"SLURM_JOB_ID", "7"},
                                     {"SLURM_STEP_ID", "0"},
                                     {"SLURM_NTASKS", "4"},
                                     {"SLURM_STEP_NUM_TASKS", "4"},
                                     {"PMIX_RANK", "2"}}),
                             4)
            .empty());
  CHECK(launch_size_mismatch(env_of({{"OMPI_COMM_WORLD_SIZE", "2"}}), 2).empty());
  CHECK(launch_size_mismatch(env_of({{"PMI_SIZE", "8"}, {"RINGATTN_WORLD_SIZE", "8"}}), 8).empty());
}

TEST_CASE("launch check: srun without a matching PMI starts singletons", "[launch]") {
  const std::string m = launch_size_mismatch(
      env_of({{"SLURM_JOB_ID", "7"}, {"SLURM_STEP_ID", "0"}, {"SLURM_NTASKS", "4"}}), 1);
  CHECK_THAT(m, Contains("SLURM_NTASKS=4"));
  CHECK_THAT(m, Contains("world size is 1"));
  CHECK_THAT(m, Contains("--mpi="));
}

TEST_CASE("launch check: SLURM_NTASKS counts only inside a job step", "[launch]") {
  // The batch script of a 4-task job running `mpirun -np 2`: no step id, so not a mismatch.
  CHECK(launch_size_mismatch(env_of({{"SLURM_JOB_ID", "7"}, {"SLURM_NTASKS", "4"}}), 2).empty());
  // An srun step of 2 tasks in a 4-task allocation names the step's count.
  const std::string m = launch_size_mismatch(env_of({{"SLURM_JOB_ID", "7"},
                                                     {"SLURM_STEP_ID", "1"},
                                                     {"SLURM_STEP_NUM_TASKS", "2"},
                                                     {"SLURM_NTASKS", "2"}}),
                                             4);
  CHECK_THAT(m, Contains("SLURM_STEP_NUM_TASKS=2"));
  CHECK_THAT(m, Contains("world size is 4"));
  CHECK_THAT(m, Contains("disagree"));
}

TEST_CASE("launch check: each launcher variable is checked", "[launch]") {
  for (const char* name :
       {"RINGATTN_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"}) {
    const std::string m = launch_size_mismatch(env_of({{name, "3"}}), 2);
    CHECK_THAT(m, Contains(std::string(name) + "=3"));
    CHECK_THAT(m, Contains("world size is 2"));
  }
}

TEST_CASE("launch check: malformed sizes are mismatches", "[launch]") {
  for (const char* value : {"", "0", "-2", "4x", "four", "12345678901"})
    CHECK_THAT(launch_size_mismatch(env_of({{"PMI_SIZE", value}}), 4),
               Contains(std::string("PMI_SIZE=") + value));
}

TEST_CASE("launch check: RINGATTN_SKIP_LAUNCH_CHECK=1 turns it off", "[launch]") {
  CHECK(launch_size_mismatch(env_of({{"RINGATTN_SKIP_LAUNCH_CHECK", "1"}, {"PMI_SIZE", "4"}}), 1)
            .empty());
  CHECK_FALSE(
      launch_size_mismatch(env_of({{"RINGATTN_SKIP_LAUNCH_CHECK", "0"}, {"PMI_SIZE", "4"}}), 1)
          .empty());
}

TEST_CASE("launch check: this test run is consistent", "[launch]") {
  // ctest starts this binary with mpirun -np 1, 2, 4: the real environment must pass.
  CHECK_NOTHROW(check_launch_size(MpiEnv::world_size()));
  // Under mpirun the real environment announces the size, so any other size is refused.
  if (process_env()("OMPI_COMM_WORLD_SIZE").has_value())
    CHECK_THROWS_AS(check_launch_size(MpiEnv::world_size() + 1), Error);
}
