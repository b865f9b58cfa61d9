// The device mesh dp x fsdp x sp x tp over the MPI world.
//
// Rank order (documented contract): tp varies fastest, then sp, then fsdp, then dp:
//   world_rank = ((dp_i * fsdp + fsdp_i) * sp + sp_i) * tp + tp_i
// so the ranks of one sequence-parallel ring are adjacent (on one node when they fit).
#pragma once

#include <mpi.h>

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "comm/communicator.h"
#include "comm/mesh_shape.h"

namespace ringattn {

class Mesh {
 public:
  // Collective over `world`: builds a communicator per axis and one for the fsdp x sp group.
  // Axis communicators rank their members by the coordinate on that axis; the fsdp x sp one by
  // fsdp * sp_size + sp. These are MPI communicators over host memory, always: the world's
  // bookkeeping (loss sums, agreement on errors) passes host values. Transport::NCCL adds NCCL
  // communicators over the same groups for device buffers (device_axis, device_fsdp_sp), and
  // raises an Error when NCCL is not compiled in or no GPU can be used (on every rank alike, so
  // the job does not hang).
  Mesh(MeshShape requested, MPI_Comm world = MPI_COMM_WORLD, Transport transport = Transport::MPI);
  ~Mesh();
  Mesh(const Mesh&) = delete;
  Mesh& operator=(const Mesh&) = delete;

  const MeshShape& shape() const { return shape_; }
  int size(Axis a) const { return shape_[a]; }
  int coord(Axis a) const { return coord_[int(a)]; }  // this rank's index along an axis
  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }

  Communicator& world();
  Communicator& axis(Axis a);
  Communicator& fsdp_sp();  // the group FSDP shards parameters over
  Transport transport() const { return transport_; }
  // The NCCL communicators of the same groups (Transport::NCCL); null with Transport::MPI, where
  // device buffers travel through host-staged wrappers of the MPI ones instead.
  Communicator* device_axis(Axis a) { return device_axis_comm_[size_t(a)].get(); }
  Communicator* device_fsdp_sp() { return device_fsdp_sp_comm_.get(); }
  // Device communicators over the same groups made by `wrap` from each host one, in place of
  // NCCL's: a transport supplied by the caller (the tests' emulated device has one with NCCL's
  // semantics, test/emulated_device.h). Transport::MPI only, before a model takes the
  // communicators. Not collective unless `wrap` is.
  void set_device_transport(
      const std::function<std::unique_ptr<Communicator>(Communicator& host)>& wrap);
  std::string describe()
      const;  // "dp=1 fsdp=2 sp=2 tp=1 (4 ranks); this rank: dp 0 fsdp 1 sp 0 tp 0"

 private:
  MeshShape shape_;
  std::array<int, 4> coord_{};
  int world_rank_ = 0, world_size_ = 1;
  std::unique_ptr<Communicator> world_comm_, fsdp_sp_comm_;
  std::array<std::unique_ptr<Communicator>, 4> axis_comm_;
  Transport transport_ = Transport::MPI;
  std::unique_ptr<Communicator> device_fsdp_sp_comm_;
  std::array<std::unique_ptr<Communicator>, 4> device_axis_comm_;
  std::array<MPI_Comm, 6> raw_{};  // communicators this mesh created and frees

  void release() noexcept;  // frees the wrappers, then raw_ (shared by the destructor and ctor)
};

struct MpiCommOptions {
  // MPI counts are ints, so no single MPI call moves more than this; larger buffers go in pieces.
  // Tests pass a small value to exercise that path.
  size_t max_chunk_bytes = size_t(1) << 30;
  // Drive ring exchanges from a progress thread (one per ring) when MPI granted
  // MPI_THREAD_MULTIPLE. Without it (or when false), a transfer moves only while the caller is
  // inside test() or wait().
  bool progress_thread = true;
};

// An MPI communicator over host memory. Takes ownership of nothing; `comm` must outlive it (rings
// made from it duplicate `comm` and do not need it afterwards).
std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm, MpiCommOptions options = {});
#ifdef RINGATTN_WITH_NCCL
// An NCCL communicator over the ranks of `comm` (unique id broadcast over MPI), on device memory.
std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm comm);
#endif

}  // namespace ringattn
