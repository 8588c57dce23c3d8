#pragma once
// Checkpoints: RUN_DIR/checkpoints/step_NNNNNNNN/ holds
//   model.safetensors             dense parameters (fp32 master weights, routing bias), and
//                                 the experts too when there is no expert parallelism
//   experts-ep<i>.safetensors     with expert parallelism: the experts of EP rank i, written
//                                 by world rank i (the first rank holding them)
//   optimizer-rank<r>.safetensors the AdamW moments rank r updates (its ZeRO-1 shard)
//   manifest.json                 step, optimizer steps, data position, seed, the layout
// Every rank writes its own files; rank 0 writes the rest.
// A checkpoint is written into a temporary directory and renamed into place, then
// RUN_DIR/checkpoints/latest (one line: the directory name) is replaced atomically, so a
// crash mid-write never leaves a half checkpoint that resume would pick up.
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/param_store.h"
#include "parallel/communicator.h"
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

// Which ranks share a checkpoint. A resumed run must have the same layout.
struct CheckpointLayout {
  Communicator* world = nullptr;  // null: one process
  int expert_parallel = 1;
  int zero_stage = 0;
};

// Collective over layout.world: every rank returns the same status.
absl::Status save_checkpoint(const std::string& run_dir, const CheckpointState& state,
                             const ParamStore& store, const AdamW& optimizer, int keep_last,
                             const CheckpointLayout& layout = {});

// A step-0 checkpoint of weights alone, one process, no optimizer state: what an imported
// model starts from (generate, rl.init_checkpoint and init load it; a resume does not).
absl::Status save_weights_checkpoint(const std::string& run_dir, const ParamStore& store);

// The newest checkpoint directory of a run (via `latest`), or NotFound.
absl::StatusOr<std::string> latest_checkpoint(const std::string& run_dir);

// Loads a checkpoint directory into the store and optimizer (shapes must match the
// config's) and returns its state. Every problem names the file and what to fix. Weights
// alone (optimizer null) load into any number of ranks with the same expert parallelism, or
// into one model holding every expert (layout.expert_parallel 1), which joins the
// experts-ep<i> shards in EP-rank order.
absl::StatusOr<CheckpointState> load_checkpoint(const std::string& dir, ParamStore& store,
                                                AdamW* optimizer,
                                                const CheckpointLayout& layout = {});

}  // namespace sy
