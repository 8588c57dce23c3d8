#include "trainer/reshard.h"

#include <cmath>
#include <filesystem>
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "trainer/regular_file.h"
#include "trainer/stop.h"

namespace sy {
namespace fs = std::filesystem;
namespace {

absl::Status file_error(const std::string& path, absl::string_view what) {
  return absl::DataLossError(absl::StrCat("checkpoint ", path, ": ", what));
}

}  // namespace

std::string experts_file_name(int ep_rank) {
  return absl::StrCat("experts-ep", ep_rank, ".safetensors");
}
std::string optimizer_file_name(int rank) {
  return absl::StrCat("optimizer-rank", rank, ".safetensors");
}

CheckpointFiles::CheckpointFiles(std::string dir,
                                 const std::map<std::string, FileChecksum>* checksums)
    : dir_(std::move(dir)), checksums_(checksums) {}

std::string CheckpointFiles::path(const std::string& file) const {
  return (fs::path(dir_) / file).string();
}

absl::StatusOr<const SafetensorsReader*> CheckpointFiles::open(const std::string& file) {
  auto it = open_.find(file);
  if (it != open_.end()) return it->second.get();
  const std::string p = path(file);
  std::error_code ec;
  if (!fs::exists(p, ec)) {
    return absl::NotFoundError(
        absl::StrCat("checkpoint ", dir_, ": ", file,
                     " is missing (the manifest's layout says it was written); copy the whole "
                     "checkpoint directory"));
  }
  if (checksums_ && !checksums_->count(file)) {
    return file_error(p,
                      "is not listed in the manifest's \"files\"; the directory mixes files "
                      "of different checkpoints");
  }
  auto reader = SafetensorsReader::open(p);
  if (!reader.ok()) return file_error(p, reader.status().message());
  auto owned = std::make_unique<SafetensorsReader>(std::move(*reader));
  const SafetensorsReader* raw = owned.get();
  open_.emplace(file, std::move(owned));
  return raw;
}

absl::Status CheckpointFiles::verify(const std::string& file) {
  if (!checksums_ || verified_[file]) return absl::OkStatus();
  const std::string p = path(file);
  SY_RETURN_IF_ERROR(require_regular_file(p, "checkpoint file"));
  SY_RETURN_IF_ERROR(check_stop(absl::StrCat("verifying ", p)));
  const FileChecksum& want = checksums_->at(file);
  SY_ASSIGN_OR_RETURN(FileChecksum have, checksum_file(p));
  if (have.bytes != want.bytes) {
    return file_error(p, absl::StrCat("has ", have.bytes, " bytes, the manifest says ", want.bytes,
                                      " (truncated or replaced); resume from another checkpoint"));
  }
  if (have.crc32c != want.crc32c) {
    return file_error(p, absl::StrFormat("CRC-32C is %08x, the manifest says %08x: the file is "
                                         "damaged; resume from another checkpoint",
                                         have.crc32c, want.crc32c));
  }
  verified_[file] = true;
  return absl::OkStatus();
}

absl::Status require_finite(const Tensor& t, const std::string& name, const std::string& file) {
  if (t.dtype() != DType::kF32 && t.dtype() != DType::kBF16) return absl::OkStatus();
  const Tensor f = t.dtype() == DType::kF32 ? t : t.to(DType::kF32);
  const float* v = f.data<float>();
  for (int64_t i = 0; i < f.numel(); ++i) {
    if (!std::isfinite(v[i])) {
      return file_error(file, absl::StrCat("tensor '", name, "' holds ", v[i], " at element ", i,
                                           "; a checkpoint of a diverged run cannot be used: "
                                           "load an earlier one"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Tensor> CheckpointFiles::read(const std::string& file, const std::string& name) {
  SY_ASSIGN_OR_RETURN(const SafetensorsReader* reader, open(file));
  if (!reader->contains(name))
    return file_error(path(file), absl::StrCat("has no tensor '", name, "'"));
  SY_RETURN_IF_ERROR(verify(file));
  auto t = reader->read(name);
  if (!t.ok()) return file_error(path(file), t.status().message());
  SY_RETURN_IF_ERROR(require_finite(*t, name, path(file)));
  return std::move(*t);
}

absl::StatusOr<Tensor> CheckpointFiles::read_rows(const std::string& name,
                                                  const std::vector<RowPiece>& pieces,
                                                  int64_t begin, int64_t end) {
  Tensor out;
  int64_t row = begin;
  for (const RowPiece& piece : pieces) {
    const int64_t lo = std::max(begin, piece.first_row);
    const int64_t hi = std::min(end, piece.first_row + piece.rows);
    if (lo >= hi) continue;
    SY_ASSIGN_OR_RETURN(const SafetensorsReader* reader, open(piece.file));
    const std::string p = path(piece.file);
    if (!reader->contains(name)) return file_error(p, absl::StrCat("has no tensor '", name, "'"));
    const Shape& shape = reader->shape(name);
    if (shape.empty() || shape[0] != piece.rows) {
      return file_error(p, absl::StrCat("tensor '", name, "' has shape ", shape_str(shape),
                                        "; its layout gives it ", piece.rows, " rows"));
    }
    SY_CHECK(lo == row) << "pieces of " << name << " out of order";
    SY_RETURN_IF_ERROR(verify(piece.file));
    auto part = reader->read_rows(name, lo - piece.first_row, hi - piece.first_row);
    if (!part.ok()) return file_error(p, part.status().message());
    SY_RETURN_IF_ERROR(require_finite(*part, name, p));
    if (lo == begin && hi == end) return std::move(*part);  // one piece: no copy
    if (!out.defined()) {
      Shape all = part->shape();
      all[0] = end - begin;
      out = Tensor::empty(all, part->dtype());
    }
    Shape want = out.shape();
    want[0] = hi - lo;
    if (part->shape() != want || part->dtype() != out.dtype()) {
      return file_error(p, absl::StrCat("tensor '", name, "' has shape ", shape_str(shape),
                                        ", unlike the same tensor in ", pieces.front().file));
    }
    out.rows(lo - begin, hi - begin).copy_from(*part);
    row = hi;
  }
  if (row != end) {
    return file_error(dir_,
                      absl::StrCat("no file holds rows [", row, ", ", end, ") of '", name, "'"));
  }
  return out;
}

std::vector<RowPiece> expert_weight_pieces(const SavedLayout& saved, int64_t num_experts,
                                           int64_t begin, int64_t end) {
  if (saved.expert_parallel == 1) return {{"model.safetensors", 0, num_experts}};
  const int64_t per = num_experts / saved.expert_parallel;
  std::vector<RowPiece> pieces;
  for (int i = 0; i < saved.expert_parallel; ++i) {
    if (i * per < end && begin < (i + 1) * per)
      pieces.push_back({experts_file_name(i), i * per, per});
  }
  return pieces;
}

std::vector<int> saved_ranks_of_ep_index(const SavedLayout& saved, int ep_index, int prefer) {
  std::vector<int> ranks;
  if (prefer >= 0 && prefer < saved.world_size && prefer % saved.expert_parallel == ep_index)
    ranks.push_back(prefer);
  for (int r = ep_index; r < saved.world_size; r += saved.expert_parallel)
    if (r != prefer) ranks.push_back(r);
  return ranks;
}

absl::StatusOr<int64_t> shard_index_for_world(int64_t index, int saved_world, int world,
                                              const std::string& manifest_path) {
  if (saved_world == world) return index;
  const int64_t taken = index * saved_world;
  if (taken % world != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", manifest_path, ": its data position is ", index, " windows on each of ",
        saved_world, " ranks (", taken, " of this epoch's window order), which ", world,
        " ranks cannot split evenly, so the global batch order would not continue where it "
        "stopped; resume on a number of ranks that divides ",
        taken, " (e.g. the world size that wrote it, ", saved_world, ")"));
  }
  return taken / world;
}

}  // namespace sy
