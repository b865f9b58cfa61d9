// The device mesh dp x fsdp x sp x tp over the MPI world.
//
// Rank order (documented contract): tp varies fastest, then sp, then fsdp, then dp:
//   world_rank = ((dp_i * fsdp + fsdp_i) * sp + sp_i) * tp + tp_i
// so the ranks of one sequence-parallel ring are adjacent (on one node when they fit).
#pragma once

#include <mpi.h>

#include <array>
#include <memory>
#include <string>

#include "comm/communicator.h"

namespace ringattn {

enum class Axis { DP = 0, FSDP = 1, SP = 2, TP = 3 };
std::string_view axis_name(Axis a);  // "dp", "fsdp", "sp", "tp"

// Sizes as configured; at most one may be -1 (inferred from the world size).
struct MeshShape {
  int dp = 1, fsdp = 1, sp = 1, tp = 1;
  int& operator[](Axis a);
  int operator[](Axis a) const;
};

// Resolves -1 and validates against `world_size`; raises an Error that names both the mesh and
// the world size when they do not match.
MeshShape resolve_mesh(MeshShape requested, int world_size);

enum class Transport { MPI, NCCL };

class Mesh {
 public:
  // Collective over `world`: builds a communicator per axis and one for the fsdp x sp group.
  Mesh(MeshShape requested, MPI_Comm world = MPI_COMM_WORLD, Transport transport = Transport::MPI);
  ~Mesh();

  const MeshShape& shape() const { return shape_; }
  int size(Axis a) const { return shape_[a]; }
  int coord(Axis a) const { return coord_[int(a)]; }  // this rank's index along an axis
  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }

  Communicator& world();
  Communicator& axis(Axis a);
  Communicator& fsdp_sp();  // the group FSDP shards parameters over
  std::string describe() const;  // "dp=1 fsdp=2 sp=2 tp=1 (4 ranks); this rank: dp 0 fsdp 1 sp 0 tp 0"

 private:
  MeshShape shape_;
  std::array<int, 4> coord_{};
  int world_rank_ = 0, world_size_ = 1;
  std::unique_ptr<Communicator> world_comm_, fsdp_sp_comm_;
  std::array<std::unique_ptr<Communicator>, 4> axis_comm_;
  std::array<MPI_Comm, 6> raw_{};  // communicators this mesh created and frees
};

// An MPI communicator over host memory. Takes ownership of nothing; `comm` must outlive it.
std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm);
#ifdef RINGATTN_WITH_CUDA
// An NCCL communicator over the ranks of `comm` (unique id broadcast over MPI), on device memory.
std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm comm);
#endif

}  // namespace ringattn
