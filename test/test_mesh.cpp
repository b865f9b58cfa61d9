// The device mesh: resolve_mesh as a pure function, and Mesh on the real MPI world (every rank
// checks its coordinates, its axis communicators and which ranks an axis reduction really sums).
#include <mpi.h>
#include <catch2/catch.hpp>

#include <numeric>
#include <vector>

#include "comm/mesh.h"
#include "core/backend.h"
#include "core/error.h"

using namespace ringattn;

namespace {

MeshShape shape(int dp, int fsdp, int sp, int tp) {
  MeshShape s;
  s.dp = dp;
  s.fsdp = fsdp;
  s.sp = sp;
  s.tp = tp;
  return s;
}

int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

constexpr Axis kAxes[] = {Axis::DP, Axis::FSDP, Axis::SP, Axis::TP};

// The documented rank order: tp fastest, then sp, fsdp, dp.
int rank_of(const MeshShape& s, const std::array<int, 4>& c) {
  return ((c[0] * s.fsdp + c[1]) * s.sp + c[2]) * s.tp + c[3];
}

std::string error_of(MeshShape s, int world) {
  try {
    resolve_mesh(s, world);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("resolve_mesh accepts shapes that multiply to the world size", "[mesh]") {
  struct Case {
    MeshShape in;
    int world;
    MeshShape out;
  };
  const Case cases[] = {
      {shape(1, 1, 1, 1), 1, shape(1, 1, 1, 1)},   {shape(1, 1, 4, 1), 4, shape(1, 1, 4, 1)},
      {shape(2, 2, 2, 2), 16, shape(2, 2, 2, 2)},  {shape(1, 1, -1, 1), 8, shape(1, 1, 8, 1)},
      {shape(-1, 1, 1, 1), 1, shape(1, 1, 1, 1)},  {shape(2, -1, 2, 1), 12, shape(2, 3, 2, 1)},
      {shape(3, 1, 1, -1), 6, shape(3, 1, 1, 2)},  {shape(1, 2, 3, -1), 6, shape(1, 2, 3, 1)},
      {shape(-1, 2, 4, 8), 128, shape(2, 2, 4, 8)}};
  for (const Case& c : cases) {
    const MeshShape r = resolve_mesh(c.in, c.world);
    INFO("world " << c.world);
    CHECK(r.dp == c.out.dp);
    CHECK(r.fsdp == c.out.fsdp);
    CHECK(r.sp == c.out.sp);
    CHECK(r.tp == c.out.tp);
  }
}

TEST_CASE("resolve_mesh rejects bad shapes with clear messages", "[mesh]") {
  CHECK(error_of(shape(1, 1, 3, 1), 4) ==
        "mesh dp=1 fsdp=1 sp=3 tp=1 needs 3 ranks but the job has 4 (mesh.* in the config must "
        "multiply to the MPI world size)");
  CHECK_THAT(error_of(shape(2, 2, 2, 2), 8), Catch::Contains("needs 16 ranks but the job has 8"));
  CHECK_THAT(error_of(shape(-1, 1, -1, 1), 4), Catch::Contains("at most one"));
  CHECK_THAT(error_of(shape(1, 0, 1, 1), 1), Catch::Contains("mesh.fsdp must be >= 1"));
  CHECK_THAT(error_of(shape(1, 1, 1, -2), 1), Catch::Contains("mesh.tp must be >= 1"));
  const std::string inferred = error_of(shape(1, 1, -1, 3), 4);
  CHECK_THAT(inferred, Catch::Contains("mesh.sp = -1 cannot be inferred"));
  CHECK_THAT(inferred, Catch::Contains("multiply to 3") && Catch::Contains("4 ranks"));
  CHECK_THAT(error_of(shape(8, 1, -1, 1), 4), Catch::Contains("multiply to 8"));
  CHECK_THAT(error_of(shape(1, 1, 1, 1), 0), Catch::Contains("world size"));
  // Sizes whose product overflows 64 bits are a mismatch, not undefined behaviour.
  CHECK_THAT(error_of(shape(1 << 30, 1 << 30, 1 << 30, 1 << 30), 4), Catch::Contains("needs"));
  CHECK(axis_name(Axis::DP) == "dp");
  CHECK(axis_name(Axis::FSDP) == "fsdp");
  CHECK(axis_name(Axis::SP) == "sp");
  CHECK(axis_name(Axis::TP) == "tp");
  MeshShape s = shape(1, 2, 3, 4);
  s[Axis::SP] = 5;
  CHECK(s.sp == 5);
  CHECK(static_cast<const MeshShape&>(s)[Axis::TP] == 4);
}

TEST_CASE("Mesh builds the documented axis groups on the MPI world", "[mesh]") {
  const int w = world_size();
  std::vector<MeshShape> shapes = {shape(1, 1, -1, 1), shape(-1, 1, 1, 1), shape(1, -1, 1, 1),
                                   shape(1, 1, 1, -1)};
  if (w == 4) {
    for (MeshShape s : {shape(2, 1, 2, 1), shape(1, 2, 2, 1), shape(2, 1, 1, 2), shape(1, 2, 1, 2),
                        shape(1, 1, 2, 2), shape(2, 2, 1, 1)})
      shapes.push_back(s);
  }
  for (const MeshShape& requested : shapes) {
    Mesh mesh(requested);
    const MeshShape& s = mesh.shape();
    INFO(mesh.describe());
    REQUIRE(mesh.world_size() == w);
    CHECK(mesh.world().size() == w);
    CHECK(mesh.world().rank() == mesh.world_rank());
    CHECK(mesh.world().device() == Device::CPU);

    std::array<int, 4> me{};
    for (int i = 0; i < 4; ++i) me[size_t(i)] = mesh.coord(kAxes[i]);
    CHECK(rank_of(s, me) == mesh.world_rank());

    for (int i = 0; i < 4; ++i) {
      const Axis a = kAxes[i];
      Communicator& c = mesh.axis(a);
      CHECK(c.size() == mesh.size(a));
      CHECK(c.rank() == mesh.coord(a));
      // The group along `a`: every coordinate equal to mine except the one on `a`.
      std::vector<int> expected;
      for (int k = 0; k < s[a]; ++k) {
        std::array<int, 4> other = me;
        other[size_t(i)] = k;
        expected.push_back(rank_of(s, other));
      }
      // A reduction sums exactly those ranks; a gather returns them in axis order.
      int64_t sum = mesh.world_rank() + 1;
      c.all_reduce(&sum, 1, DType::I64, ReduceOp::Sum);
      CHECK(sum == std::accumulate(expected.begin(), expected.end(), int64_t(0)) + s[a]);
      std::vector<int32_t> gathered(size_t(c.size()), -1);
      const int32_t mine = mesh.world_rank();
      c.all_gather(&mine, gathered.data(), 1, DType::I32);
      CHECK(gathered == std::vector<int32_t>(expected.begin(), expected.end()));
    }

    Communicator& fs = mesh.fsdp_sp();
    CHECK(fs.size() == s.fsdp * s.sp);
    CHECK(fs.rank() == me[1] * s.sp + me[2]);
    std::vector<int32_t> expected;
    for (int f = 0; f < s.fsdp; ++f)
      for (int p = 0; p < s.sp; ++p) expected.push_back(rank_of(s, {me[0], f, p, me[3]}));
    std::vector<int32_t> gathered(size_t(fs.size()), -1);
    const int32_t mine = mesh.world_rank();
    fs.all_gather(&mine, gathered.data(), 1, DType::I32);
    CHECK(gathered == expected);

    const std::string d = mesh.describe();
    CHECK_THAT(
        d, Catch::StartsWith(fmt::format("dp={} fsdp={} sp={} tp={} ({} ranks); this rank: "
                                         "dp {} fsdp {} sp {} tp {}",
                                         s.dp, s.fsdp, s.sp, s.tp, w, me[0], me[1], me[2], me[3])));
  }
}

TEST_CASE("Mesh rejects a shape that does not match the world, on every rank", "[mesh]") {
  const int w = world_size();
  CHECK_THROWS_WITH(Mesh(shape(1, 1, w + 1, 1)),
                    Catch::Contains(fmt::format("but the job has {}", w)));
  // The world is still usable afterwards (nothing half-built is left behind).
  Mesh ok(shape(1, 1, w, 1));
  int one = 1;
  ok.axis(Axis::SP).all_reduce(&one, 1, DType::I32, ReduceOp::Sum);
  CHECK(one == w);
}

TEST_CASE("Mesh with the NCCL transport fails cleanly without a usable GPU", "[mesh]") {
#ifdef RINGATTN_WITH_NCCL
  if (cuda_device_count() > 0) {
    SUCCEED("a GPU is present: the NCCL transport is tested in [collectives] and [ring]");
    return;
  }
  CHECK_THROWS_WITH(Mesh(shape(1, 1, -1, 1), MPI_COMM_WORLD, Transport::NCCL),
                    Catch::Contains("usable CUDA device"));
#else
  CHECK_THROWS_WITH(Mesh(shape(1, 1, -1, 1), MPI_COMM_WORLD, Transport::NCCL),
                    Catch::Contains("no CUDA/NCCL"));
#endif
}
