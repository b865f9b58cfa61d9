#include "model/checkpoint.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string_view>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <csignal>

#include <mpi.h>

#include "comm/agreed_error.h"
#include "core/allocator.h"
#include "core/backend.h"
#include "core/debug_faults.h"
#include "core/error.h"
#include "core/json_config.h"
#include "core/log.h"
#include "core/safetensors.h"

namespace ringattn {

namespace fs = std::filesystem;

namespace {

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kStateFile = "state.json";
constexpr const char* kCompleteFile = "COMPLETE";

std::string optim_file(int rank) {
  return fmt::format("optim_rank{}.safetensors", rank);
}

// step_<N> -> N; -1 for anything else (step_<N>.tmp included).
int64_t step_of(const fs::path& p) {
  const std::string name = p.filename().string();
  if (name.rfind("step_", 0) != 0 || name.size() == 5) return -1;
  int64_t n = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    n = n * 10 + (name[i] - '0');
  }
  return n;
}

// Deletes a checkpoint directory without ever leaving a partial one under a step_<N> name, where
// it would look complete if its COMPLETE marker outlived the rest (remove_all's order is the
// file system's): it is renamed out of those names first (atomic), then removed. A step_<N>.old
// left by an interruption is removed by the next save, like an interrupted save's step_<N>.tmp.
void discard_checkpoint(const fs::path& dir) {
  fs::path old = dir;
  old += ".old";
  fs::remove_all(old);
  fs::rename(dir, old);
  fs::remove_all(old);
}

// Complete checkpoints of `dir`, oldest first.
std::vector<std::pair<int64_t, fs::path>> complete_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const int64_t n = step_of(e.path());
    if (n >= 0 && e.is_directory() && fs::exists(e.path() / kCompleteFile))
      out.emplace_back(n, e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// fsync of a file or directory: the rename that publishes a checkpoint must not reach the disk
// before the files it publishes (a power loss would leave a "complete" checkpoint of holes).
void sync_path(const fs::path& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  RA_CHECK(fd >= 0, "cannot open '{}' to sync it: {}", path.string(), std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  RA_CHECK(rc == 0, "fsync of '{}' failed: {}", path.string(), std::strerror(err));
}

void write_text(const fs::path& path, const std::string& text) {
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    RA_CHECK(f.good(), "cannot write '{}'", path.string());
    f << text;
    f.flush();
    RA_CHECK(f.good(), "error writing '{}'", path.string());
  }
  sync_path(path, false);
}

std::string read_text(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// COMPLETE holds the checksum of state.json ("state.json fnv1a64 <hex>"), so that the one file
// the others' checksums live in is covered too. An empty or other COMPLETE is refused: it would
// otherwise turn that check off.
std::string complete_text(const fs::path& state_path) {
  return fmt::format("{} fnv1a64 {}\n", kStateFile, file_checksum(state_path.string()));
}

nlohmann::json read_state(const std::string& dir) {
  RA_CHECK(fs::is_directory(dir), "checkpoint '{}' does not exist (or is not a directory)", dir);
  const fs::path complete = fs::path(dir) / kCompleteFile;
  RA_CHECK(fs::exists(complete),
           "checkpoint '{}' is incomplete: it has no {} marker (its save was interrupted); use "
           "an earlier checkpoint",
           dir, kCompleteFile);
  const fs::path p = fs::path(dir) / kStateFile;
  RA_CHECK(fs::exists(p), "checkpoint file '{}' is missing", p.string());
  const std::string marker = read_text(complete);
  RA_CHECK(marker.rfind(fmt::format("{} fnv1a64 ", kStateFile), 0) == 0,
           "checkpoint file '{}' is damaged: it should hold the checksum of {} ('{} fnv1a64 "
           "<hex>'){} (remove the checkpoint directory to resume from an earlier one)",
           complete.string(), kStateFile, kStateFile, marker.empty() ? " and is empty" : "");
  RA_CHECK(marker == complete_text(p),
           "checkpoint file '{}' is corrupted: its checksum does not match the one in {}",
           p.string(), complete.string());
  std::ifstream f(p);
  RA_CHECK(f.good(), "checkpoint '{}': cannot read {}", dir, p.string());
  try {
    return nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    RA_FAIL("checkpoint file '{}' is not valid JSON: {}", p.string(), e.what());
  }
}

CheckpointState state_from_json(const nlohmann::json& j, const std::string& dir) {
  try {
    CheckpointState s;
    s.step = j.at("step").get<int64_t>();
    s.updates = j.at("updates").get<int64_t>();
    s.skipped = j.at("skipped").get<int64_t>();
    s.seed = j.at("seed").get<uint64_t>();
    s.train_steps = j.value("train_steps", int64_t(0));
    s.warmup_steps = j.value("warmup_steps", int64_t(0));
    s.cpu_threads = j.value("cpu_threads", int64_t(0));
    if (const auto c = j.find("config"); c != j.end() && c->is_object()) s.config_json = c->dump();
    return s;
  } catch (const nlohmann::json::exception& e) {
    RA_FAIL("checkpoint file '{}' lacks a field or has one of the wrong type: {}",
            (fs::path(dir) / kStateFile).string(), e.what());
  }
}

// The checksum recorded for `file` must match the file on disk: a truncated or altered file is
// reported by name before its contents are trusted.
void verify_file(const std::string& dir, const nlohmann::json& state, const std::string& file) {
  const std::string path = (fs::path(dir) / file).string();
  RA_CHECK(state.contains("files") && state.at("files").contains(file),
           "checkpoint '{}': state.json lists no file '{}'", dir, file);
  // A checkpoint pruned (checkpoint.keep_last) by a training run while this reads it is gone as a
  // whole, or renamed step_<N>.old on its way out: not damage, and the next read finds a newer one.
  RA_CHECK(fs::exists(dir),
           "checkpoint '{}' was removed while it was being read (a training run "
           "pruning it, checkpoint.keep_last?); read it again, or a newer one",
           dir);
  RA_CHECK(fs::exists(path), "checkpoint file '{}' is missing", path);
  const auto& entry = state.at("files").at(file);
  RA_CHECK(entry.contains("fnv1a64") && entry.at("fnv1a64").is_string(),
           "checkpoint '{}': state.json has no checksum for '{}'", dir, file);
  const std::string want = entry.at("fnv1a64").get<std::string>();
  if (entry.contains("bytes") && entry.at("bytes").is_number_unsigned()) {
    const uint64_t bytes = entry.at("bytes").get<uint64_t>();
    const uint64_t size = fs::file_size(path);
    RA_CHECK(size == bytes,
             "checkpoint file '{}' is truncated or damaged: {} bytes, state.json says {} (remove "
             "the checkpoint directory to resume from an earlier one)",
             path, size, bytes);
  }
  const std::string got = file_checksum(path);
  RA_CHECK(got == want,
           "checkpoint file '{}' is corrupted: checksum {} does not match {} recorded in "
           "state.json (remove the checkpoint directory to resume from an earlier one)",
           path, got, want);
}

std::string mesh_text(int dp, int fsdp, int sp, int tp) {
  return fmt::format("dp={} fsdp={} sp={} tp={}", dp, fsdp, sp, tp);
}

// The model a checkpoint was trained as (state.json's config.model) against the one it is loaded
// into. Element counts alone let a reshaped model through (8 heads of 8 hold what 4 of 16 held),
// and a tied head would simply leave the checkpoint's lm_head unread. The shape must match; a
// changed rope_theta or rms_norm_eps is allowed (context-extension experiments change theta)
// but said. Checkpoints saved without a config (tests) are not checked.
void check_model(const nlohmann::json& state, const std::string& dir, const ModelDims& now) {
  const auto config = state.find("config");
  if (config == state.end() || !config->is_object() || !config->contains("model")) return;
  const nlohmann::json& m = config->at("model");
  try {
    const int64_t heads = m.at("num_heads").get<int64_t>();
    const int64_t kv = m.value("num_kv_heads", int64_t(0));
    const int64_t hd = m.value("head_dim", int64_t(0));
    const int64_t hidden = m.at("hidden_size").get<int64_t>();
    const struct {
      const char* key;
      int64_t saved, now;
    } shape[] = {
        {"vocab_size", m.at("vocab_size").get<int64_t>(), now.vocab},
        {"hidden_size", hidden, now.hidden},
        {"intermediate_size", m.at("intermediate_size").get<int64_t>(), now.intermediate},
        {"num_layers", m.at("num_layers").get<int64_t>(), now.layers},
        {"num_heads", heads, now.heads},
        {"num_kv_heads", kv > 0 ? kv : heads, now.kv_heads},
        {"head_dim", hd > 0 ? hd : (heads > 0 ? hidden / heads : 0), now.head_dim},
        {"tie_embeddings", m.at("tie_embeddings").get<bool>() ? 1 : 0, now.tie_embeddings ? 1 : 0}};
    // As the config writes it: tie_embeddings is a bool there.
    const auto shown = [](std::string_view key, int64_t v) {
      return key == "tie_embeddings" ? std::string(v ? "true" : "false") : std::to_string(v);
    };
    for (const auto& k : shape)
      RA_CHECK(k.saved == k.now,
               "checkpoint '{}' holds a model with model.{} = {}, but this config has {}; use the "
               "model it was trained as (its state.json records it)",
               dir, k.key, shown(k.key, k.saved), shown(k.key, k.now));
    const struct {
      const char* key;
      double saved;
      float now;
    } function[] = {{"rope_theta", m.at("rope_theta").get<double>(), now.rope_theta},
                    {"rms_norm_eps", m.at("rms_norm_eps").get<double>(), now.norm_eps}};
    for (const auto& k : function)
      if (float(k.saved) != k.now)
        log::warn("checkpoint '{}' was trained with model.{} = {}; this run uses {}", dir, k.key,
                  k.saved, k.now);
  } catch (const nlohmann::json::exception& e) {
    RA_FAIL("checkpoint file '{}': its config.model is not a model config: {}",
            (fs::path(dir) / kStateFile).string(), e.what());
  }
}

}  // namespace

std::string file_checksum(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  RA_CHECK(f != nullptr, "checkpoint file '{}' cannot be opened", path);
  uint64_t h = 0xcbf29ce484222325ull;
  std::vector<unsigned char> buf(1 << 20);
  size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0)
    for (size_t i = 0; i < n; ++i) h = (h ^ buf[i]) * 0x100000001b3ull;
  const bool err = std::ferror(f) != 0;
  std::fclose(f);
  RA_CHECK(!err, "checkpoint file '{}': read error", path);
  return fmt::format("{:016x}", h);
}

// f_bavail, also for root (the blocks reserved for root need CAP_SYS_RESOURCE, which a
// container's root often lacks). Test-only fault: checkpoint_free_kib sets the answer.
std::optional<uint64_t> checkpoint_free_bytes(const std::string& dir) {
  if (const int64_t kib = debug_fault("checkpoint_free_kib"); kib >= 0) return uint64_t(kib) * 1024;
  struct statvfs s {};
  if (::statvfs(dir.c_str(), &s) != 0) return std::nullopt;
  return uint64_t(s.f_bavail) * uint64_t(s.f_frsize);
}

namespace {

// What this rank writes into a checkpoint: model.safetensors on rank 0 (the full weights), and
// on every rank its optimizer file (parameter, m and v of its shards). Tensor data plus a
// generous allowance for the safetensors headers.
uint64_t bytes_written(const Transformer& model, bool root) {
  uint64_t bytes = 0, tensors = 0;
  for (const ModelUnit& u : model.units()) {
    bytes += 3 * uint64_t(u.shard->layout().shard_numel) * sizeof(float);
    tensors += 3;
    if (root) {
      bytes += uint64_t(u.layout.numel()) * sizeof(float);
      tensors += u.layout.entries().size();
    }
  }
  return bytes + tensors * 256 + 64 * 1024;  // + state.json and COMPLETE
}

// "the newest complete checkpoint, '<dir>', is kept" or that there is none.
// Never throws: it builds an error message, before the ranks agree.
std::string newest_kept(const std::string& checkpoints_dir) {
  try {
    const auto all = complete_checkpoints(checkpoints_dir);
    if (all.empty()) return "there is no earlier complete checkpoint";
    return fmt::format("the newest complete checkpoint, '{}', is kept", all.back().second.string());
  } catch (const std::exception&) {
    return "the complete checkpoints already there are kept";
  }
}

// Where a rank writes, as far as the ranks can tell one file system from another: its node (a
// hash of the processor name) and statvfs's file-system id. Ranks of one node writing to one file
// system share its free space; a network file system shared by several nodes is not recognised
// (its ranks are counted per node).
int64_t node_id() {
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  if (MPI_Get_processor_name(name, &len) != MPI_SUCCESS) return 0;
  return int64_t(std::hash<std::string_view>{}(std::string_view(name, size_t(len))));
}
int64_t file_system_id(const std::string& dir) {
  struct statvfs s {};
  return ::statvfs(dir.c_str(), &s) == 0 ? int64_t(s.f_fsid) : -1;
}

// "rank 3 needs" or "ranks 0-3, 6 need ... in all", for the ranks that share a file system.
std::string ranks_that_need(const std::vector<int>& ranks, const std::string& amount) {
  if (ranks.size() == 1) return fmt::format("rank {} needs about {}", ranks[0], amount);
  std::string list;
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    if (!list.empty()) list += ", ";
    list += j == i ? fmt::format("{}", ranks[i]) : fmt::format("{}-{}", ranks[i], ranks[j]);
    i = j + 1;
  }
  return fmt::format("ranks {} need about {} in all", list, amount);
}

std::string message_of(const std::exception& e) {
  return e.what();  // the cause, without ringattn::Error's location (the caller adds context)
}

}  // namespace

