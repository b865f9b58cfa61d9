// Shared pieces of the `ringattn bench` commands.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/backend.h"
#include "core/json_config.h"
#include "model/train_config.h"

namespace ringattn::apps {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v);
double max_over_ranks(double x);  // over MPI_COMM_WORLD
// Every rank's value, rank-ordered, on every rank of `comm`.
std::vector<double> gather_doubles(Communicator& comm, double x);
// Sets the CPU threads per rank: `requested`, or (when 0) the node's cores divided by the ranks
// on this node, at least 1. Returns the count in use.
int configure_bench_threads(int requested);
// A GEMM run on every rank of `comm` at once: OpenBLAS sgemm (2048^3, with the current thread
// setting) on the CPU backend, cuBLAS (8192^3) on a GPU. The sum over ranks of GFLOP/s (median of
// 3), i.e. what these cores or GPUs deliver. `operands` BF16 times Backend::gemm_bf16 instead
// (bf16 A and B, float32 accumulation: tensor cores on a GPU; on the CPU it widens and runs
// sgemm), the peak a bf16 model's MFU is measured against.
double measure_gemm_gflops(Communicator& comm, Backend& backend = cpu_backend(),
                           DType operands = DType::F32);
// What measure_gemm_gflops times: "sgemm" or "bf16 GEMM".
std::string gemm_name(DType operands);

// A training config for the training benchmarks: defaults, then `file`, then the --set
// overrides; the log level applied. Not validated (each benchmark changes the mesh and length).
struct BenchConfig {
  JsonConfig json;
  TrainConfig cfg;
};
BenchConfig load_bench_config(const std::string& file, const std::vector<std::string>& sets);
// Writes `text` to `path` (creating its directory); an Error naming the path when it cannot.
void write_text_file(const std::string& path, const std::string& text);

}  // namespace ringattn::apps
