#include "comm/communicator.h"

#include <exception>

#include "core/backend.h"
#include "core/log.h"

namespace ringattn {

std::string broadcast_text(Communicator& comm, std::string text, int root) {
  int64_t n = comm.rank() == root ? int64_t(text.size()) : 0;
  comm.broadcast(&n, 1, DType::I64, root);
  text.resize(size_t(n));
  if (n > 0) comm.broadcast(text.data(), size_t(n), DType::U8, root);
  return text;
}

RingDrain::~RingDrain() {
  try {
    ring_.wait();
  } catch (const std::exception& e) {
    log::rank_error("a ring exchange failed while the scope that owns its buffers ended: {}",
                    e.what());
  }
}

std::unique_ptr<StreamPoint> Communicator::all_gather_ordered(const void* send, void* recv,
                                                              size_t count, DType dtype,
                                                              Backend& compute) {
  compute.synchronize();  // the input is complete; the blocking collective completes the output
  all_gather(send, recv, count, dtype);
  return nullptr;
}

std::unique_ptr<StreamPoint> Communicator::reduce_scatter_ordered(const void* send, void* recv,
                                                                  size_t count, DType dtype,
                                                                  ReduceOp op, Backend& compute) {
  compute.synchronize();
  reduce_scatter(send, recv, count, dtype, op);
  return nullptr;
}

}  // namespace ringattn