uint64_t checkpoint_bytes(const Transformer& model, const Mesh& mesh) {
  // Rank 0's files plus every other rank's optimizer file (shards are padded to one size).
  return bytes_written(model, true) + uint64_t(mesh.world_size() - 1) * bytes_written(model, false);
}

std::string save_checkpoint(const std::string& checkpoints_dir, Transformer& model, Mesh& mesh,
                            const CheckpointState& state, const std::string& config_json,
                            int64_t keep_last) {
  Communicator& world = mesh.world();
  const int rank = mesh.world_rank();
  const bool root = rank == 0;
  const fs::path final_dir = fs::path(checkpoints_dir) / fmt::format("step_{}", state.step);
  const fs::path tmp = fs::path(checkpoints_dir) / fmt::format("step_{}.tmp", state.step);
  const fs::path replaced = fs::path(checkpoints_dir) / fmt::format("step_{}.old", state.step);
  // A save that fails on any rank fails on all of them together (no rank is left in a
  // collective), removes its partial directory (a full disk stays usable) and names what is
  // kept: nothing published is touched before the new checkpoint is complete.
  std::string error;
  const auto fail_together = [&](const char* stage) {
    const std::string what = fmt::format("checkpoint of step {} not saved", state.step);
    const auto after = [&] {
      return fmt::format("{}; make room or fix the directory, then continue with --resume",
                         newest_kept(checkpoints_dir));
    };
    try {
      raise_if_any_rank_failed(
          world, error.empty() ? "" : fmt::format("{}: {}; {}", what, error, after()), [&](int r) {
            return fmt::format("{}: rank {} failed while {} (its message says why); {}", what, r,
                               stage, after());
          });
    } catch (...) {
      // Every rank is past its writes: the partial directory can go.
      std::error_code ec;
      if (root) fs::remove_all(tmp, ec);
      throw;
    }
  };

  // 1. Leftovers of saves that were interrupted (never loaded: they lack the step_<N> name), then
  //    room for this rank's files, checked before anything is written.
  if (root) {
    try {
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(checkpoints_dir, ec)) {
        const std::string name = e.path().filename().string();
        const auto ext = e.path().extension();
        if (name.rfind("step_", 0) == 0 && (ext == ".tmp" || ext == ".old") && e.is_directory()) {
          log::warn("removing '{}', left by an interrupted checkpoint {}", e.path().string(),
                    ext == ".tmp" ? "save" : "removal");
          fs::remove_all(e.path());
        }
      }
    } catch (const std::exception& e) {
      error = message_of(e);
    }
  }
  fail_together("removing an interrupted save");
  {
    // Each rank's need counted against its file system with those of the other ranks that write
    // there (all of them, when one node holds the job): one rank's share alone fitted while the
    // sum did not. Every rank of a file system says the same message (said once, core/error.h).
    const uint64_t need = bytes_written(model, root);
    const std::optional<uint64_t> have = checkpoint_free_bytes(checkpoints_dir);
    const int64_t mine[3] = {node_id(), file_system_id(checkpoints_dir), int64_t(need)};
    std::vector<int64_t> all(3 * size_t(world.size()), 0);
    world.all_gather(mine, all.data(), 3, DType::I64);
    uint64_t total = 0;
    std::vector<int> sharers;
    for (int r = 0; r < world.size(); ++r) {
      const int64_t* other = &all[3 * size_t(r)];
      if (r == rank || (mine[1] != -1 && other[0] == mine[0] && other[1] == mine[1])) {
        total += uint64_t(other[2]);
        sharers.push_back(r);
      }
    }
    if (have && *have < total)
      error = fmt::format("{} in '{}', and the file system has {} free",
                          ranks_that_need(sharers, format_bytes(size_t(total))), checkpoints_dir,
                          format_bytes(size_t(*have)));
    if (root && error.empty()) {
      try {
        fs::create_directories(tmp);
      } catch (const std::exception& e) {
        error = message_of(e);
      }
    }
  }
  fail_together("checking for room");

  // 2. Full weights, gathered one unit at a time (collective over fsdp x sp); only rank 0 keeps
  //    them, so the other ranks hold at most one unit's full copy at a time. These host copies
  //    are the save's, not the model's: memory_limit_gb (the training plan) does not hold them,
  //    so that no rank fails alone inside the gathers' collectives.
  const LimitLifted host_copies(cpu_backend().allocator());
  {
    std::vector<std::pair<std::string, Tensor>> named;
    for (size_t u = 0; u < model.units().size(); ++u) {
      auto part = model.gather_named(u);
      if (root)
        for (auto& p : part) named.push_back(std::move(p));
    }
    if (root) {
      try {
        save_safetensors((tmp / kModelFile).string(), named, {{"format", "pt"}});
      } catch (const std::exception& e) {
        error = message_of(e);
      }
    }
  }
  // Test-only fault (core/debug_faults.h): the writer dies in the middle of the save.
  if (root && state.step == debug_fault("checkpoint_crash_step")) {
    log::rank_error(
        "RINGATTN_DEBUG_FAULTS: killing rank 0 while it saves the checkpoint of "
        "step {}",
        state.step);
    spdlog::default_logger()->flush();
    std::raise(SIGKILL);
  }

  // This rank's shards, padding included, so loading is a plain copy back.
  if (error.empty()) {
    try {
      std::vector<std::pair<std::string, Tensor>> mine;
      for (ModelUnit& unit : model.units()) {
        FlatShard& s = *unit.shard;
        AdamWState& opt = s.optimizer_state();
        // Downloads when the shards live on a device (no copy on the CPU).
        mine.emplace_back(unit.name + ".param", s.params().to_device(Device::CPU, "checkpoint"));
        mine.emplace_back(unit.name + ".m", opt.m.to_device(Device::CPU, "checkpoint"));
        mine.emplace_back(unit.name + ".v", opt.v.to_device(Device::CPU, "checkpoint"));
      }
      const std::string path = (tmp / optim_file(rank)).string();
      RA_CHECK(rank != debug_fault("checkpoint_write_fail_rank"),
               "safetensors file '{}.tmp': write failed: injected by RINGATTN_DEBUG_FAULTS", path);
      save_safetensors(path, mine);
    } catch (const std::exception& e) {
      error = message_of(e);
    }
  }
  fail_together("writing its files");

  // 3. Rank 0 describes and publishes it, then prunes.
  if (root) {
    try {
      nlohmann::ordered_json j;
      j["step"] = state.step;
      j["updates"] = state.updates;
      j["skipped"] = state.skipped;
      j["data_position"] = state.step;  // batches are a pure function of the step
      j["seed"] = state.seed;
      j["train_steps"] = state.train_steps;
      j["warmup_steps"] = state.warmup_steps;
      if (state.cpu_threads > 0) j["cpu_threads"] = state.cpu_threads;
      const MeshShape& m = mesh.shape();
      j["mesh"] = {{"dp", m.dp}, {"fsdp", m.fsdp}, {"sp", m.sp}, {"tp", m.tp}};
      j["world_size"] = mesh.world_size();
      j["config"] = config_json.empty() ? nlohmann::ordered_json()
                                        : nlohmann::ordered_json::parse(config_json);
      std::vector<std::string> files{kModelFile};
      for (int r = 0; r < mesh.world_size(); ++r) files.push_back(optim_file(r));
      nlohmann::ordered_json fj = nlohmann::ordered_json::object();
      for (const std::string& f : files) {
        const fs::path p = tmp / f;
        fj[f] = {{"bytes", fs::file_size(p)}, {"fnv1a64", file_checksum(p.string())}};
      }
      j["files"] = fj;
      write_text(tmp / kStateFile, j.dump(2) + "\n");
      // The marker last, and the directory synced, before the rename publishes it.
      write_text(tmp / kCompleteFile, complete_text(tmp / kStateFile));
      sync_path(tmp, true);
      // A checkpoint of the same step from an earlier attempt is set aside (an atomic rename)
      // and put back should the new one fail to take its name.
      // Anything else of that name is not ours to remove.
      if (fs::exists(final_dir)) {
        RA_CHECK(fs::is_directory(final_dir) && fs::exists(final_dir / kCompleteFile),
                 "'{}' is in the way and is not a complete checkpoint (it has no {} marker); it "
                 "was left as it is: move it away",
                 final_dir.string(), kCompleteFile);
        fs::remove_all(replaced);
        fs::rename(final_dir, replaced);
      }
      try {
        fs::rename(tmp, final_dir);
      } catch (...) {
        std::error_code ec;
        if (fs::exists(replaced, ec)) fs::rename(replaced, final_dir, ec);
        throw;
      }
    } catch (const std::exception& e) {
      error = message_of(e);
    }
    if (error.empty()) {
      // Published: what fails from here on costs space or durability, not this checkpoint.
      try {
        sync_path(checkpoints_dir, true);
        if (fs::exists(replaced)) fs::remove_all(replaced);
        if (keep_last > 0) {
          auto all = complete_checkpoints(checkpoints_dir);
          for (size_t i = 0; i + size_t(keep_last) < all.size(); ++i)
            discard_checkpoint(all[i].second);
        }
      } catch (const std::exception& e) {
        log::warn(
            "checkpoint of step {} saved, but tidying after it failed (older checkpoints of "
            "checkpoint.keep_last = {} or a replaced one may remain; the next save removes "
            "leftovers): {}",
            state.step, keep_last, message_of(e));
      }
    }
  }
  fail_together("publishing it");
  return final_dir.string();
}

