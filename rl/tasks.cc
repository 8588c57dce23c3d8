#include "rl/tasks.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace sy {

absl::Status validate_reward_options(const RewardOptions& options) {
  if (!std::isfinite(options.format_weight) || options.format_weight < 0)
    return absl::InvalidArgumentError(
        absl::StrCat("reward: format_weight must be finite and >= 0 (0 turns the format reward "
                     "off), got ",
                     options.format_weight));
  return absl::OkStatus();
}

Score make_score(bool correct, bool format_ok, const RewardOptions& options) {
  Score s;
  s.correct = correct;
  s.format_ok = format_ok;
  s.reward = (correct ? 1.0 : 0.0) + (format_ok ? options.format_weight : 0.0);
  return s;
}

bool is_integer_answer(std::string_view completion) {
  size_t end = completion.find(kEndOfAnswer);
  if (end == std::string_view::npos) return false;
  std::string_view body = completion.substr(0, end);
  if (!body.empty() && body.front() == '-') body.remove_prefix(1);
  if (body.empty()) return false;
  for (char c : body)
    if (c < '0' || c > '9') return false;
  return true;
}

absl::StatusOr<ArithmeticRewardTask> ArithmeticRewardTask::create(const ArithmeticOptions& options,
                                                                  uint64_t seed,
                                                                  const RewardOptions& reward) {
  SY_RETURN_IF_ERROR(validate_reward_options(reward));
  SY_ASSIGN_OR_RETURN(ArithmeticTask task, ArithmeticTask::create(options, seed));
  return ArithmeticRewardTask(std::move(task), reward);
}

Prompt ArithmeticRewardTask::sample(uint64_t index, Split split) const {
  Problem p = task_.sample(index, split);
  std::string_view answer(p.answer);
  answer.remove_suffix(1);  // the '\n' belongs to the completion's format, not the value
  Prompt prompt;
  prompt.text = std::move(p.prompt);
  prompt.fields.set("answer", answer);
  return prompt;
}

Score ArithmeticRewardTask::score(const Prompt& prompt, std::string_view completion) const {
  const Json* answer = prompt.fields.is_object() ? prompt.fields.find("answer") : nullptr;
  SY_CHECK(answer != nullptr && answer->is_string())
      << "arithmetic: prompt '" << prompt.text << "' has no \"answer\" field: not made by "
      << "ArithmeticRewardTask::sample";
  Problem problem{prompt.text, absl::StrCat(answer->as_string(), std::string(1, kEndOfAnswer))};
  return make_score(check_answer(problem, completion), is_integer_answer(completion), reward_);
}

int64_t ArithmeticRewardTask::max_prompt_tokens() const {
  int64_t d = task_.options().max_digits;
  return d + 1 + d + 1;  // a op b =
}

int64_t ArithmeticRewardTask::max_completion_tokens() const {
  return task_.max_problem_tokens() - max_prompt_tokens();
}

}  // namespace sy
