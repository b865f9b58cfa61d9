// Launch check: the MPI world must have as many ranks as the launcher asked for.
//
// When the launcher and the MPI library do not speak the same process-management interface (say
// `srun --mpi=none` or the wrong `--mpi=` plugin, or another MPI's `mpirun`), every process starts
// as its own singleton with world size 1: N copies of a one-rank job that each train on their own
// and overwrite one another's checkpoints, without any error. Launchers leave the size they meant
// in the environment, so comparing it with MPI's world size catches that at start-up.
#pragma once

#include <functional>
#include <optional>
#include <string>

namespace ringattn {

// Reads one environment variable: its value, or nullopt when it is not set.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;

// The process environment (std::getenv).
EnvLookup process_env();

// Compares each world size a launcher announced with `world_size` (MPI_Comm_size of the world):
//   RINGATTN_WORLD_SIZE   set by scripts/launch.sh and scripts/slurm/train.sbatch
//   SLURM_STEP_NUM_TASKS  inside a Slurm job step (srun)
//   SLURM_NTASKS          inside a Slurm job step (SLURM_JOB_ID and SLURM_STEP_ID set)
//   OMPI_COMM_WORLD_SIZE  OpenMPI's mpirun
//   PMI_SIZE              PMI-1/PMI-2 launchers (MPICH's hydra, srun --mpi=pmi2)
//   PMIX_SIZE             PMIx launchers that export it
// Returns the message for the first one that differs (naming the variable, its value and MPI's
// world size), or an empty string when all agree. A value that is not a positive integer is a
// mismatch too. RINGATTN_SKIP_LAUNCH_CHECK=1 turns the check off.
std::string launch_size_mismatch(const EnvLookup& env, int world_size);

// launch_size_mismatch on the process environment; throws ringattn::Error on a mismatch.
void check_launch_size(int world_size);

}  // namespace ringattn