void prepare_checkpoints_dir(const std::string& checkpoints_dir, const std::string& key) {
  const fs::path dir(checkpoints_dir);
  std::error_code ec;
  fs::create_directories(dir, ec);
  RA_CHECK(!ec && fs::is_directory(dir), "{}: cannot create the checkpoint directory '{}': {}", key,
           dir.string(), ec ? ec.message() : "a file of that name is in the way");
  const fs::path probe = dir / fmt::format(".write_test.{}", ::getpid());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  RA_CHECK(fd >= 0, "{}: cannot write in the checkpoint directory '{}': {}", key, dir.string(),
           std::strerror(errno));
  const char text[] = "ringattn\n";
  const bool wrote = ::write(fd, text, sizeof(text) - 1) == ssize_t(sizeof(text) - 1);
  const int err = errno;
  ::close(fd);
  fs::remove(probe, ec);
  RA_CHECK(wrote, "{}: cannot write in the checkpoint directory '{}': {}", key, dir.string(),
           std::strerror(err));
}

std::optional<std::string> find_latest_checkpoint(const std::string& checkpoints_dir) {
  auto all = complete_checkpoints(checkpoints_dir);
  if (all.empty()) return std::nullopt;
  return all.back().second.string();
}

size_t complete_checkpoint_count(const std::string& checkpoints_dir) {
  return complete_checkpoints(checkpoints_dir).size();
}

