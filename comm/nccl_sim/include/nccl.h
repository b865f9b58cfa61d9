// The simulated NCCL (RINGATTN_CUDA=SIM; comm/nccl_sim/nccl.cpp): the part of <nccl.h> that
// ringattn uses, over MPI between the ranks' processes, on the simulated GPU's streams
// (core/cuda_sim/sim_streams.h). It lets the NCCL communicator's own code (comm/nccl: its
// communication streams, events, stream-ordered collectives and the ring) run on several ranks
// without GPUs, where the simulated streams defer every piece of work to the latest moment CUDA
// allows. Several ranks share the one simulated GPU (real NCCL refuses that).
//
// What an operation does: when it is called (or at ncclGroupEnd inside a group), its stream is run
// up to it, so its inputs are what the GPU would read when the stream reaches it; the data moves
// between the ranks over MPI at once, blocking the calling thread until the peers have called
// theirs too (NCCL's rule that every rank issues the same operations in the same order makes this
// safe). The output is poisoned (NaN) at the call, and the result lands in it as late as CUDA
// allows: just before the first work ordered after the operation runs, or a later operation
// ordered after it touches that memory. So a reader that does not wait for the operation, or one
// of the output's old contents that the operation did not wait for, reads NaN, unless other work
// ordered after the operation has run before it. Work on other streams not ordered after the
// operation that changes or frees its input or output is a device fault
// (core/cuda_sim/sim_streams.h, enqueue_watched). Reductions run in rank order
// (deterministic, not NCCL's ring order).
//
// Not simulated: ncclAvg and ncclProd, and anything ringattn does not call. The watch's limits: at
// most 256 operations in flight are watched (the oldest lands at once beyond that), and buffers
// over 1 MiB are hashed in samples.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#define RINGATTN_NCCL_SIM 1

enum ncclResult_t {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
};

enum ncclDataType_t {
  ncclInt8 = 0,
  ncclChar = 0,
  ncclUint8 = 1,
  ncclInt32 = 2,
  ncclInt = 2,
  ncclUint32 = 3,
  ncclInt64 = 4,
  ncclUint64 = 5,
  ncclFloat16 = 6,
  ncclHalf = 6,
  ncclFloat32 = 7,
  ncclFloat = 7,
  ncclFloat64 = 8,
  ncclDouble = 8,
  ncclBfloat16 = 9,
};

enum ncclRedOp_t { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 };

struct ncclUniqueId {
  char internal[128];
};

struct ncclComm;
using ncclComm_t = ncclComm*;

const char* ncclGetErrorString(ncclResult_t result);
const char* ncclGetLastError(ncclComm_t comm);

ncclResult_t ncclGetUniqueId(ncclUniqueId* id);
ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank);
ncclResult_t ncclCommFinalize(ncclComm_t comm);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommAbort(ncclComm_t comm);
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error);

ncclResult_t ncclGroupStart();
ncclResult_t ncclGroupEnd();

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type,
                           int root, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclSend(const void* send, size_t count, ncclDataType_t type, int peer,
                      ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclRecv(void* recv, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream);
