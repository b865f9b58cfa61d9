// The mesh's shape: the sizes of its axes dp x fsdp x sp x tp as configured, and their
// resolution against the world size. Pure values, no MPI: the config's validation (and its fuzz
// target) use them without a job; comm/mesh.h builds the communicators.
#pragma once

#include <array>
#include <string>
#include <string_view>

namespace ringattn {

enum class Axis { DP = 0, FSDP = 1, SP = 2, TP = 3 };
inline constexpr std::array<Axis, 4> kMeshAxes = {Axis::DP, Axis::FSDP, Axis::SP, Axis::TP};
std::string_view axis_name(Axis a);  // "dp", "fsdp", "sp", "tp"

// Sizes as configured; at most one may be -1 (inferred from the world size).
struct MeshShape {
  int dp = 1, fsdp = 1, sp = 1, tp = 1;
  int& operator[](Axis a);
  int operator[](Axis a) const;
};

// Resolves -1 and validates against `world_size`; raises an Error that names both the mesh and
// the world size when they do not match. A pure function (no MPI).
MeshShape resolve_mesh(MeshShape requested, int world_size);
std::string shape_text(const MeshShape& s);  // "dp=1 fsdp=2 sp=2 tp=1"

// What carries device buffers between the mesh's ranks (Mesh): MPI (host-staged) or NCCL.
enum class Transport { MPI, NCCL };

}  // namespace ringattn