CheckpointState load_checkpoint(const std::string& dir, Transformer& model, Mesh& mesh) {
  // Every rank reads the same state.json and checks it alike: one message for all of them.
  const nlohmann::json j =
      agreed_across_ranks(&mesh.world(), "reading the checkpoint's state", [&] {
        const nlohmann::json j = read_state(dir);
        int world = 0;
        std::string saved;
        try {
          world = j.at("world_size").get<int>();
          const auto& jm = j.at("mesh");
          saved = mesh_text(jm.at("dp").get<int>(), jm.at("fsdp").get<int>(),
                            jm.at("sp").get<int>(), jm.at("tp").get<int>());
        } catch (const nlohmann::json::exception& e) {
          RA_FAIL("checkpoint file '{}' has no valid world_size and mesh: {}",
                  (fs::path(dir) / kStateFile).string(), e.what());
        }
        const MeshShape& m = mesh.shape();
        const std::string now = mesh_text(m.dp, m.fsdp, m.sp, m.tp);
        RA_CHECK(
            world == mesh.world_size() && saved == now,
            "checkpoint '{}' was written by {} ranks with mesh {}, but this run has {} ranks with "
            "mesh {}; resume with the same mesh (optimizer state is sharded per rank)",
            dir, world, saved, mesh.world_size(), now);
        check_model(j, dir, model.dims());
        (void)state_from_json(j, dir);  // its fields too, here where every rank agrees
        return j;
      });

  // Every rank loads its own file; failures are agreed on so that no rank is left waiting in a
  // collective while another has thrown.
  const int rank = mesh.world_rank();
  const std::string file = optim_file(rank);
  std::string error;
  try {
    verify_file(dir, j, file);
    const std::string path = (fs::path(dir) / file).string();
    SafetensorsFile st = SafetensorsFile::open(path);
    for (ModelUnit& unit : model.units()) {
      FlatShard& s = *unit.shard;
      AdamWState& opt = s.optimizer_state();
      for (auto [suffix, dst] : {std::pair<const char*, Tensor*>{".param", &s.params()},
                                 {".m", &opt.m},
                                 {".v", &opt.v}}) {
        const std::string name = unit.name + suffix;
        RA_CHECK(st.contains(name), "checkpoint file '{}' has no tensor '{}'", path, name);
        Tensor t = st.load_f32(name);
        RA_CHECK(t.numel() == dst->numel(),
                 "checkpoint file '{}': tensor '{}' has {} elements, this model's shard {} (was "
                 "the model configured differently?)",
                 path, name, t.numel(), dst->numel());
        dst->copy_from(t.view(dst->shape()));  // an upload when the shards live on a device
      }
    }
  } catch (const std::exception& e) {
    error = e.what();
  }
  raise_if_any_rank_failed(mesh.world(), error, [&](int r) {
    return fmt::format("checkpoint file '{}' could not be loaded (rank {} says why)",
                       (fs::path(dir) / optim_file(r)).string(), r);
  });
  return state_from_json(j, dir);
}

