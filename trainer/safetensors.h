#pragma once
// The safetensors checkpoint format (huggingface/safetensors), so checkpoints load in
// PyTorch / transformers without a converter:
//
//   u64 N (little-endian) | N bytes of JSON header | data
//
// The header maps each tensor name to {"dtype": "F32"|"BF16"|"I32"|"I64", "shape": [...],
// "data_offsets": [begin, end]} (byte offsets into data) plus an optional "__metadata__":
// {string: string}; it is padded with spaces to a multiple of 8 bytes. Data is raw
// little-endian, row-major.
//
// The reader is strict, like the reference implementation: the tensors' byte ranges must
// tile the data exactly (no gaps, no overlaps, nothing after the last tensor), because
// unaccounted bytes mean a writer bug or a damaged file, never something to skip.
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace sy {

struct SafetensorsFile {
  std::string path;
  std::map<std::string, Tensor> tensors;  // CPU tensors, by name
  std::map<std::string, std::string> metadata;
};

// Writes CPU tensors (names unique, not "__metadata__") in the given order, atomically.
absl::Status save_safetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata);

// A safetensors file opened for reading one tensor at a time: open() reads and checks the
// header as load_safetensors does (the data region too, without reading it); read() then
// reads one tensor's bytes. A rank that needs a few tensors of a large sharded checkpoint
// (its experts) reads only those. F16 tensors, which Tensor has no dtype for, are read as F32
// (exactly: every half value is a float).
class SafetensorsReader {
 public:
  struct Entry {
    std::string name;
    DType dtype;       // the tensor's dtype once read
    bool f16 = false;  // stored as F16 (2 bytes an element), read as F32
    Shape shape;
    uint64_t begin = 0, end = 0;  // data_offsets
  };
  static absl::StatusOr<SafetensorsReader> open(const std::string& path);
  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  // The tensor's shape and its dtype as stored ("F32", "BF16", "F16", ...); name must exist.
  const Shape& shape(const std::string& name) const;
  std::string stored_dtype(const std::string& name) const;
  absl::StatusOr<Tensor> read(const std::string& name) const;  // a CPU tensor
  // Rows [begin, end) along dim 0 of a tensor with at least one dimension: a rank that needs
  // a slice of a stacked expert tensor reads only those bytes.
  absl::StatusOr<Tensor> read_rows(const std::string& name, int64_t begin, int64_t end) const;

 private:
  const Entry& entry(const std::string& name) const;
  std::string path_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, Entry> entries_;
  uint64_t data_start_ = 0;
};

// Reads every tensor to CPU (F16 as F32). Errors name the file and say what is wrong: missing
// file, file shorter than 8 bytes, header length past the end of the file, header not valid
// JSON, an entry missing dtype / shape / data_offsets, an unsupported dtype, offsets out of
// range, gaps or overlaps between tensors, a byte size that is not shape x dtype size.
absl::StatusOr<SafetensorsFile> load_safetensors(const std::string& path);

// OK iff `file` holds `name` with this shape and dtype; otherwise says what differs, e.g.
// "checkpoint ckpt/model.safetensors: tensor 'layers.0.attn.wq' has shape [64, 32], the
// config expects [64, 64]".
absl::Status expect_tensor(const SafetensorsFile& file, const std::string& name, const Shape& shape,
                           DType dtype);

// Writes the concatenation of `pieces` to `path` so that `path` is always either absent,
// its old contents, or the whole new contents: write a temp file beside it, fsync, rename
// over `path`, fsync the directory. Shared by every checkpoint and data file writer.
absl::Status write_file_atomically(const std::string& path,
                                   std::span<const std::string_view> pieces);

}  // namespace sy
