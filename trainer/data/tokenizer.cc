#include "trainer/data/tokenizer.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "trainer/data/bpe_tokenizer.h"
#include "trainer/tokenizer.h"

namespace sy {
namespace {

class BytesTokenizer final : public Tokenizer {
 public:
  std::string kind() const override { return "bytes"; }
  int64_t vocab_size() const override { return kByteVocabSize; }
  absl::StatusOr<std::vector<int32_t>> encode(std::string_view text,
                                              bool /*add_special_tokens*/) const override {
    return ByteTokenizer::encode(text);
  }
  absl::StatusOr<std::string> decode(std::span<const int32_t> ids,
                                     bool /*skip_special_tokens*/) const override {
    return ByteTokenizer::decode(ids);
  }
  const std::vector<int32_t>& eos_ids() const override { return eos_; }
  std::optional<int32_t> token_to_id(std::string_view token) const override {
    if (token.size() != 1) return std::nullopt;
    return static_cast<unsigned char>(token[0]);
  }

 private:
  std::vector<int32_t> eos_{kEndOfAnswerId};
};

}  // namespace

std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<BytesTokenizer>(); }

absl::StatusOr<std::unique_ptr<Tokenizer>> load_tokenizer(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    return absl::NotFoundError(absl::StrCat("tokenizer: ", dir,
                                            " is not a directory; name a run directory or a "
                                            "Hugging Face model directory"));
  if (std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json", ec))
    return load_bpe_tokenizer(dir);
  return make_byte_tokenizer();
}

}  // namespace sy
