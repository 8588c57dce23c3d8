#pragma once
// Text or JSON Lines to token shards (trainer/token_shards.h, llm.c's .bin layout) with any
// tokenizer: what `switchyard data` runs.
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "trainer/data/tokenizer.h"

namespace sy {

struct TextDataOptions {
  // Files ending in .jsonl give one document per line (its `field`); any other file is one
  // document of plain text.
  std::vector<std::string> inputs;
  std::string output_dir;
  std::string field = "text";
  int64_t tokens_per_shard = 100'000'000;
  // The val split: the stream's tail, max(1%, min_val_tokens) tokens (see write_text_shards).
  int64_t min_val_tokens = 1025;
  // Appended after every document (e.g. "<|endoftext|>"'s id), or nothing.
  std::optional<int32_t> end_of_document;
  // Plain text is read and encoded about this many bytes at a time.
  int64_t piece_bytes = 1 << 20;
};

// Encodes the inputs in order (add_special_tokens=false: the documents are a stream, not
// prompts) and writes DIR/train_000000.bin, ... and DIR/val_000000.bin, .... A plain text file
// is encoded in pieces cut after a newline that a non-space character follows, a place where
// none of the byte-level pre-tokenizer patterns joins its two sides, so the ids equal those of
// the whole file at once. A line every few seconds on `progress` (when not null) on long
// inputs. A tokenizer with more than 65536 ids writes llm.c's wide layout (uint32 tokens).
absl::Status write_token_shards(const Tokenizer& tokenizer, const TextDataOptions& options,
                                std::ostream* progress);

}  // namespace sy
