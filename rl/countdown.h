#pragma once
// Countdown: reach a target with given numbers and + - * /. "3 4 7 25>58=" asks for an
// expression such as "(25-7)*3+4\n".
//
// Generation. A problem draws 3..4 numbers (min_count..max_count) uniformly from
// min_number..max_number, then combines them, two at a time, with a random allowed operator
// until one value is left: that value is the target, so every target is reachable by
// construction (CountdownProblem::solution is the construction). Intermediate values stay
// positive integers (a-b only when a > b, a/b only when b divides a). Candidates whose
// target lies outside min_target..max_target, or equals one of the numbers (a non-problem
// when numbers may go unused), are redrawn. Like trainer/arithmetic.h, a problem is a pure
// function of (seed, split, index) through a counter-based hash, and the split is a hash of
// the prompt text (ArithmeticTask::split_of, the same 5% rule). The prompt lists the numbers
// in ascending order, so a held-out problem cannot reappear in training reordered.
//
// Answers. The completion is an expression followed by '\n' (text after the first '\n' is
// ignored):
//     expr   := term (('+' | '-') term)*
//     term   := factor (('*' | '/') factor)*
//     factor := number | '(' expr ')'
//     number := '0' | [1-9][0-9]{0,8}          (no sign, no leading zeros)
// with optional spaces between tokens and parentheses nested at most kMaxCountdownDepth deep.
// There is no unary minus. Evaluation is exact, over rationals: intermediate fractions are
// allowed (8/(3-8/3) = 24, as in the 24 game), division by zero and results beyond int64
// make the expression invalid. Each given number may be used at most once (a number given
// twice may be used twice); with use_all_numbers every given number must be used exactly
// once. Correct iff well-formed, the numbers are allowed, the arithmetic is valid and the
// value equals the target. Well-formed (the format reward) means the grammar above is
// matched and the '\n' is present; the numbers and value do not matter.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "rl/tasks.h"

namespace sy {

inline constexpr int kMaxCountdownDepth = 32;

struct CountdownOptions {
  // How many numbers a problem gives: uniform in [min_count, max_count], 2..6.
  int min_count = 3;
  int max_count = 4;
  // Each number uniform in [min_number, max_number], 1..1000.
  int64_t min_number = 1;
  int64_t max_number = 25;
  // Targets outside [min_target, max_target] are redrawn (1 <= min_target <= max_target).
  int64_t min_target = 1;
  int64_t max_target = 999;
  // Distinct characters from "+-*/": the operators the generator combines with. Answers may
  // use all four whatever this says.
  std::string operators = "+-*/";
  // false: each number at most once; true: each exactly once.
  bool use_all_numbers = false;
};

struct CountdownProblem {
  std::vector<int64_t> numbers;  // ascending, as in the prompt
  int64_t target = 0;
  std::string solution;  // the construction: uses every number once and equals target
  std::string prompt;    // "3 4 7 25>58="
};

// An exact fraction in lowest terms, den > 0.
struct Rational {
  int64_t num = 0;
  int64_t den = 1;
  bool operator==(const Rational&) const = default;
};

struct CountdownExpression {
  std::vector<int64_t> numbers;   // the number literals, in order of appearance
  std::optional<Rational> value;  // nullopt when the arithmetic is invalid
  std::string arithmetic_error;   // why, when value is nullopt ("division by zero", ...)
};

// Parses and evaluates one expression (the whole of `text`, no '\n'). A syntax error is an
// InvalidArgument status naming the byte offset; invalid arithmetic is not an error here
// (the expression is well-formed) but an empty value.
absl::StatusOr<CountdownExpression> parse_countdown_expression(std::string_view text);

// Why a completion is or is not correct, in the order the checks run.
enum class CountdownVerdict : uint8_t {
  kCorrect,
  kNoEndOfAnswer,      // no '\n'
  kSyntaxError,        // not an expression of the grammar
  kNumberNotGiven,     // a literal that is not among the numbers
  kNumberReused,       // a number used more often than given
  kNumberUnused,       // use_all_numbers, and some number is not used
  kInvalidArithmetic,  // division by zero, overflow
  kWrongValue,         // evaluates, but not to the target
};
const char* verdict_name(CountdownVerdict verdict);
// Well-formed: every verdict after kSyntaxError.
inline bool is_well_formed(CountdownVerdict v) {
  return v != CountdownVerdict::kNoEndOfAnswer && v != CountdownVerdict::kSyntaxError;
}

CountdownVerdict judge_countdown(std::span<const int64_t> numbers, int64_t target,
                                 std::string_view completion, bool use_all_numbers);

// "3 4 7 25>58=" (numbers printed in the order given).
std::string countdown_prompt(std::span<const int64_t> numbers, int64_t target);

// Fields: {"numbers": [3, 4, 7, 25], "target": 58}.
class CountdownTask final : public RewardTask {
 public:
  // Checks the ranges above, and that both splits can be sampled (a narrow target range
  // could make that impossible).
  static absl::StatusOr<CountdownTask> create(const CountdownOptions& options, uint64_t seed,
                                              const RewardOptions& reward = {});

  const CountdownOptions& options() const { return options_; }

  // The problem behind sample(index, split), with the generator's solution.
  CountdownProblem problem(uint64_t index, Split split) const;

  std::string_view name() const override { return "countdown"; }
  Prompt sample(uint64_t index, Split split) const override;
  Score score(const Prompt& prompt, std::string_view completion) const override;
  int64_t max_prompt_tokens() const override;
  int64_t max_completion_tokens() const override;

  // The verdict behind score(), for metrics and debugging.
  CountdownVerdict judge(const Prompt& prompt, std::string_view completion) const;

 private:
  CountdownTask(const CountdownOptions& options, uint64_t seed, const RewardOptions& reward)
      : options_(options), seed_(seed), reward_(reward) {}
  // The attempt-th candidate for (split, index) before the range and split filters, or
  // nullopt when the drawn operators could not combine the drawn numbers.
  std::optional<CountdownProblem> candidate(uint64_t index, Split split, uint64_t attempt) const;
  bool acceptable(const CountdownProblem& p, Split split) const;

  CountdownOptions options_;
  uint64_t seed_;
  RewardOptions reward_;
};

}  // namespace sy
