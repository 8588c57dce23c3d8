#pragma once
// Verifiable-reward tasks for RL fine-tuning: each task makes prompts and scores a policy's
// completions exactly, with no learned reward model.
//
// A task is a pure function of (seed, split, index), like the pretraining task of
// trainer/arithmetic.h: any rank can make any prompt without coordination, a rollout batch
// is named by its first index, and the held-out split (for the accuracy metric) never
// overlaps the training split.
//
// Reward of one completion:
//     reward = (correct ? 1 : 0) + format_weight * (format_ok ? 1 : 0)
// A correct completion is always well-formed, so rewards take the values 0 (malformed),
// format_weight (well-formed but wrong) and 1 + format_weight (correct). The format term
// gives a policy that has not yet found right answers a gradient towards answers that can
// be checked at all; it is off by default.
//
// Completions are judged up to and including their first '\n' (kEndOfAnswer, the stop
// token of the rollout); anything after it is ignored, and a completion without one (cut
// off at the max-token limit) is neither correct nor well-formed.
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "trainer/arithmetic.h"
#include "trainer/json.h"

namespace sy {

// One prompt of a task. `fields` is a JSON object with what a scorer needs besides the
// prompt text (e.g. the expected answer). Built-in tasks read their own fields back in
// score(); the external reward command (rl/reward_command.h) receives them merged into each
// request line, so the keys "prompt" and "completion" are reserved.
struct Prompt {
  std::string text;
  Json fields = Json::Object{};
};

struct Score {
  double reward = 0.0;
  bool correct = false;
  bool format_ok = false;
};

struct RewardOptions {
  // Weight of the format term (e.g. 0.1); 0 turns it off. Must be finite and >= 0.
  double format_weight = 0.0;
};

absl::Status validate_reward_options(const RewardOptions& options);

// reward = correct + format_weight * format_ok (see the file comment).
Score make_score(bool correct, bool format_ok, const RewardOptions& options);

class RewardTask {
 public:
  virtual ~RewardTask() = default;

  // Short stable name for logs and metrics ("arithmetic", "countdown").
  virtual std::string_view name() const = 0;

  // Prompt number `index` of `split`: the same (seed, split, index) always gives the same
  // prompt.
  virtual Prompt sample(uint64_t index, Split split) const = 0;

  // Scores one completion of a prompt this task made. Never fails: any bytes are a valid
  // (possibly zero-reward) completion.
  virtual Score score(const Prompt& prompt, std::string_view completion) const = 0;

  // Tokens (bytes) in the longest prompt, and in the longest completion a correct answer
  // needs, its final '\n' included: what generation must fit in the context. A rollout may
  // allow more new tokens than this, never fewer.
  virtual int64_t max_prompt_tokens() const = 0;
  virtual int64_t max_completion_tokens() const = 0;
};

// The pretraining arithmetic task as an RL task: the same prompts and held-out split as
// ArithmeticTask with the same options and seed, so RL can pick up a checkpoint of the
// default run and push it to a harder setting (more digits, '*'). Fields: {"answer": "522"}
// (without the '\n').
//
// Well-formed: an optional '-' then one or more digits, then '\n'. Correct: check_answer.
class ArithmeticRewardTask final : public RewardTask {
 public:
  static absl::StatusOr<ArithmeticRewardTask> create(const ArithmeticOptions& options,
                                                     uint64_t seed,
                                                     const RewardOptions& reward = {});

  std::string_view name() const override { return "arithmetic"; }
  Prompt sample(uint64_t index, Split split) const override;
  Score score(const Prompt& prompt, std::string_view completion) const override;
  int64_t max_prompt_tokens() const override;
  int64_t max_completion_tokens() const override;

  const ArithmeticTask& task() const { return task_; }

 private:
  ArithmeticRewardTask(ArithmeticTask task, const RewardOptions& reward)
      : task_(std::move(task)), reward_(reward) {}

  ArithmeticTask task_;
  RewardOptions reward_;
};

// True iff `completion` up to its first '\n' is an optional '-' and one or more digits.
bool is_integer_answer(std::string_view completion);

}  // namespace sy
