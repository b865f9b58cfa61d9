// A float64 sum over the ranks of a communicator that has the same bits on every rank and from run
// to run: each rank's value is gathered and the values are added in rank order. An MPI reduction
// may add in any order (and communicators carry no float64 type), which would make loss curves
// and token weights differ in the last bits between runs and meshes.
#pragma once

#include "comm/communicator.h"

namespace ringattn {

// Collective over `comm`.
double ordered_sum(Communicator& comm, double x);

}  // namespace ringattn
