#pragma once
// The tokenizer a run uses, whatever its kind: the byte tokenizer (trainer/tokenizer.h, the
// default for generated tasks and for models trained here from scratch) or a Hugging Face
// byte-level BPE read from tokenizer.json (trainer/data/bpe_tokenizer.h). Everything that turns
// text into ids or back (rollouts, eval, `generate`, `score`, `data`) goes through this
// interface so that an imported model is fed exactly the ids it was trained on.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sy {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // "bytes" or "bpe": for log lines and error messages.
  virtual std::string kind() const = 0;
  // One past the largest id encode can return (added tokens included); a model's vocabulary
  // must be at least this large.
  virtual int64_t vocab_size() const = 0;

  // Text to ids. add_special_tokens applies the post-processor (e.g. Llama-3's BOS), as
  // `tokenizers`' encode(text, add_special_tokens=True) does; special tokens spelled inside
  // the text are matched either way.
  virtual absl::StatusOr<std::vector<int32_t>> encode(std::string_view text,
                                                      bool add_special_tokens = false) const = 0;
  // Ids to text. An id outside the vocabulary is an error naming its position. Byte-level
  // pieces that do not form valid UTF-8 come back as U+FFFD, as `tokenizers` does.
  virtual absl::StatusOr<std::string> decode(std::span<const int32_t> ids,
                                             bool skip_special_tokens = false) const = 0;

  // The ids that end a completion: generation_config.json's eos_token_id (an int or a list),
  // else tokenizer_config.json's eos_token; '\n' for the byte tokenizer, which is where the
  // generated tasks end an answer.
  virtual const std::vector<int32_t>& eos_ids() const = 0;
  // The id of one token spelled as in the vocabulary (for BPE, the byte-level form, e.g.
  // "Ġthe"; an added token by its content), or nullopt.
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
};

// The byte tokenizer behind the interface: ids are bytes, eos is '\n'.
std::unique_ptr<Tokenizer> make_byte_tokenizer();

// The tokenizer of a run or Hugging Face directory: <dir>/tokenizer.json present -> BPE (with
// <dir>/tokenizer_config.json and <dir>/generation_config.json read for eos when present),
// else the byte tokenizer. A directory that does not exist is an error.
absl::StatusOr<std::unique_ptr<Tokenizer>> load_tokenizer(const std::string& dir);

}  // namespace sy
