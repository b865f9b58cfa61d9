// Training checkpoints: what a run needs to continue bit-exactly, and the full weights under
// Hugging Face LLaMA names for anything else (eval, export).
//
// Layout of <run_dir>/checkpoints/step_<N>/ (N = completed steps, the data position):
//   model.safetensors        full weights, Hugging Face names and shapes (written by rank 0)
//   optim_rank<r>.safetensors  rank r's FSDP shards, per unit u (units() order, padding kept):
//                            "<unit>.param", "<unit>.m", "<unit>.v"  F32 [shard]
//   state.json               step, updates (AdamW t of the last update), skipped steps, seed,
//                            mesh, world size, the resolved config, and per file its size and
//                            FNV-1a 64 checksum
//   COMPLETE                 written last (after state.json), so its presence means every file
//                            above is whole; holds "state.json fnv1a64 <hex>", the checksum of
//                            state.json (an empty marker, from older versions, is accepted)
// Everything is written into step_<N>.tmp, files and directory are fsynced, and the directory is
// renamed at the end, so a crash leaves either no step_<N> or a complete one; a step_<N>
// without COMPLETE (e.g. copied by hand) is ignored by find_latest_checkpoint, and loading it
// says it is incomplete. Leftover step_<N>.tmp directories are removed by the next save. At load
// every file is checked against its size and checksum before use; a mismatch names the file.
//
// Resume reads each rank's own optim file (the master weights of its shard, not the gathered
// model file), so resumed parameters are bitwise the ones saved.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "comm/mesh.h"
#include "model/transformer.h"

namespace ringattn {

// The loop position a checkpoint restores.
struct CheckpointState {
  int64_t step = 0;     // completed steps: the next step reads the batches of step + 1
  int64_t updates = 0;  // optimizer updates applied (AdamW's t of the last one)
  int64_t skipped = 0;  // steps skipped for a non-finite gradient (on_nonfinite = skip)
  uint64_t seed = 0;
  // train.steps and train.warmup_steps of the run that wrote it: the learning-rate schedule
  // depends on both, so a resume that changes them does not continue the same curve.
  int64_t train_steps = 0, warmup_steps = 0;
  // CPU threads per rank of the run that wrote it, with device = cpu (0: another device, or not
  // recorded): the sums of a threaded GEMM and of the attention's parallel backward depend on
  // the count, so a resume with another count does not continue bit-exactly.
  int64_t cpu_threads = 0;
  // The resolved config of the run that wrote it, as JSON text ("" when it recorded none).
  std::string config_json;
};

// FNV-1a 64 of a whole file, as 16 hex digits (an Error naming the file when unreadable).
std::string file_checksum(const std::string& path);

// Writes <checkpoints_dir>/step_<state.step>/ (see above) and keeps only the newest `keep_last`
// complete checkpoints (0: all). `config_json` is the resolved config, stored as is (may be
// empty). Collective over the mesh's world. Returns the directory. A failure on any rank (no
// room, a write error) raises an Error on every rank, naming the newest complete checkpoint,
// which is kept; the partial step_<N>.tmp is removed.
std::string save_checkpoint(const std::string& checkpoints_dir, Transformer& model, Mesh& mesh,
                            const CheckpointState& state, const std::string& config_json,
                            int64_t keep_last);

// About how many bytes one checkpoint of `model` on `mesh` takes (all ranks' files), and the
// bytes this process may still write where checkpoints go (none when the file system cannot
// say). A save checks each rank's own files against the space left before writing anything, and
// fails on every rank, with nothing published touched, when they do not fit.
uint64_t checkpoint_bytes(const Transformer& model, const Mesh& mesh);
std::optional<uint64_t> checkpoint_free_bytes(const std::string& checkpoints_dir);

// Creates `checkpoints_dir` (and the run directory above it) and checks that a file can be
// written there: a run learns before its first step, not at its first save hours in, that the
// directory cannot hold checkpoints (a file in its place, no permission, a read-only mount).
// `key` names the config key the path comes from, for the error. Not collective.
void prepare_checkpoints_dir(const std::string& checkpoints_dir, const std::string& key);

// The newest step_<N> directory of `checkpoints_dir` that holds COMPLETE; none when the
// directory is missing or holds no complete checkpoint.
std::optional<std::string> find_latest_checkpoint(const std::string& checkpoints_dir);

// How many step_<N> directories of `checkpoints_dir` hold COMPLETE (0 when it is missing).
size_t complete_checkpoint_count(const std::string& checkpoints_dir);

// Restores this rank's shards, optimizer state and the loop position from `dir`. Raises the
// same Error on every rank when the checkpoint's world size or mesh differ from `mesh`, or when
// any rank's file fails its checksum (the message names the file). Collective over the world.
CheckpointState load_checkpoint(const std::string& dir, Transformer& model, Mesh& mesh);

// The config keys whose values differ between `saved` (CheckpointState::config_json, the run
// that wrote a checkpoint) and `now` (this run's resolved config), as "key: old -> new", leaving
// out those that do not change what is trained (run_dir, logging, limits, checkpoint and eval
// cadence, communication, train.steps and warmup_steps, which Trainer::load reports itself, and
// mesh.*, which load_checkpoint checks as resolved).
// Empty when either is "".
std::vector<std::string> config_changes(const std::string& saved, const std::string& now);

// Loads only the full weights (model.safetensors) into `model`, whatever mesh wrote them: what
// eval uses. Checks the file's checksum against state.json. Not collective.
CheckpointState load_checkpoint_weights(const std::string& dir, Transformer& model);

}  // namespace ringattn
