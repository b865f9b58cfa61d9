#include "comm/world_ranks.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace ringattn {

std::vector<int> world_ranks_of(MPI_Comm comm, std::vector<int> ranks) {
  std::vector<int> out(ranks.size(), MPI_UNDEFINED);
  MPI_Group g = MPI_GROUP_NULL, w = MPI_GROUP_NULL;
  if (MPI_Comm_group(comm, &g) == MPI_SUCCESS && MPI_Comm_group(MPI_COMM_WORLD, &w) == MPI_SUCCESS)
    MPI_Group_translate_ranks(g, int(ranks.size()), ranks.data(), w, out.data());
  if (g != MPI_GROUP_NULL) MPI_Group_free(&g);
  if (w != MPI_GROUP_NULL) MPI_Group_free(&w);
  for (int& r : out) r = r == MPI_UNDEFINED ? -1 : r;
  return out;
}

std::vector<int> world_ranks_of(MPI_Comm comm) {
  int size = 0;
  MPI_Comm_size(comm, &size);
  std::vector<int> all(static_cast<size_t>(size));
  for (int i = 0; i < size; ++i) all[size_t(i)] = i;
  return world_ranks_of(comm, all);
}

std::string group_text(const std::vector<int>& r) {
  const size_t size = r.size();
  bool contiguous = true;
  for (size_t i = 1; i < size; ++i) contiguous = contiguous && r[i] == r[0] + int(i);
  if (contiguous && size > 1)
    return fmt::format("{}-rank group, world ranks {}-{}", size, r[0], r.back());
  return fmt::format("{}-rank group, world ranks {}", size, fmt::join(r, ","));
}

}  // namespace ringattn
