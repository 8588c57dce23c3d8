#pragma once
// Checkpoints: RUN_DIR/checkpoints/step_NNNNNNNN/ holds
//   model.safetensors      every parameter of the store (fp32 master weights, routing bias)
//   optimizer.safetensors  AdamW moments
//   manifest.json          step, optimizer steps, data position, seed, format version
// A checkpoint is written into a temporary directory and renamed into place, then
// RUN_DIR/checkpoints/latest (one line: the directory name) is replaced atomically, so a
// crash mid-write never leaves a half checkpoint that resume would pick up.
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/param_store.h"
#include "trainer/optimizer.h"

namespace sy {

// Where the training data stands: the next arithmetic problem index, or the shard loader's
// (epoch, index). Restoring it makes a resumed run see the same batches.
struct DataPosition {
  int64_t next_index = 0;  // arithmetic task
  int64_t epoch = 0;       // token shards
  int64_t index = 0;
};

struct CheckpointState {
  int64_t step = 0;  // steps completed
  uint64_t seed = 0;
  DataPosition data;
};

absl::Status save_checkpoint(const std::string& run_dir, const CheckpointState& state,
                             const ParamStore& store, const AdamW& optimizer, int keep_last);

// The newest checkpoint directory of a run (via `latest`), or NotFound.
absl::StatusOr<std::string> latest_checkpoint(const std::string& run_dir);

// Loads a checkpoint directory into the store and optimizer (shapes must match the
// config's) and returns its state. Every problem names the file and what to fix.
absl::StatusOr<CheckpointState> load_checkpoint(const std::string& dir, ParamStore& store,
                                                AdamW* optimizer);

}  // namespace sy
