#include "comm/ordered_sum.h"

#include <bit>
#include <cstdint>
#include <vector>

namespace ringattn {

double ordered_sum(Communicator& comm, double x) {
  std::vector<int64_t> all(size_t(comm.size()));
  const int64_t mine = std::bit_cast<int64_t>(x);
  comm.all_gather(&mine, all.data(), 1, DType::I64);
  double s = 0;
  for (int64_t v : all) s += std::bit_cast<double>(v);
  return s;
}

}  // namespace ringattn
