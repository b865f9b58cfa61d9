// The bridge from the trainer's configuration (model/train_config.h) to the data sources: which
// source a config asks for, and which part of each step's batch a rank of the mesh reads.
#pragma once

#include <memory>

#include "comm/mesh.h"
#include "model/data/data_source.h"
#include "model/train_config.h"

namespace ringattn {

// The source `cfg.data` describes, seeded with `cfg.seed`. Raises a clear Error when a file is
// missing, empty or malformed, or when model.vocab_size is below the data's vocabulary (the
// retrieval task needs 17, byte-level text 257: 256 bytes and the file separator). For token
// files, ids are checked against model.vocab_size as they are read.
std::unique_ptr<BatchSource> make_batch_source(const TrainConfig& cfg);

// What this rank of `mesh` reads for micro-batch `micro` of `step` at `seq_len` (train.seq_len
// for training, an eval length for eval): the data-parallel index is dp x fsdp (FSDP ranks see
// different samples), the sp coordinate picks the shard, and the global batch train.batch_size
// is split evenly over data ranks and train.micro_batches.
// batch_size: global sequences of the step (-1: train.batch_size; a curriculum stage passes its
// own).
BatchRequest make_batch_request(const TrainConfig& cfg, const Mesh& mesh, int64_t step, int micro,
                                int64_t seq_len, Split split = Split::Train,
                                int64_t batch_size = -1);

}  // namespace ringattn
