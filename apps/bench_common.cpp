#include "apps/bench_common.h"

#include <mpi.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "comm/agreed_config.h"
#include "comm/agreed_error.h"
#include "comm/mpi_env.h"
#include "core/backend.h"
#include "core/error.h"
#include "core/log.h"
#include "core/random.h"
#include "core/tensor.h"

namespace ringattn::apps {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double max_over_ranks(double x) {
  double m = x;
  MPI_Allreduce(&x, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return m;
}

std::vector<double> gather_doubles(Communicator& comm, double x) {
  std::vector<double> all(size_t(comm.size()));
  int64_t bits;
  static_assert(sizeof(bits) == sizeof(x));
  std::memcpy(&bits, &x, sizeof(x));
  std::vector<int64_t> raw(all.size());
  comm.all_gather(&bits, raw.data(), 1, DType::I64);
  for (size_t i = 0; i < all.size(); ++i) std::memcpy(&all[i], &raw[i], sizeof(double));
  return all;
}

int configure_bench_threads(int requested) {
  int threads = requested;
  if (threads <= 0) threads = MpiEnv::cpus_per_rank();
  set_cpu_threads(threads);
  return threads;
}

std::string gemm_name(DType operands) {
  return operands == DType::BF16 ? "bf16 GEMM" : "sgemm";
}

double measure_gemm_gflops(Communicator& comm, Backend& be, DType operands) {
  RA_CHECK(operands == DType::F32 || operands == DType::BF16,
           "GEMM benchmark: operands are F32 or BF16, not {}", dtype_name(operands));
  // Large enough to reach a GPU's float32 peak; the CPU's (and the simulated GPU's, which is the
  // host's cores) is reached at 2048 already.
  const int n = be.device() == Device::CPU || cuda_simulated() ? 2048 : 8192;
  // A probe, not the run: memory_limit_gb is for the model (a small limit failed here, naming an
  // operand the user never asked for, before the memory plan could say what does not fit).
  const LimitLifted unlimited(be.allocator());
  Tensor a = Tensor::empty({n, n}, DType::F32, Device::CPU, "sgemm A");
  Tensor b = Tensor::empty({n, n}, DType::F32, Device::CPU, "sgemm B");
  fill_normal(a, 101);
  fill_normal(b, 102);
  a = a.to_device(be.device(), "sgemm A");
  b = b.to_device(be.device(), "sgemm B");
  Tensor c = Tensor::zeros({n, n}, DType::F32, be.device(), "sgemm C");
  Tensor ah, bh;  // the bf16 operands
  if (operands == DType::BF16) {
    ah = Tensor::empty({n, n}, DType::BF16, be.device(), "bf16 GEMM A");
    bh = Tensor::empty({n, n}, DType::BF16, be.device(), "bf16 GEMM B");
    be.to_bf16(a.data<float>(), ah.data<uint16_t>(), int64_t(n) * n);
    be.to_bf16(b.data<float>(), bh.data<uint16_t>(), int64_t(n) * n);
  }
  auto run = [&] {
    if (operands == DType::BF16)
      be.gemm_bf16(false, false, n, n, n, 1.0f, ah.data<uint16_t>(), n, bh.data<uint16_t>(), n,
                   0.0f, c.data<float>(), n);
    else
      be.gemm(false, false, n, n, n, 1.0f, a.data<float>(), n, b.data<float>(), n, 0.0f,
              c.data<float>(), n);
  };
  run();  // warm-up
  be.synchronize();
  std::vector<double> gf;
  for (int i = 0; i < 3; ++i) {
    comm.barrier();
    const auto t0 = std::chrono::steady_clock::now();
    run();
    be.synchronize();
    gf.push_back(2.0 * n * n * double(n) / seconds_since(t0) * 1e-9);
  }
  double total = 0;
  for (double g : gather_doubles(comm, median(gf))) total += g;
  return total;
}

BenchConfig load_bench_config(const std::string& file, const std::vector<std::string>& sets) {
  BenchConfig bc = agreed_across_ranks("reading the config", [&] {
    JsonConfig json = load_train_json(file, sets);
    TrainConfig cfg = to_train_config(json);
    log::set_level(cfg.log_level);
    return BenchConfig{std::move(json), std::move(cfg)};
  });
  require_same_config_on_every_rank(bc.json.dump());
  return bc;
}

void write_text_file(const std::string& path, const std::string& text) {
  const std::filesystem::path p(path);
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
  std::ofstream f(p);
  RA_CHECK(f.good(), "cannot write '{}'", path);
  f << text;
  RA_CHECK(f.good(), "error writing '{}'", path);
}

}  // namespace ringattn::apps
