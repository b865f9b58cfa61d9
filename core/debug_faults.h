// Fault injection for the reliability tests (test/cli/fault_test.sh), never for real runs.
//
// The environment variable RINGATTN_DEBUG_FAULTS holds comma-separated KEY=INTEGER pairs that
// make the program misbehave at a chosen point, so that tests can check what a user would see
// after a real fault without racing against timers:
//
//   nan_grad_step=S         step S (1-based) of rank nan_grad_rank (default 0) scales its
//                           gradient by NaN: a non-finite gradient on every rank after the
//                           reduction, as a diverging run would produce
//   stop_step=S             after step S, rank stop_rank (default 0) behaves as if it had
//                           received SIGTERM (a preemption signal that reached one rank only)
//   checkpoint_crash_step=S while saving the checkpoint of step S, rank 0 kills itself
//                           (SIGKILL) after writing model.safetensors into the temporary
//                           directory: a writer that dies mid-save
//   checkpoint_free_kib=K   a checkpoint save sees K KiB free where checkpoints go (its check
//                           for room before writing, and the warning before the first step)
//   checkpoint_write_fail_rank=R  rank R fails to write its optimizer file in every checkpoint
//                           save, as a write error (a full disk, an I/O error) would
//   exit_stop_rank=R        rank R stops itself (SIGSTOP) once its command has returned, before
//                           MPI_Finalize: a rank hung after the job's last collective
//   step_sleep_ms=N         every training step sleeps N ms first (slow steps, so that a test
//                           can signal, kill or stop a rank while training is under way)
//   fsdp_communicate_alone=1  an FSDP group of one runs its gathers and reduce-scatters
//                           through the communicator like a larger group, instead of reading and
//                           adding in place (FlatShard): keeps the collective path (NCCL's on one
//                           GPU, say) under test, and shows that both give the same bits
//   sim_fault_launch=N      simulated GPU builds only (core/cuda_sim): the N-th kernel launch of
//                           the process of world rank sim_fault_rank (default 0; read from the
//                           launcher's environment) faults when it runs, as an illegal address
//                           would on a GPU (cli_cuda_sim: a device fault mid-training). The
//                           variable is read when such a program starts, so a typo ends it there
//
// Unset (the normal case) every query is one load of a cached, empty table.
#pragma once

#include <cstdint>
#include <string_view>

namespace ringattn {

// The value of `key` in RINGATTN_DEBUG_FAULTS, or `fallback` when absent. A malformed variable
// or an unknown key raises an Error naming the variable (a typo must not silently disable a
// test's fault).
int64_t debug_fault(std::string_view key, int64_t fallback = -1);

}  // namespace ringattn
