#pragma once
// A prompt template: how a task's or a user's prompt is shown to a model, "{prompt}" standing
// for the prompt's text, e.g. "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
// for a chat model. Used wherever prompts are encoded: RL rollouts and evaluation
// (rl.prompt_template) and `generate --prompt_template`.
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace sy {

class PromptTemplate {
 public:
  // "{prompt}" alone: the prompt as it is.
  PromptTemplate() = default;
  // `text` must hold "{prompt}" exactly once; `where` names the setting in the error.
  static absl::StatusOr<PromptTemplate> parse(const std::string& text, const std::string& where);

  std::string apply(std::string_view prompt) const;

 private:
  std::string prefix_, suffix_;
};

}  // namespace sy
