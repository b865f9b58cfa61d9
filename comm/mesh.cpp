#include "comm/mesh.h"

#include <fmt/format.h>

#include "comm/mpi_check.h"
#include "core/error.h"
#include "core/log.h"

namespace ringattn {

Mesh::Mesh(MeshShape requested, MPI_Comm world, Transport transport) {
  raw_.fill(MPI_COMM_NULL);
  MPI_CHECK(MPI_Comm_rank(world, &world_rank_));
  MPI_CHECK(MPI_Comm_size(world, &world_size_));
  shape_ = resolve_mesh(requested, world_size_);
  transport_ = transport;
#ifndef RINGATTN_WITH_NCCL
  RA_CHECK(transport != Transport::NCCL,
           "the NCCL transport was requested but this build has no CUDA/NCCL (configure with "
           "RINGATTN_CUDA=ON)");
#endif

  // Coordinates from the documented rank order: tp fastest, then sp, fsdp, dp.
  int r = world_rank_;
  for (int i = 3; i >= 0; --i) {
    const int n = shape_[kMeshAxes[size_t(i)]];
    coord_[size_t(i)] = r % n;
    r /= n;
  }

  try {
    // A private duplicate of the world so traffic on the mesh never matches the caller's.
    MPI_CHECK(MPI_Comm_dup(world, &raw_[0]));
    for (size_t i = 0; i < kMeshAxes.size(); ++i) {
      // Ranks that agree on every other coordinate form this axis' group; the color is the
      // mixed-radix index of those other coordinates, the key this rank's place on the axis.
      int color = 0;
      for (size_t j = 0; j < kMeshAxes.size(); ++j) {
        if (j == i) continue;
        color = color * shape_[kMeshAxes[j]] + coord_[j];
      }
      MPI_CHECK(MPI_Comm_split(raw_[0], color, coord_[i], &raw_[1 + i]));
    }
    // fsdp x sp: equal dp and tp, ordered by fsdp * sp_size + sp.
    const int color = coord_[0] * shape_.tp + coord_[3];
    const int key = coord_[1] * shape_.sp + coord_[2];
    MPI_CHECK(MPI_Comm_split(raw_[0], color, key, &raw_[5]));
    for (MPI_Comm c : raw_) MPI_CHECK(MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN));

    world_comm_ = make_mpi_communicator(raw_[0]);
    for (size_t i = 0; i < kMeshAxes.size(); ++i)
      axis_comm_[i] = make_mpi_communicator(raw_[1 + i]);
    fsdp_sp_comm_ = make_mpi_communicator(raw_[5]);
#ifdef RINGATTN_WITH_NCCL
    if (transport == Transport::NCCL) {
      for (size_t i = 0; i < kMeshAxes.size(); ++i)
        device_axis_comm_[i] = make_nccl_communicator(raw_[1 + i]);
      device_fsdp_sp_comm_ = make_nccl_communicator(raw_[5]);
    }
#endif
  } catch (...) {
    release();  // the destructor does not run for a constructor that throws
    throw;
  }
  log::debug("mesh: {}", describe());
}

void Mesh::set_device_transport(
    const std::function<std::unique_ptr<Communicator>(Communicator& host)>& wrap) {
  RA_CHECK(transport_ == Transport::MPI,
           "a device transport can only replace host staging (transport = mpi), not NCCL");
  for (size_t i = 0; i < kMeshAxes.size(); ++i) device_axis_comm_[i] = wrap(*axis_comm_[i]);
  device_fsdp_sp_comm_ = wrap(*fsdp_sp_comm_);
}

Mesh::~Mesh() {
  release();
}

void Mesh::release() noexcept {
  // The wrappers first: an NCCL communicator or a ring may still reference the MPI ones.
  device_fsdp_sp_comm_.reset();
  for (auto& c : device_axis_comm_) c.reset();
  world_comm_.reset();
  fsdp_sp_comm_.reset();
  for (auto& c : axis_comm_) c.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  for (MPI_Comm& c : raw_) {
    if (c != MPI_COMM_NULL && !finalized) MPI_Comm_free(&c);
    c = MPI_COMM_NULL;
  }
}

Communicator& Mesh::world() {
  return *world_comm_;
}
Communicator& Mesh::axis(Axis a) {
  return *axis_comm_[size_t(a)];
}
Communicator& Mesh::fsdp_sp() {
  return *fsdp_sp_comm_;
}

std::string Mesh::describe() const {
  return fmt::format("{} ({} ranks); this rank: dp {} fsdp {} sp {} tp {}", shape_text(shape_),
                     world_size_, coord_[0], coord_[1], coord_[2], coord_[3]);
}

}  // namespace ringattn
