// Helpers shared by the test files.
#pragma once

#include <mpi.h>
#include <unistd.h>

#include <fmt/format.h>
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "comm/mesh.h"
#include "core/backend.h"
#include "model/train_config.h"
#include "model/trainer.h"

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

inline int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

// A fresh directory shared by every rank of the world (rank 0 names and creates it; ranks run on
// one node), removed when every rank is done with it. For run directories and checkpoints.
struct SharedTempDir {
  std::string dir;
  explicit SharedTempDir(std::string_view group) {
    char buf[512] = {};
    if (world_rank() == 0) {
      static int counter = 0;
      const std::filesystem::path p =
          std::filesystem::temp_directory_path() /
          fmt::format("ringattn_{}_{}_{}", group, ::getpid(), counter++);
      std::filesystem::remove_all(p);
      std::filesystem::create_directories(p);
      std::snprintf(buf, sizeof(buf), "%s", p.string().c_str());
    }
    MPI_Bcast(buf, sizeof(buf), MPI_CHAR, 0, MPI_COMM_WORLD);
    dir = buf;
  }
  ~SharedTempDir() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  }
  SharedTempDir(const SharedTempDir&) = delete;
  SharedTempDir& operator=(const SharedTempDir&) = delete;
};

// A tiny model (vocabulary 17, hidden 16, 2 layers, 64 tokens, 4 sequences) on the retrieval
// task: a few steps take milliseconds. Checkpoints and evaluation off.
inline TrainConfig tiny_train_config(const std::string& run_dir,
                                     AttentionImpl impl = AttentionImpl::Blockwise,
                                     RingLayout layout = RingLayout::Zigzag) {
  TrainConfig c;
  c.run_dir = run_dir;
  c.seed = 7;
  c.model.vocab_size = 17;
  c.model.hidden_size = 16;
  c.model.intermediate_size = 24;
  c.model.num_layers = 2;
  c.model.num_heads = 4;
  c.model.num_kv_heads = 2;
  c.model.ffn_chunk = 24;   // smaller than a shard's rows: the blockwise FFN loop runs
  c.model.loss_chunk = 20;  // likewise the blockwise LM head
  c.attention.impl = impl;
  c.attention.layout = layout;
  c.attention.q_chunk = 8;  // tiles smaller than the shard: tile loops and masks exercised
  c.attention.k_chunk = 8;
  c.train.seq_len = 64;
  c.train.batch_size = 4;
  c.train.steps = 20;
  c.train.warmup_steps = 3;
  c.train.grad_clip = 1.0;  // clipping and the schedule are part of what resume must restore
  c.optim.lr = 1e-2;
  c.optim.min_lr = 1e-3;
  c.data.retrieval.key_digits = 2;
  c.data.retrieval.value_digits = 2;
  c.checkpoint.every = 0;
  c.checkpoint.keep_last = 0;
  c.eval.every = 0;
  c.eval.batches = 1;
  return c;
}

// Trainer options for tests: no step logs, no metrics file.
inline TrainerOptions quiet_trainer() {
  TrainerOptions o;
  o.log_steps = false;
  o.write_metrics = false;
  return o;
}

// The losses of `steps` training steps of `c` on a fresh mesh of `shape` over `comm`.
inline std::vector<double> train_losses(const TrainConfig& c, MeshShape shape, MPI_Comm comm,
                                        int steps) {
  Mesh mesh(shape, comm);
  Trainer t(c, mesh, quiet_trainer());
  std::vector<double> out;
  for (int i = 0; i < steps; ++i) out.push_back(t.train_step().loss);
  return out;
}

// Every unit's full parameters, in order (collective over the model's mesh).
inline std::vector<std::vector<float>> all_params(Trainer& t) {
  std::vector<std::vector<float>> out;
  for (size_t u = 0; u < t.model().units().size(); ++u) {
    Tensor p = t.model().gather_unit(u);
    out.emplace_back(p.data<float>(), p.data<float>() + p.numel());
  }
  return out;
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

#ifdef RINGATTN_WITH_NCCL
// An NCCL communicator over the world when every rank has a GPU; otherwise checks that asking
// for one is a clear error (no GPU) or warns that the test is skipped (fewer GPUs than ranks),
// and returns null. On the simulated GPU every rank shares it (the simulated NCCL allows that).
inline std::unique_ptr<Communicator> nccl_world_or_skip(int world_size) {
  const int devices = cuda_device_count();
  if (devices == 0) {
    CHECK_THROWS_WITH(make_nccl_communicator(MPI_COMM_WORLD),
                      Catch::Contains("usable CUDA device"));
    return nullptr;
  }
  if (devices < world_size && !cuda_simulated()) {
    WARN("skipped: " << world_size << " ranks but " << devices
                     << " GPUs (NCCL needs one GPU per rank)");
    return nullptr;
  }
  return make_nccl_communicator(MPI_COMM_WORLD);
}
#endif

}  // namespace ringattn::test
