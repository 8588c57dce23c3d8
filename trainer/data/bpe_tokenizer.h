#pragma once
// Hugging Face tokenizer.json, byte-level BPE (GPT-2, Llama-3, Qwen2/3): encodes and decodes as
// the Python `tokenizers` package does. Supported pieces, anything else being an error naming it:
//   normalizer     null, NFC (Qwen2), or a Sequence of those
//   pre_tokenizer  ByteLevel (add_prefix_space, use_regex with the GPT-2 pattern), Split
//                  (Regex pattern, behavior Isolated/Removed, invert false), or a Sequence of those
//   model          BPE with vocab, merges ("a b" strings or ["a", "b"] pairs), ignore_merges,
//                  byte_fallback false, no dropout
//   added_tokens   special or not, matched in the raw text before normalisation (or after, for
//                  normalized=true non-special ones) and kept whole; single_word / lstrip / rstrip
//   post_processor null, ByteLevel, TemplateProcessing (single sequence), or a Sequence
//   decoder        ByteLevel (or null)
// Regexes run on ICU, which knows the \p{L}/\p{N} classes and the (?!\S) lookahead.
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "trainer/data/tokenizer.h"

namespace sy {

// Reads <dir>/tokenizer.json, plus <dir>/generation_config.json / tokenizer_config.json for the
// eos ids when present. Errors name the file and the JSON path of the offending field.
absl::StatusOr<std::unique_ptr<Tokenizer>> load_bpe_tokenizer(const std::string& dir);

}  // namespace sy
