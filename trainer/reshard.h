#pragma once
// Reading a checkpoint into a layout other than the one that wrote it. A checkpoint written on
// W ranks with E experts over `ep` expert-parallel ranks (trainer/checkpoint.h) holds
//   model.safetensors             dense tensors (and every expert's rows when ep is 1)
//   experts-ep<i>.safetensors     global expert rows [i E/ep, (i+1) E/ep) of each stacked tensor
//   optimizer-rank<r>.safetensors the moments rank r updated: without ZeRO-1 every dense one and
//                                 the expert rows of its EP index r mod ep; with ZeRO-1 only the
//                                 parameters it owned (whole tensors: a dense one, or its EP
//                                 index's rows of a stacked one)
// so any tensor, or any run of expert rows, is found from the layout alone plus the files'
// headers (which say who owned what under ZeRO-1). A rank of the new layout reads only the
// rows it holds: its experts and the moments it updates.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/tensor.h"
#include "trainer/crc32c.h"
#include "trainer/safetensors.h"

namespace sy {

// The layout a checkpoint's manifest says wrote it.
struct SavedLayout {
  int world_size = 1;
  int expert_parallel = 1;
  int zero_stage = 0;
};

std::string experts_file_name(int ep_rank);
std::string optimizer_file_name(int rank);

// Part of a tensor's dim-0 rows in one file: global rows [first_row, first_row + rows) are
// the file's rows [0, rows).
struct RowPiece {
  std::string file;
  int64_t first_row = 0;
  int64_t rows = 0;
};

// The files of one checkpoint directory, each opened (header only) on first use. When the
// manifest lists checksums, a file's size and CRC-32C are checked before its first tensor is
// read, so a flipped byte is an error naming the file, not a silently different weight.
class CheckpointFiles {
 public:
  // checksums: by file name; null for a checkpoint written before checksums existed, whose
  // files load unchecked (it still loads, as it did).
  CheckpointFiles(std::string dir, const std::map<std::string, FileChecksum>* checksums);

  const std::string& dir() const { return dir_; }
  std::string path(const std::string& file) const;
  // The file's header; NotFound (naming the file) when it is missing.
  absl::StatusOr<const SafetensorsReader*> open(const std::string& file);
  // Global rows [begin, end) of stacked tensor `name`, from the pieces that cover them (a
  // tensor without stacking is one piece of all its rows). Rows must be covered; shapes past
  // dim 0 must agree between pieces. Refuses a NaN or infinity, naming the tensor and file.
  absl::StatusOr<Tensor> read_rows(const std::string& name, const std::vector<RowPiece>& pieces,
                                   int64_t begin, int64_t end);
  // A whole tensor of one file, with the same checks.
  absl::StatusOr<Tensor> read(const std::string& file, const std::string& name);

 private:
  absl::Status verify(const std::string& file);
  std::string dir_;
  const std::map<std::string, FileChecksum>* checksums_;
  std::map<std::string, std::unique_ptr<SafetensorsReader>> open_;
  std::map<std::string, bool> verified_;
};

// OK iff every element of t (f32 or bf16) is finite; otherwise names the tensor, the file and
// the first bad element.
absl::Status require_finite(const Tensor& t, const std::string& name, const std::string& file);

// Where global expert rows [begin, end) of the weights are: in model.safetensors when the
// checkpoint has no expert parallelism, else in the experts-ep<i> shards that overlap them.
std::vector<RowPiece> expert_weight_pieces(const SavedLayout& saved, int64_t num_experts,
                                           int64_t begin, int64_t end);

// The saved ranks whose optimizer shard may hold moments of global expert rows of EP index
// `ep_index` (all ranks with that index), with `prefer` first when it is one of them: a rank
// resuming in the layout that wrote the checkpoint reads only its own shard.
std::vector<int> saved_ranks_of_ep_index(const SavedLayout& saved, int ep_index, int prefer);

// The shard loader's position for `world` data-parallel ranks from one saved by
// `saved_world` ranks. Rank r of R takes entries r, r+R, ... of each epoch's window order, so
// `index` windows on each of R ranks is the first index * R entries of the global order; the
// same place for R' ranks is index * R / R', which must be whole (otherwise the global batch
// order cannot continue where it stopped, and the error says which world sizes can).
absl::StatusOr<int64_t> shard_index_for_world(int64_t index, int saved_world, int world,
                                              const std::string& manifest_path);

}  // namespace sy
