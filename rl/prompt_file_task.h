#pragma once
// Math prompts from JSON Lines files, scored by the built-in math-answer verifier
// (rl/math_answer.h): a GSM8K-style prompt set brought by the user.
//
// Each line holds a prompt field and an answer field (names configurable, e.g. GSM8K's
// "question" / "answer"); the reference answer is extracted from the answer field as
// reference_answer() does (the text after "#### ", else its \boxed{} or last number). The
// training split walks the train file in a seeded order, pass after pass; the held-out
// split is the eval file in file order.
//
// Correct: the completion's final answer matches the reference. Well-formed: the completion
// has a final answer at all. Completions are judged whole (the rollout stops at the
// tokenizer's eos, which the decode for scoring drops).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rl/tasks.h"

namespace sy {

struct PromptFileOptions {
  std::string train_file;
  std::string eval_file;  // may be empty: then the held-out split has no prompts
  std::string prompt_field = "prompt";
  std::string answer_field = "answer";
  int64_t max_completion_tokens = 256;
  uint64_t seed = 0;
};

class MathPromptFileTask final : public RewardTask {
 public:
  static absl::StatusOr<std::unique_ptr<MathPromptFileTask>> create(
      const PromptFileOptions& options, const RewardOptions& reward = {});

  std::string_view name() const override { return "math"; }
  Prompt sample(uint64_t index, Split split) const override;
  Score score(const Prompt& prompt, std::string_view completion) const override;
  // In bytes: a bound on the tokens of any byte-level tokenizer.
  int64_t max_prompt_tokens() const override { return max_prompt_bytes_; }
  int64_t max_completion_tokens() const override { return options_.max_completion_tokens; }

  int64_t train_size() const { return static_cast<int64_t>(train_.size()); }
  int64_t eval_size() const { return static_cast<int64_t>(eval_.size()); }

 private:
  struct Row {
    std::string prompt, answer;
  };
  static absl::StatusOr<std::vector<Row>> read(const std::string& path,
                                               const PromptFileOptions& options);

  PromptFileOptions options_;
  RewardOptions reward_;
  std::vector<Row> train_, eval_;
  std::vector<uint32_t> order_;  // the seeded order of the train rows
  int64_t max_prompt_bytes_ = 0;
};

}  // namespace sy
