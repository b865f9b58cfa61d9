// Which world ranks a communicator's ranks are: the names the watchdog's messages use, so that a
// hang report says which processes to look at, whatever sub-communicator it happened in.
#pragma once

#include <mpi.h>

#include <string>
#include <vector>

namespace ringattn {

// World ranks of ranks `ranks` of `comm` (-1: not in the world).
std::vector<int> world_ranks_of(MPI_Comm comm, std::vector<int> ranks);

// World ranks of every rank of `comm`, in its rank order.
std::vector<int> world_ranks_of(MPI_Comm comm);

// "4-rank group, world ranks 0-3" or "3-rank group, world ranks 0,2,4", from world_ranks_of(comm).
std::string group_text(const std::vector<int>& world);

}  // namespace ringattn
