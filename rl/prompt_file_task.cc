#include "rl/prompt_file_task.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "rl/math_answer.h"
#include "trainer/data/jsonl.h"

namespace sy {

absl::StatusOr<std::vector<MathPromptFileTask::Row>> MathPromptFileTask::read(
    const std::string& path, const PromptFileOptions& options) {
  std::vector<Row> rows;
  SY_RETURN_IF_ERROR(
      for_each_jsonl_object(path, [&](int64_t line, const Json& obj) -> absl::Status {
        Row row;
        SY_ASSIGN_OR_RETURN(row.prompt, jsonl_string_field(obj, options.prompt_field, path, line));
        SY_ASSIGN_OR_RETURN(std::string solution,
                            jsonl_string_field(obj, options.answer_field, path, line));
        std::optional<std::string> answer = reference_answer(solution);
        if (!answer)
          return absl::InvalidArgumentError(absl::StrCat(
              path, ":", line, ": field \"", options.answer_field, "\" has no final answer (\"",
              solution.substr(0, 80), "\"): give a number, \"#### <answer>\" or \\boxed{...}"));
        row.answer = std::move(*answer);
        rows.push_back(std::move(row));
        return absl::OkStatus();
      }));
  return rows;
}

absl::StatusOr<std::unique_ptr<MathPromptFileTask>> MathPromptFileTask::create(
    const PromptFileOptions& options, const RewardOptions& reward) {
  SY_RETURN_IF_ERROR(validate_reward_options(reward));
  if (options.train_file.empty())
    return absl::InvalidArgumentError(
        "rl.prompt_file.train_file: is empty; name a JSONL file of prompts and answers");
  if (options.max_completion_tokens <= 0)
    return absl::InvalidArgumentError("rl.max_new_tokens: must be > 0 for a prompt-file task");
  std::unique_ptr<MathPromptFileTask> task(new MathPromptFileTask());
  task->options_ = options;
  task->reward_ = reward;
  SY_ASSIGN_OR_RETURN(task->train_, read(options.train_file, options));
  if (task->train_.empty())
    return absl::InvalidArgumentError(absl::StrCat(options.train_file, ": has no prompts"));
  if (!options.eval_file.empty()) {
    SY_ASSIGN_OR_RETURN(task->eval_, read(options.eval_file, options));
    if (task->eval_.empty())
      return absl::InvalidArgumentError(absl::StrCat(options.eval_file, ": has no prompts"));
  }
  task->order_.resize(task->train_.size());
  std::iota(task->order_.begin(), task->order_.end(), 0u);
  std::mt19937_64 rng(options.seed ^ 0x70726f6d70747366ull);  // "promptsf"
  std::shuffle(task->order_.begin(), task->order_.end(), rng);
  for (const auto* rows : {&task->train_, &task->eval_})
    for (const Row& r : *rows)
      task->max_prompt_bytes_ = std::max<int64_t>(task->max_prompt_bytes_, r.prompt.size());
  return task;
}

Prompt MathPromptFileTask::sample(uint64_t index, Split split) const {
  const Row* row;
  if (split == Split::kTrain) {
    row = &train_[order_[index % order_.size()]];
  } else {
    SY_CHECK(!eval_.empty()) << "math: held-out prompt " << index
                             << " asked for, but no eval_file was given";
    row = &eval_[index % eval_.size()];
  }
  Prompt p;
  p.text = row->prompt;
  p.fields.set("answer", row->answer);
  return p;
}

Score MathPromptFileTask::score(const Prompt& prompt, std::string_view completion) const {
  const Json* answer = prompt.fields.is_object() ? prompt.fields.find("answer") : nullptr;
  SY_CHECK(answer != nullptr && answer->is_string())
      << "math: prompt has no \"answer\" field: not made by MathPromptFileTask::sample";
  std::optional<std::string> given = extract_final_answer(completion);
  bool correct = given && answers_match(*given, answer->as_string());
  return make_score(correct, given.has_value(), reward_);
}

}  // namespace sy
