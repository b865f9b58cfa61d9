// The simulated NCCL over MPI (RINGATTN_CUDA=SIM; comm/nccl_sim/include/nccl.h says what it is).
//
// A communicator is an MPI communicator of its members, in NCCL rank order. ncclCommInitRank
// builds it without involving other ranks: the unique id names the world rank that made it, every
// member tells that rank its NCCL rank, the maker sends back the members' world ranks, and the
// members create the communicator over exactly that group (MPI_Comm_create_group). The maker of an
// id must be a member of its group, as it is in ringattn (rank 0 of the group makes it).
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/cuda_sim/sim_memory.h"
#include "core/cuda_sim/sim_streams.h"
#include "core/dtype.h"

struct ncclComm {
  MPI_Comm mpi = MPI_COMM_NULL;
  int rank = 0, size = 1;
};

namespace {

constexpr char kMagic[] = "ringattn simulated NCCL";

struct IdContents {
  char magic[sizeof(kMagic)];
  int maker;        // world rank that made the id
  unsigned serial;  // ids made by that rank so far
};
static_assert(sizeof(IdContents) <= sizeof(ncclUniqueId));

thread_local std::string last_error;

ncclResult_t fail(ncclResult_t r, const std::string& why) {
  last_error = why;
  std::fprintf(stderr, "[nccl sim] %s\n", why.c_str());
  return r;
}

size_t type_bytes(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
      return 8;
  }
  return 0;
}

// Two tags per id on MPI_COMM_WORLD for the set-up messages (members to maker, maker to members),
// high in the tag range, away from anything else sent on the world communicator.
int setup_tag(unsigned serial) {
  int* ub = nullptr;
  int flag = 0;
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
  const int top = flag && ub ? *ub : 32767;
  return top / 2 + 2 * int(serial % 4096u);
}

// ---- operations ---------------------------------------------------------------------------------

enum class Kind { AllReduce, AllGather, ReduceScatter, Broadcast, Send, Recv };

struct Op {
  Kind kind;
  const void* send;
  void* recv;
  size_t count;  // elements: per rank for AllGather and ReduceScatter, as NCCL counts them
  ncclDataType_t type;
  ncclRedOp_t red;
  int peer;  // Send, Recv: the peer; Broadcast: the root
  ncclComm_t comm;
  cudaStream_t stream;
};

thread_local int group_depth = 0;
thread_local std::vector<Op> group_ops;

using Bytes = std::shared_ptr<std::vector<char>>;

Bytes copy_of(const void* p, size_t bytes) {
  const auto* c = static_cast<const char*>(p);
  return std::make_shared<std::vector<char>>(c, c + bytes);
}

// acc = acc op v, elementwise over n elements of type T.
template <typename T>
void combine(T* acc, const T* v, size_t n, ncclRedOp_t op) {
  for (size_t i = 0; i < n; ++i) {
    if (op == ncclSum)
      acc[i] = T(acc[i] + v[i]);
    else if (op == ncclMax)
      acc[i] = std::max(acc[i], v[i]);
    else
      acc[i] = std::min(acc[i], v[i]);
  }
}

// 16-bit floats: each step in float32, rounded back (`to`, `from`: the format's conversions).
template <typename To, typename From>
void combine_16(uint16_t* acc, const uint16_t* v, size_t n, ncclRedOp_t op, To to, From from) {
  for (size_t i = 0; i < n; ++i) {
    const float a = from(acc[i]), b = from(v[i]);
    const float r = op == ncclSum ? a + b : op == ncclMax ? std::max(a, b) : std::min(a, b);
    acc[i] = to(r);
  }
}

