// Preemption: SIGTERM or SIGUSR1 asks the trainer to stop cleanly.
//
// The handler only records the signal; Trainer::run polls stop_requested() after every step
// and agrees with the other ranks (a max over the world, one integer per step) whether any rank
// was asked, because a signal may reach only some ranks (srun --signal, mpirun forwarding, a
// kill of one process). Every rank then finishes the same step, writes the checkpoint of it and
// exits 0, so `--resume` continues bit-exactly. A second signal of the same kind ends the
// process at once (the default action is restored after the first), for a user who really
// means it.
#pragma once

namespace ringattn {

// Installs the handler for SIGTERM and SIGUSR1 (idempotent).
void install_stop_signals();
// True once this process received SIGTERM or SIGUSR1, or request_stop() was called.
bool stop_requested();
// The signal received (SIGTERM, SIGUSR1), or 0 (none, or request_stop()).
int stop_signal();
// Programmatic stop request (tests, fault injection); clear_stop_request() undoes it.
void request_stop();
void clear_stop_request();

}  // namespace ringattn
