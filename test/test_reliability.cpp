// Reliability pieces testable in-process: the stop agreement (a stop request on one rank stops
// every rank after the same step, with a checkpoint), the watchdog's arming, and the checksum of
// state.json in COMPLETE. The end-to-end faults (signals, dead ranks, crashes mid-save) are in
// test/cli/fault_test.sh.
#include <catch2/catch.hpp>

#include <mpi.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "comm/mesh.h"
#include "comm/watchdog.h"
#include "core/error.h"
#include "model/checkpoint.h"
#include "model/stop_signal.h"
#include "model/trainer.h"
#include "test_util.h"

using namespace ringattn;
namespace fs = std::filesystem;

namespace {

int rank_of_world() {
  return test::world_rank();
}
int size_of_world() {
  return test::world_size();
}

// A run directory shared by every rank (rank 0 names it), removed at the end.
struct SharedDir : test::SharedTempDir {
  SharedDir() : SharedTempDir("reliability") {}
};

TrainConfig small(const std::string& run_dir) {
  TrainConfig c;
  c.run_dir = run_dir;
  c.seed = 3;
  c.model.vocab_size = 17;
  c.model.hidden_size = 16;
  c.model.intermediate_size = 24;
  c.model.num_layers = 1;
  c.model.num_heads = 2;
  c.model.ffn_chunk = 16;
  c.model.loss_chunk = 16;
  c.attention.impl = AttentionImpl::Ring;
  c.attention.q_chunk = 8;
  c.attention.k_chunk = 8;
  c.train.seq_len = 32;
  c.train.batch_size = 2;
  c.train.steps = 6;
  c.train.warmup_steps = 1;
  c.data.retrieval.key_digits = 2;
  c.data.retrieval.value_digits = 2;
  c.checkpoint.every = 0;
  c.eval.every = 0;
  return c;
}

TrainerOptions silent() {
  TrainerOptions o;
  o.log_steps = false;
  o.write_metrics = false;
  return o;
}

}  // namespace

TEST_CASE("a stop request on one rank stops every rank after the same step", "[train]") {
  SharedDir tmp;
  const TrainConfig c = small(tmp.dir);
  Mesh mesh(MeshShape{1, 1, size_of_world(), 1});
  Trainer t(c, mesh, silent());
  t.train_step();
  // Only the last rank "gets the signal", as when srun or a kill reaches one process.
  if (rank_of_world() == size_of_world() - 1) request_stop();
  t.run();
  clear_stop_request();
  CHECK(t.stopped());
  CHECK(t.step() == 2);  // the step in progress when the request was seen, on every rank
  MPI_Barrier(MPI_COMM_WORLD);
  CHECK(fs::exists(t.checkpoints_dir() + "/step_2/COMPLETE"));
  CHECK(!fs::exists(t.checkpoints_dir() + "/step_6"));

  // Without a request the run goes to the end.
  Trainer u(c, mesh, silent());
  u.run(3);
  CHECK(!u.stopped());
  CHECK(u.step() == 3);
}

TEST_CASE("COMPLETE holds the checksum of state.json, which is checked at load", "[train]") {
  SharedDir tmp;
  const TrainConfig c = small(tmp.dir);
  Mesh mesh(MeshShape{1, 1, size_of_world(), 1});
  Trainer t(c, mesh, silent());
  t.train_step();
  const std::string dir = t.save();
  std::ifstream in(dir + "/COMPLETE");
  std::string word, algo, sum;
  in >> word >> algo >> sum;
  CHECK(word == "state.json");
  CHECK(algo == "fnv1a64");
  CHECK(sum == file_checksum(dir + "/state.json"));
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank_of_world() == 0) {
    std::ofstream(dir + "/state.json", std::ios::app) << " ";  // still valid JSON
  }
  MPI_Barrier(MPI_COMM_WORLD);
  Trainer u(c, mesh, silent());
  CHECK_THROWS_WITH(u.load(dir), Catch::Contains("state.json' is corrupted"));
  // An emptied marker does not turn the check off.
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank_of_world() == 0) std::ofstream(dir + "/COMPLETE", std::ios::trunc);
  MPI_Barrier(MPI_COMM_WORLD);
  CHECK_THROWS_WITH(u.load(dir),
                    Catch::Contains("COMPLETE' is damaged") && Catch::Contains("and is empty"));
}

TEST_CASE("the watchdog arms and disarms; scopes are cheap no-ops when disarmed", "[train]") {
  CHECK(!Watchdog::armed());
  { const WatchdogScope idle("nothing"); }
  {
    const WatchdogArm arm(30.0);
    CHECK(Watchdog::armed());
    CHECK(Watchdog::timeout_s() == 30.0);
    const WatchdogScope s("test scope", 1, "group");
    MPI_Barrier(MPI_COMM_WORLD);  // well within the timeout
  }
  CHECK(!Watchdog::armed());
  CHECK_THROWS_WITH(Watchdog::arm(0), Catch::Contains("comm.timeout_s must be > 0"));
}
