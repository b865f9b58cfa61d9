// Helpers shared by the test files.
#pragma once

#include <unistd.h>

#include <fmt/format.h>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>

#include "comm/mesh.h"
#include "core/backend.h"

namespace ringattn::test {

// A temporary path unique to this process: ctest runs the tests under mpirun, so ranks on one
// machine must never share file names. Removed (with a writer's leftover ".tmp") on destruction.
struct TempPath {
  std::string path;
  TempPath(std::string_view group, std::string_view tag, std::string_view suffix = "") {
    static int counter = 0;
    path = (std::filesystem::temp_directory_path() /
            fmt::format("ringattn_{}_{}_{}_{}{}", group, ::getpid(), tag, counter++, suffix))
               .string();
  }
  ~TempPath() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
    std::filesystem::remove(path + ".tmp", ec);
  }
  TempPath(const TempPath&) = delete;
  TempPath& operator=(const TempPath&) = delete;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

#ifdef RINGATTN_WITH_CUDA
// An NCCL communicator over the world when every rank has a GPU; otherwise checks that asking
// for one is a clear error (no GPU) or warns that the test is skipped (fewer GPUs than ranks),
// and returns null.
inline std::unique_ptr<Communicator> nccl_world_or_skip(int world_size) {
  const int devices = cuda_device_count();
  if (devices == 0) {
    CHECK_THROWS_WITH(make_nccl_communicator(MPI_COMM_WORLD),
                      Catch::Contains("usable CUDA device"));
    return nullptr;
  }
  if (devices < world_size) {
    WARN("skipped: " << world_size << " ranks but " << devices
                     << " GPUs (NCCL needs one GPU per rank)");
    return nullptr;
  }
  return make_nccl_communicator(MPI_COMM_WORLD);
}
#endif

}  // namespace ringattn::test