void combine_any(void* acc, const void* v, size_t n, ncclDataType_t t, ncclRedOp_t op) {
  switch (t) {
    case ncclInt8:
      return combine(static_cast<int8_t*>(acc), static_cast<const int8_t*>(v), n, op);
    case ncclUint8:
      return combine(static_cast<uint8_t*>(acc), static_cast<const uint8_t*>(v), n, op);
    case ncclInt32:
      return combine(static_cast<int32_t*>(acc), static_cast<const int32_t*>(v), n, op);
    case ncclUint32:
      return combine(static_cast<uint32_t*>(acc), static_cast<const uint32_t*>(v), n, op);
    case ncclInt64:
      return combine(static_cast<int64_t*>(acc), static_cast<const int64_t*>(v), n, op);
    case ncclUint64:
      return combine(static_cast<uint64_t*>(acc), static_cast<const uint64_t*>(v), n, op);
    case ncclFloat32:
      return combine(static_cast<float*>(acc), static_cast<const float*>(v), n, op);
    case ncclFloat64:
      return combine(static_cast<double*>(acc), static_cast<const double*>(v), n, op);
    case ncclBfloat16:
      return combine_16(static_cast<uint16_t*>(acc), static_cast<const uint16_t*>(v), n, op,
                        ringattn::f32_to_bf16, ringattn::bf16_to_f32);
    case ncclFloat16:
      return combine_16(static_cast<uint16_t*>(acc), static_cast<const uint16_t*>(v), n, op,
                        ringattn::f32_to_f16, ringattn::f16_to_f32);
  }
}

// The memory an operation reads and writes (a part with 0 bytes: none); needs a communicator.
struct Memory {
  ringattn::sim::Range send, recv;
};
Memory memory_of(const Op& op) {
  const size_t bytes = op.count * type_bytes(op.type), all = bytes * size_t(op.comm->size);
  switch (op.kind) {
    case Kind::AllReduce:
      return {{op.send, bytes}, {op.recv, bytes}};
    case Kind::AllGather:
      return {{op.send, bytes}, {op.recv, all}};
    case Kind::ReduceScatter:
      return {{op.send, all}, {op.recv, bytes}};
    case Kind::Broadcast:
      return {{op.send, op.comm->rank == op.peer ? bytes : 0}, {op.recv, bytes}};
    case Kind::Send:
      return {{op.send, bytes}, {nullptr, 0}};
    case Kind::Recv:
      return {{nullptr, 0}, {op.recv, bytes}};
  }
  return {};
}

// What NCCL refuses at the call.
ncclResult_t check(const Op& op) {
  if (!op.comm) return fail(ncclInvalidArgument, "a null communicator");
  if (op.kind == Kind::AllReduce || op.kind == Kind::ReduceScatter) {
    if (op.red != ncclSum && op.red != ncclMax && op.red != ncclMin)
      return fail(ncclInvalidArgument, "only sum, max and min reductions are simulated");
  }
  if (type_bytes(op.type) == 0) return fail(ncclInvalidArgument, "unknown data type");
  const int n = op.comm->size;
  if ((op.kind == Kind::Send || op.kind == Kind::Recv || op.kind == Kind::Broadcast) &&
      (op.peer < 0 || op.peer >= n))
    return fail(ncclInvalidArgument, "peer or root " + std::to_string(op.peer) + " outside a " +
                                         std::to_string(n) + "-rank communicator");
  const size_t bytes = op.count * type_bytes(op.type);
  const size_t all = bytes * size_t(n);
  if (all > size_t(INT32_MAX))
    return fail(ncclInvalidArgument, "the simulation moves at most 2 GiB per call");
  if (bytes == 0) return ncclSuccess;
  const Memory m = memory_of(op);
  if (m.send.bytes && !ringattn::sim::device_memory(m.send.p, m.send.bytes))
    return fail(ncclInvalidArgument, "the send buffer is not inside one device allocation");
  if (m.recv.bytes && !ringattn::sim::device_memory(m.recv.p, m.recv.bytes))
    return fail(ncclInvalidArgument, "the receive buffer is not inside one device allocation");
  return ncclSuccess;
}

const char* name_of(Kind k) {
  switch (k) {
    case Kind::AllReduce:
      return "ncclAllReduce";
    case Kind::AllGather:
      return "ncclAllGather";
    case Kind::ReduceScatter:
      return "ncclReduceScatter";
    case Kind::Broadcast:
      return "ncclBroadcast";
    case Kind::Send:
      return "ncclSend";
    case Kind::Recv:
      return "ncclRecv";
  }
  return "an NCCL operation";
}

