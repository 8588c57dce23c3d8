#pragma once
// The byte-level tokenizer: a token id is a byte value, so the vocabulary is 256 ids, every
// byte string round-trips, and no merge table has to travel with a checkpoint. The generated
// task data (trainer/arithmetic.h) uses it, and it is the default of the Tokenizer interface
// (trainer/data/tokenizer.h) behind which a Hugging Face tokenizer.json can stand instead.
// TokenBatch is the micro-batch the data sources hand to the training loop.
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace sy {

inline constexpr int32_t kByteVocabSize = 256;
// Padding: NUL never appears in text, so a pad can never be mistaken for data.
inline constexpr int32_t kPadId = 0;
// A generated answer ends at the first newline; generation stops there.
inline constexpr char kEndOfAnswer = '\n';
inline constexpr int32_t kEndOfAnswerId = '\n';
// Target value for positions that carry no loss (prompt tokens, padding); pass it as the
// ignore_index of the cross-entropy ops.
inline constexpr int32_t kIgnoreTarget = -1;

class ByteTokenizer {
 public:
  // One id (0..255) per byte.
  static std::vector<int32_t> encode(std::string_view text);
  // The bytes back. An id outside 0..255 (a model whose vocabulary is larger than 256 can
  // sample one) is an error naming its position and value rather than a silent substitute,
  // so a caller that wants to tolerate it decides how.
  static absl::StatusOr<std::string> decode(std::span<const int32_t> ids);
};

// A training micro-batch: inputs and targets are i32 [B, T] CPU tensors, targets holding
// kIgnoreTarget where no loss is taken; target_tokens counts the other targets (the loss
// normaliser).
struct TokenBatch {
  Tensor inputs;
  Tensor targets;
  int64_t target_tokens = 0;
};

}  // namespace sy