std::vector<std::string> config_changes(const std::string& saved, const std::string& now) {
  std::vector<std::string> out;
  if (saved.empty() || now.empty()) return out;
  // Keys (or sections, by prefix) that do not change what is trained. mesh.* too: another
  // resolved mesh is refused by load_checkpoint, and another spelling of the same one (sp = -1
  // or 2 on 2 ranks) changes nothing.
  static const char* const kIgnored[] = {
      "run_dir", "log_level", "memory_limit_gb", "peak_tflops",        "checkpoint.",    "eval.",
      "comm.",   "mesh.",     "train.steps",     "train.warmup_steps", "train.log_every"};
  const auto ignored = [](const std::string& key) {
    for (const char* k : kIgnored) {
      const std::string_view p(k);
      if (p.back() == '.' ? key.rfind(p, 0) == 0 : key == p) return true;
    }
    return false;
  };
  // "/train/seq_len" -> value
  const nlohmann::json a = nlohmann::json::parse(saved).flatten();
  const nlohmann::json b = nlohmann::json::parse(now).flatten();
  for (const auto& [pointer, value] : b.items()) {
    const std::string key = config_key_of_pointer(pointer);
    if (ignored(key)) continue;
    const auto old = a.find(pointer);
    if (old == a.end())
      out.push_back(fmt::format("{}: (not set) -> {}", key, value.dump()));
    else if (*old != value)
      out.push_back(fmt::format("{}: {} -> {}", key, old->dump(), value.dump()));
  }
  return out;
}

CheckpointState load_checkpoint_weights(const std::string& dir, Transformer& model) {
  const nlohmann::json j = read_state(dir);
  check_model(j, dir, model.dims());
  verify_file(dir, j, kModelFile);
  const std::string path = (fs::path(dir) / kModelFile).string();
  SafetensorsFile st = SafetensorsFile::open(path);
  for (size_t u = 0; u < model.units().size(); ++u) {
    const ParamLayout& layout = model.units()[u].layout;
    std::vector<float> full(size_t(layout.numel()));
    for (const ParamEntry& e : layout.entries()) {
      RA_CHECK(st.contains(e.name), "checkpoint file '{}' has no tensor '{}'", path, e.name);
      Tensor t = st.load_f32(e.name);
      RA_CHECK(t.numel() == e.numel(),
               "checkpoint file '{}': tensor '{}' has {} elements, the model expects {}", path,
               e.name, t.numel(), e.numel());
      std::memcpy(full.data() + e.offset, t.data<float>(), size_t(e.numel()) * sizeof(float));
    }
    model.load_unit(u, full.data(), layout.numel());
  }
  return state_from_json(j, dir);
}

}  // namespace ringattn
