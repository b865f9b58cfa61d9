#include "comm/agreed_error.h"

#include <cstdint>
#include <vector>

#include "core/error.h"

namespace ringattn {

void raise_if_any_rank_failed(Communicator& comm, const std::string& error,
                              const std::function<std::string(int failed_rank)>& others) {
  const int n = comm.size();
  std::vector<int32_t> failed(size_t(n), 0);
  const int32_t mine = error.empty() ? 0 : 1;
  comm.all_gather(&mine, failed.data(), 1, DType::I32);
  if (!error.empty()) RA_FAIL("{}", error);
  for (int r = 0; r < n; ++r)
    if (failed[size_t(r)]) RA_FAIL("{}", others(r));
}

}  // namespace ringattn
