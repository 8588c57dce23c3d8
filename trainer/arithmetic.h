#pragma once
// The built-in generated task: integer arithmetic ("37+485=" -> "522\n"), byte-tokenized.
// It needs no data files, has an exactly checkable answer (a verifiable reward for RL), and
// is small enough for the tiny CPU config to learn in CI.
//
// Every problem is a pure function of (seed, split, index): a counter-based hash, not a
// stateful RNG, so the data position of a resumed run is just an index, and any rank can
// produce any problem without coordination.
//
// Train and held-out are disjoint by construction: a problem belongs to the held-out split
// iff a fixed hash of its prompt text falls in the lowest kHeldOutPercent of 100 buckets.
// The hash ignores the seed, so held-out problems stay held out across runs with different
// seeds (a checkpoint trained with one seed can be evaluated with another). Sampling for a
// split draws candidates and skips those of the other split.
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "trainer/tokenizer.h"

namespace sy {

enum class Split : uint8_t { kTrain, kHeldOut };
const char* split_name(Split split);

inline constexpr int kHeldOutPercent = 5;

struct ArithmeticOptions {
  // Each operand first draws a digit count uniformly in [min_digits, max_digits], then a
  // value uniformly among the numbers with that many digits (1 digit includes 0).
  int min_digits = 1;
  int max_digits = 3;
  // Drawn uniformly per problem from '+', '-', '*'. Subtraction may go negative; the answer
  // then starts with '-'.
  std::string operators = "+-";
};

struct Problem {
  std::string prompt;  // "37+485="
  std::string answer;  // "522\n": the text the model must produce, end-of-answer included
};

class ArithmeticTask {
 public:
  // Checks the options: 1 <= min_digits <= max_digits <= 9 (a product must fit int64),
  // operators a non-empty set of distinct characters from "+-*", and both splits non-empty
  // (a tiny problem space could otherwise leave the held-out split with nothing to sample).
  static absl::StatusOr<ArithmeticTask> create(const ArithmeticOptions& options, uint64_t seed);

  const ArithmeticOptions& options() const { return options_; }
  uint64_t seed() const { return seed_; }

  // Problem number `index` of `split`: the same (seed, split, index) always gives the same
  // problem.
  Problem sample(uint64_t index, Split split) const;

  // Which split a prompt belongs to (independent of seed and options).
  static Split split_of(std::string_view prompt);

  // Tokens in the longest possible prompt + answer under these options (what generation
  // must fit in the context).
  int64_t max_problem_tokens() const;
  // The shortest seq_len make_batch accepts: a row's inputs drop the last token.
  int64_t min_seq_len() const { return max_problem_tokens() - 1; }

  // A micro-batch of `batch_size` rows from problems first_index, first_index + 1, ... of
  // `split`. A row holds the tokens of prompt + answer, inputs = tokens[0..n-2] and
  // targets = tokens[1..n-1], with targets that predict a prompt token set to kIgnoreTarget
  // (loss only on the answer, its final '\n' included); the rest of the row is kPadId
  // inputs and kIgnoreTarget targets. seq_len < min_seq_len() is an error saying what
  // seq_len is needed. Data-parallel ranks take disjoint index ranges (e.g. first_index =
  // (step * world + rank) * batch_size).
  absl::StatusOr<TokenBatch> make_batch(int64_t batch_size, int64_t seq_len, uint64_t first_index,
                                        Split split) const;

 private:
  ArithmeticTask(const ArithmeticOptions& options, uint64_t seed)
      : options_(options), seed_(seed) {}
  // The attempt-th candidate drawn for (split, index), before the split filter.
  Problem candidate(uint64_t index, Split split, uint64_t attempt) const;

  ArithmeticOptions options_;
  uint64_t seed_;
};

// Builds the problem a + op + b with its correct answer.
Problem make_problem(int64_t a, char op, int64_t b);

// True iff `generated` up to and including its first '\n' is exactly the answer (text
// after that newline is ignored; no newline at all is wrong).
bool check_answer(const Problem& problem, std::string_view generated);

}  // namespace sy
