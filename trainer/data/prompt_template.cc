#include "trainer/data/prompt_template.h"

#include "absl/strings/str_cat.h"

namespace sy {

absl::StatusOr<PromptTemplate> PromptTemplate::parse(const std::string& text,
                                                     const std::string& where) {
  static constexpr std::string_view kSlot = "{prompt}";
  const size_t slot = text.find(kSlot);
  if (slot == std::string::npos)
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"", text,
                     "\" has no {prompt}; write where the prompt goes, e.g. \"Q: {prompt}\\nA:\""));
  if (text.find(kSlot, slot + 1) != std::string::npos)
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"", text, "\" has {prompt} more than once; give it once"));
  PromptTemplate t;
  t.prefix_ = text.substr(0, slot);
  t.suffix_ = text.substr(slot + kSlot.size());
  return t;
}

std::string PromptTemplate::apply(std::string_view prompt) const {
  return absl::StrCat(prefix_, std::string(prompt), suffix_);
}

}  // namespace sy
