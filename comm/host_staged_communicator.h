// HostStagedCommunicator: device buffers over a host (MPI) transport. Each collective copies its
// device inputs to host staging buffers, runs the host communicator's collective, and copies the
// results back; each ring step stages its send buffer out before posting and its receive buffer
// in after wait(). This is how several ranks share one GPU (NCCL refuses two ranks on one
// device), and how a GPU build runs without NCCL: `comm.transport = mpi` with `device = cuda`.
//
// Contract, on top of Communicator's (comm/communicator.h):
//  * device() is the staged device; buffers may be device or host memory (the device
//    allocator's copies take either), so code that reduces host scalars (gradient norms) may
//    use the same communicator: accepts_host_buffers() is true.
//  * The copies are synchronous and wait for the device's queued work first, so inputs written
//    by earlier backend operations are complete when they are read; results are in place when a
//    collective (or a ring's wait()) returns.
//  * A group of one rank stages nothing: its collectives and ring are copies on the device (or
//    nothing at all), so one GPU training alone pays no host round trips.
//  * Staging buffers come from the host allocator: they count in the host's live and peak bytes
//    (a collective's for its duration, a ring's for the ring's lifetime, sized by its largest
//    message).
#pragma once

#include <memory>

#include "comm/communicator.h"
#include "core/allocator.h"

namespace ringattn {

// `host` (device() == CPU) and `device` must outlive the result.
std::unique_ptr<Communicator> make_host_staged_communicator(Communicator& host, Allocator& device);

}  // namespace ringattn
