#pragma once
// Checkpoints: RUN_DIR/checkpoints/step_NNNNNNNN/ holds
//   model.safetensors             dense parameters (fp32 master weights, routing bias), and
//                                 the experts too when there is no expert parallelism
//   experts-ep<i>.safetensors     with expert parallelism: the experts of EP rank i, written
//                                 by world rank i (the first rank holding them)
//   optimizer-rank<r>.safetensors the AdamW moments rank r updates (its ZeRO-1 shard)
//   manifest.json                 step, optimizer steps, data position, seed, the layout, and
//                                 each file's size and CRC-32C ("files")
// Every rank writes its own files; rank 0 writes the rest. Any layout reads any other's
// (trainer/reshard.h says where each tensor is).
// A checkpoint is written into a temporary directory and renamed into place, then
// RUN_DIR/checkpoints/latest (one line: the directory name) is replaced atomically, so a
// crash mid-write never leaves a half checkpoint that resume would pick up.
#include <cstdint>
#include <ostream>
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

// Which ranks share a checkpoint, and how: what a save writes, and what a load reads into.
struct CheckpointLayout {
  Communicator* world = nullptr;  // null: one process, whose model holds every expert
  int expert_parallel = 1;
  int zero_stage = 0;
};

// Collective over layout.world: every rank returns the same status. `progress` (the lead
// rank's console, null for none) gets trainer/progress.h's line while this rank's files are
// written and a summary of the checkpoint's bytes at the end.
absl::Status save_checkpoint(const std::string& run_dir, const CheckpointState& state,
                             const ParamStore& store, const AdamW& optimizer, int keep_last,
                             const CheckpointLayout& layout = {}, std::ostream* progress = nullptr);

// A step-0 checkpoint of weights alone, one process, no optimizer state: what an imported
// model starts from (generate, rl.init_checkpoint and init load it; a resume does not).
absl::Status save_weights_checkpoint(const std::string& run_dir, const ParamStore& store,
                                     std::ostream* progress = nullptr);

// The newest checkpoint directory of a run (via `latest`), or NotFound.
absl::StatusOr<std::string> latest_checkpoint(const std::string& run_dir);

// Loads a checkpoint directory into the store and optimizer (shapes must match the config's)
// and returns its state, whatever layout wrote it: each rank reads only the tensors it holds
// (its experts' rows, the moments it updates) from whichever files hold them, so a run saved
// at one (data, expert) parallel layout, with or without ZeRO-1, resumes at another or in one
// process, with the same optimizer state. In the layout that wrote it every rank reads its
// own files, bit for bit. With an optimizer (a resume), state.data is this layout's: the
// token-shard position is converted to this world size, or refused when the global window
// order cannot continue there. The manifest is checked field by field, each file against its
// CRC-32C (checkpoints from before checksums load unchecked), and every tensor for NaN and
// infinity; each problem names the file, the field or tensor, and what to do. Collective over
// layout.world: every rank returns an error when any rank fails. `progress` (the lead rank's
// console, null for none) gets trainer/progress.h's line over the bytes this rank reads and
// a summary line once the load succeeded.
absl::StatusOr<CheckpointState> load_checkpoint(const std::string& dir, ParamStore& store,
                                                AdamW* optimizer,
                                                const CheckpointLayout& layout = {},
                                                std::ostream* progress = nullptr);

}  // namespace sy