// The part of the output that may hold anything but its old contents while the operation runs:
// all of it, but for the slice an in-place all-gather or a broadcast's root keeps (NCCL copies
// the input there onto itself).
struct Unsettled {
  ringattn::sim::Range before, after;  // around the kept slice (the whole output in `before`)
};
Unsettled unsettled(const Op& op, const ringattn::sim::Range& recv) {
  const auto* r = static_cast<const char*>(recv.p);
  const auto* s = static_cast<const char*>(op.send);
  const size_t bytes = op.count * type_bytes(op.type);
  const bool keeps = (op.kind == Kind::AllGather && s == r + bytes * size_t(op.comm->rank)) ||
                     (op.kind == Kind::Broadcast && op.comm->rank == op.peer && s == r);
  if (!keeps) return {recv, {nullptr, 0}};
  const size_t at = size_t(s - r);
  return {{r, at}, {s + bytes, recv.bytes - at - bytes}};
}

// The operation's result lands in its output as late as CUDA allows: just before the first work
// ordered after it runs (or a later operation ordered after it reads or writes that memory), or
// when the simulation stops watching it. Until then, work on other streams must leave its input
// and output alone (the data moved when it was called, but on a GPU it moves while the stream
// runs it), and the output holds neither its old contents nor the result: it is poisoned at the
// call (all ones, NaN in every float format, as fresh device memory is). So a reader not ordered
// after the operation (one that did not wait for it, or a reader of the old contents that the
// operation did not wait for) reads NaN, in whatever order the simulation runs the streams, as
// long as no work ordered after the operation ran first; on a GPU it would read something between
// the two (core/cuda_sim/sim_streams.h, enqueue_watched).
void complete(const Op& op, Bytes data) {
  const Memory m = memory_of(op);
  ringattn::sim::WatchedOperation w;
  w.item = name_of(op.kind);
  w.name = std::string(name_of(op.kind)) + " (its input or output)";
  w.memory = {m.send, m.recv};
  if (data) {
    void* dst = op.recv;
    w.output = m.recv;  // data->size() bytes
    w.at_call = [u = unsettled(op, w.output)] {
      for (const ringattn::sim::Range& r : {u.before, u.after})
        if (r.bytes) std::memset(const_cast<void*>(r.p), 0xff, r.bytes);
    };
    w.result = [dst, data] {
      if (!ringattn::sim::device_memory(dst, data->size()))
        throw std::runtime_error("delivered into device memory freed before it arrived");
      std::memcpy(dst, data->data(), data->size());
    };
  }
  ringattn::sim::enqueue_watched(op.stream, std::move(w));
}

bool mpi_ok(int rc) {
  return rc == MPI_SUCCESS;
}

// A collective, run now: inputs read, data moved, the result's delivery queued.
ncclResult_t collective(const Op& op) {
  const ncclComm& c = *op.comm;
  const size_t elem = type_bytes(op.type), bytes = op.count * elem;
  const int n = c.size;
  switch (op.kind) {
    case Kind::AllGather: {
      Bytes in = copy_of(op.send, bytes);
      auto out = std::make_shared<std::vector<char>>(bytes * size_t(n));
      if (!mpi_ok(MPI_Allgather(in->data(), int(bytes), MPI_BYTE, out->data(), int(bytes), MPI_BYTE,
                                c.mpi)))
        return fail(ncclSystemError, "MPI_Allgather failed");
      complete(op, out);
      return ncclSuccess;
    }
    case Kind::AllReduce:
    case Kind::ReduceScatter: {
      // Every rank's whole input, then the reduction of this rank's part in rank order.
      const size_t in_bytes = op.kind == Kind::AllReduce ? bytes : bytes * size_t(n);
      Bytes in = copy_of(op.send, in_bytes);
      std::vector<char> all(in_bytes * size_t(n));
      if (!mpi_ok(MPI_Allgather(in->data(), int(in_bytes), MPI_BYTE, all.data(), int(in_bytes),
                                MPI_BYTE, c.mpi)))
        return fail(ncclSystemError, "MPI_Allgather failed");
      const size_t at = op.kind == Kind::AllReduce ? 0 : bytes * size_t(c.rank);
      auto out = std::make_shared<std::vector<char>>(all.begin() + long(at),
                                                     all.begin() + long(at + bytes));
      for (int q = 1; q < n; ++q)
        combine_any(out->data(), all.data() + in_bytes * size_t(q) + at, op.count, op.type, op.red);
      complete(op, out);
      return ncclSuccess;
    }
    case Kind::Broadcast: {
      Bytes buf =
          c.rank == op.peer ? copy_of(op.send, bytes) : std::make_shared<std::vector<char>>(bytes);
      if (!mpi_ok(MPI_Bcast(buf->data(), int(bytes), MPI_BYTE, op.peer, c.mpi)))
        return fail(ncclSystemError, "MPI_Bcast failed");
      complete(op, buf);
      return ncclSuccess;
    }
    case Kind::Send:
    case Kind::Recv:
      break;
  }
  return fail(ncclInternalError, "not a collective");
}

