#include "trainer/tokenizer.h"

#include "absl/strings/str_cat.h"

namespace sy {

std::vector<int32_t> ByteTokenizer::encode(std::string_view text) {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

absl::StatusOr<std::string> ByteTokenizer::decode(std::span<const int32_t> ids) {
  std::string text(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= kByteVocabSize)
      return absl::InvalidArgumentError(absl::StrCat("token ", ids[i], " at position ", i,
                                                     " is not a byte (0..255); the byte "
                                                     "tokenizer cannot decode it"));
    text[i] = static_cast<char>(ids[i]);
  }
  return text;
}

}  // namespace sy
