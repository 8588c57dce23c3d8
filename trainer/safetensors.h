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

// Reads every tensor to CPU. Errors name the file and say what is wrong: missing file, file
// shorter than 8 bytes, header length past the end of the file, header not valid JSON, an
// entry missing dtype / shape / data_offsets, an unsupported dtype, offsets out of range,
// gaps or overlaps between tensors, a byte size that is not shape x dtype size.
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