// A group's operations (or one outside a group): every stream run up to its operation, the sends
// and receives posted, the collectives run in order, then the receives completed and delivered.
ncclResult_t run_ops(const std::vector<Op>& ops) {
  for (const Op& op : ops) {
    ringattn::sim::run_stream(op.stream, /*host_waits=*/false);
    // Earlier operations' results this one reads (or overwrites) are there when it runs.
    const Memory m = memory_of(op);
    ringattn::sim::land_into(op.stream, {m.send, m.recv});
  }
  if (ringattn::sim::device_fault() != cudaSuccess)
    return fail(ncclUnhandledCudaError, "the (simulated) device has faulted");
  std::vector<MPI_Request> requests;
  std::vector<std::pair<const Op*, Bytes>> received;
  std::vector<Bytes> sent;
  for (const Op& op : ops) {
    const size_t bytes = op.count * type_bytes(op.type);
    if (bytes == 0 || (op.kind != Kind::Send && op.kind != Kind::Recv)) continue;
    MPI_Request r = MPI_REQUEST_NULL;
    if (op.kind == Kind::Send) {
      sent.push_back(copy_of(op.send, bytes));
      if (!mpi_ok(
              MPI_Isend(sent.back()->data(), int(bytes), MPI_BYTE, op.peer, 0, op.comm->mpi, &r)))
        return fail(ncclSystemError, "MPI_Isend failed");
    } else {
      received.emplace_back(&op, std::make_shared<std::vector<char>>(bytes));
      if (!mpi_ok(MPI_Irecv(received.back().second->data(), int(bytes), MPI_BYTE, op.peer, 0,
                            op.comm->mpi, &r)))
        return fail(ncclSystemError, "MPI_Irecv failed");
    }
    requests.push_back(r);
  }
  for (const Op& op : ops)
    if (op.kind != Kind::Send && op.kind != Kind::Recv && op.count > 0)
      if (const ncclResult_t st = collective(op)) return st;
  if (!requests.empty() &&
      !mpi_ok(MPI_Waitall(int(requests.size()), requests.data(), MPI_STATUSES_IGNORE)))
    return fail(ncclSystemError, "MPI_Waitall failed");
  for (const Op& op : ops)
    if (op.kind == Kind::Send && op.count > 0) complete(op, nullptr);
  for (const auto& [op, data] : received) complete(*op, data);
  return ncclSuccess;
}

ncclResult_t submit(const Op& op) {
  if (const ncclResult_t st = check(op)) return st;
  if (group_depth > 0) {
    group_ops.push_back(op);
    return ncclSuccess;
  }
  return run_ops({op});
}

}  // namespace

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error";
    case ncclUnhandledCudaError:
      return "unhandled cuda error";
    case ncclSystemError:
      return "unhandled system error";
    case ncclInternalError:
      return "internal error";
    case ncclInvalidArgument:
      return "invalid argument";
    case ncclInvalidUsage:
      return "invalid usage";
    case ncclRemoteError:
      return "remote process exited or there was a network error";
    case ncclInProgress:
      return "NCCL operation in progress";
  }
  return "unknown result code";
}

