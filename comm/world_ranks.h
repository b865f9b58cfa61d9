// Which world ranks a communicator's ranks are: the names the watchdog's messages use, so that a
// hang report says which processes to look at, whatever sub-communicator it happened in.
#pragma once

#include <mpi.h>

#include <string>
#include <vector>

namespace ringattn {

// World ranks of ranks `ranks` of `comm` (-1: not in the world).
std::vector<int> world_ranks_of(MPI_Comm comm, std::vector<int> ranks);

// "4-rank group, world ranks 0-3" or "3-rank group, world ranks 0,2,4" (`size` is comm's size).
std::string group_text(MPI_Comm comm, int size);

}  // namespace ringattn
