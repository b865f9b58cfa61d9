#include "comm/mesh_shape.h"

#include <fmt/format.h>

#include <cstdint>
#include <limits>

#include "core/error.h"

namespace ringattn {

std::string shape_text(const MeshShape& s) {
  return fmt::format("dp={} fsdp={} sp={} tp={}", s.dp, s.fsdp, s.sp, s.tp);
}

std::string_view axis_name(Axis a) {
  switch (a) {
    case Axis::DP:
      return "dp";
    case Axis::FSDP:
      return "fsdp";
    case Axis::SP:
      return "sp";
    case Axis::TP:
      return "tp";
  }
  return "?";
}

int& MeshShape::operator[](Axis a) {
  switch (a) {
    case Axis::DP:
      return dp;
    case Axis::FSDP:
      return fsdp;
    case Axis::SP:
      return sp;
    case Axis::TP:
      return tp;
  }
  RA_FAIL("unknown mesh axis {}", int(a));
}

int MeshShape::operator[](Axis a) const {
  return const_cast<MeshShape&>(*this)[a];
}

MeshShape resolve_mesh(MeshShape requested, int world_size) {
  RA_CHECK(world_size >= 1, "world size must be >= 1, got {}", world_size);
  const std::string text = shape_text(requested);
  int inferred = -1;  // index into kMeshAxes of the -1 axis, if any
  // 64-bit and saturating, so absurd sizes are reported as a mismatch instead of overflowing.
  int64_t known = 1;
  for (size_t i = 0; i < kMeshAxes.size(); ++i) {
    const int v = requested[kMeshAxes[i]];
    if (v == -1) {
      RA_CHECK(inferred < 0,
               "mesh {}: at most one of mesh.dp, mesh.fsdp, mesh.sp, mesh.tp may be -1 "
               "(inferred from the world size)",
               text);
      inferred = int(i);
      continue;
    }
    RA_CHECK(v >= 1,
             "mesh {}: mesh.{} must be >= 1 (or -1 to infer it from the world size), got {}", text,
             axis_name(kMeshAxes[i]), v);
    known = known > std::numeric_limits<int64_t>::max() / v ? std::numeric_limits<int64_t>::max()
                                                            : known * v;
  }
  if (inferred >= 0) {
    const Axis a = kMeshAxes[size_t(inferred)];
    RA_CHECK(known <= world_size && world_size % known == 0,
             "mesh {}: mesh.{} = -1 cannot be inferred: the other axes multiply to {}, which does "
             "not divide the job's {} ranks",
             text, axis_name(a), known, world_size);
    requested[a] = int(world_size / known);
    return requested;
  }
  RA_CHECK(known == world_size,
           "mesh {} needs {} ranks but the job has {} (mesh.* in the config must multiply to the "
           "MPI world size)",
           text, known, world_size);
  return requested;
}

}  // namespace ringattn