const char* ncclGetLastError(ncclComm_t) {
  return last_error.c_str();
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (!id) return fail(ncclInvalidArgument, "ncclGetUniqueId without a result pointer");
  static std::atomic<unsigned> serial{0};
  IdContents c{};
  std::memcpy(c.magic, kMagic, sizeof(kMagic));
  MPI_Comm_rank(MPI_COMM_WORLD, &c.maker);
  c.serial = serial++;
  std::memset(id, 0, sizeof(*id));
  std::memcpy(id->internal, &c, sizeof(c));
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  if (!comm) return fail(ncclInvalidArgument, "ncclCommInitRank without a result pointer");
  *comm = nullptr;
  if (nranks < 1 || rank < 0 || rank >= nranks)
    return fail(ncclInvalidArgument,
                "rank " + std::to_string(rank) + " of " + std::to_string(nranks) + " ranks");
  IdContents c;
  std::memcpy(&c, id.internal, sizeof(c));
  if (std::memcmp(c.magic, kMagic, sizeof(kMagic)) != 0)
    return fail(ncclInvalidArgument, "not a unique id from ncclGetUniqueId");
  int world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world);
  const int up = setup_tag(c.serial), down = up + 1;
  std::vector<int> members(size_t(nranks), -1);
  members[size_t(rank)] = world;
  if (world == c.maker) {
    for (int i = 1; i < nranks; ++i) {
      int msg[2];
      if (!mpi_ok(
              MPI_Recv(msg, 2, MPI_INT, MPI_ANY_SOURCE, up, MPI_COMM_WORLD, MPI_STATUS_IGNORE)) ||
          msg[0] < 0 || msg[0] >= nranks || members[size_t(msg[0])] != -1)
        return fail(ncclInvalidUsage, "communicator set-up: a bad or repeated rank");
      members[size_t(msg[0])] = msg[1];
    }
    for (int m : members)
      if (m != world && !mpi_ok(MPI_Send(members.data(), nranks, MPI_INT, m, down, MPI_COMM_WORLD)))
        return fail(ncclSystemError, "communicator set-up: MPI_Send failed");
  } else {
    int msg[2] = {rank, world};
    if (!mpi_ok(MPI_Send(msg, 2, MPI_INT, c.maker, up, MPI_COMM_WORLD)) ||
        !mpi_ok(MPI_Recv(members.data(), nranks, MPI_INT, c.maker, down, MPI_COMM_WORLD,
                         MPI_STATUS_IGNORE)))
      return fail(ncclSystemError, "communicator set-up: MPI failed");
  }
  MPI_Group world_group = MPI_GROUP_NULL, group = MPI_GROUP_NULL;
  auto made = std::make_unique<ncclComm>();
  const bool ok = mpi_ok(MPI_Comm_group(MPI_COMM_WORLD, &world_group)) &&
                  mpi_ok(MPI_Group_incl(world_group, nranks, members.data(), &group)) &&
                  mpi_ok(MPI_Comm_create_group(MPI_COMM_WORLD, group, up, &made->mpi));
  if (group != MPI_GROUP_NULL) MPI_Group_free(&group);
  if (world_group != MPI_GROUP_NULL) MPI_Group_free(&world_group);
  if (!ok) return fail(ncclSystemError, "communicator set-up: MPI_Comm_create_group failed");
  made->rank = rank;
  made->size = nranks;
  *comm = made.release();
  return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  return comm ? ncclSuccess : fail(ncclInvalidArgument, "finalize of a null communicator");
}
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm) return ncclSuccess;
  if (comm->mpi != MPI_COMM_NULL) MPI_Comm_free(&comm->mpi);
  delete comm;
  return ncclSuccess;
}
// Without waiting for the other ranks: the MPI communicator is left behind (freeing it is
// collective).
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error) {
  if (!comm || !async_error) return fail(ncclInvalidArgument, "a null argument");
  *async_error = ncclSuccess;
  return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
  ++group_depth;
  return ncclSuccess;
}
ncclResult_t ncclGroupEnd() {
  if (group_depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  if (--group_depth > 0) return ncclSuccess;
  std::vector<Op> ops;
  ops.swap(group_ops);
  return run_ops(ops);
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::AllReduce, send, recv, count, type, op, 0, comm, stream});
}
ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::AllGather, send, recv, count, type, ncclSum, 0, comm, stream});
}
ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::ReduceScatter, send, recv, count, type, op, 0, comm, stream});
}
ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type,
                           int root, ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::Broadcast, send, recv, count, type, ncclSum, root, comm, stream});
}
ncclResult_t ncclSend(const void* send, size_t count, ncclDataType_t type, int peer,
                      ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::Send, send, nullptr, count, type, ncclSum, peer, comm, stream});
}
ncclResult_t ncclRecv(void* recv, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return submit(Op{Kind::Recv, nullptr, recv, count, type, ncclSum, peer, comm, stream});
}
