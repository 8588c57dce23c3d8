#include "trainer/arithmetic.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/hash.h"

namespace sy {

namespace {


int64_t pow10(int n) {
  int64_t p = 1;
  for (int i = 0; i < n; ++i) p *= 10;
  return p;
}

// Smallest and largest operand with `digits` digits (1 digit includes 0).
int64_t lowest(int digits) { return digits == 1 ? 0 : pow10(digits - 1); }
int64_t highest(int digits) { return pow10(digits) - 1; }

constexpr char kAllOperators[] = "+-*";
constexpr int kMaxDigits = 9;

}  // namespace

const char* split_name(Split split) { return split == Split::kTrain ? "train" : "held-out"; }

Problem make_problem(int64_t a, char op, int64_t b) {
  int64_t result = 0;
  switch (op) {
    case '+':
      result = a + b;
      break;
    case '-':
      result = a - b;
      break;
    case '*':
      result = a * b;
      break;
    default:
      SY_CHECK(false) << "unknown operator '" << op << "'";
  }
  return {absl::StrCat(a, std::string(1, op), b, "="), absl::StrCat(result, "\n")};
}

Split ArithmeticTask::split_of(std::string_view prompt) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over the bytes, then mixed
  for (char c : prompt) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return mix64(h) % 100 < static_cast<uint64_t>(kHeldOutPercent) ? Split::kHeldOut : Split::kTrain;
}

absl::StatusOr<ArithmeticTask> ArithmeticTask::create(const ArithmeticOptions& options,
                                                      uint64_t seed) {
  if (options.min_digits < 1)
    return absl::InvalidArgumentError(
        absl::StrCat("arithmetic: min_digits must be at least 1, got ", options.min_digits));
  if (options.max_digits < options.min_digits)
    return absl::InvalidArgumentError(absl::StrCat("arithmetic: max_digits (", options.max_digits,
                                                   ") must be at least min_digits (",
                                                   options.min_digits, ")"));
  if (options.max_digits > kMaxDigits)
    return absl::InvalidArgumentError(
        absl::StrCat("arithmetic: max_digits must be at most ", kMaxDigits,
                     " (a product of two operands must fit in int64), got ", options.max_digits));
  std::string sorted = options.operators;
  std::sort(sorted.begin(), sorted.end());
  bool distinct = std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end();
  bool known = std::all_of(sorted.begin(), sorted.end(), [](char c) {
    return std::string_view(kAllOperators).find(c) != std::string_view::npos;
  });
  if (sorted.empty() || !distinct || !known)
    return absl::InvalidArgumentError(
        absl::StrCat("arithmetic: operators must be distinct characters from \"", kAllOperators,
                     "\", got \"", options.operators, "\""));

  // Walk the problem space until both splits have a member. A large space finds both
  // within a few dozen problems; only a tiny one (1-digit operands, one operator: 100
  // problems) could leave a split empty, and then sampling from it would never return.
  bool seen[2] = {false, false};
  for (int64_t a = lowest(options.min_digits); a <= highest(options.max_digits); ++a) {
    for (int64_t b = lowest(options.min_digits); b <= highest(options.max_digits); ++b) {
      for (char op : options.operators)
        seen[static_cast<int>(split_of(make_problem(a, op, b).prompt))] = true;
      if (seen[0] && seen[1]) return ArithmeticTask(options, seed);
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "arithmetic: the problem space of ", options.min_digits, "..", options.max_digits,
      "-digit operands with operators \"", options.operators,
      "\" is too small to hold both a train and a held-out problem; allow more digits or "
      "operators"));
}

Problem ArithmeticTask::candidate(uint64_t index, Split split, uint64_t attempt) const {
  uint64_t key = mix64(seed_);
  key = mix64(key ^ index);
  key = mix64(key ^ static_cast<uint64_t>(split));
  key = mix64(key ^ attempt);
  HashDraws draws(key);
  int span = options_.max_digits - options_.min_digits + 1;
  auto operand = [&] {
    int digits = options_.min_digits + static_cast<int>(draws.below(span));
    int64_t lo = lowest(digits);
    return lo + static_cast<int64_t>(draws.below(highest(digits) - lo + 1));
  };
  int64_t a = operand();
  char op = options_.operators[draws.below(options_.operators.size())];
  int64_t b = operand();
  return make_problem(a, op, b);
}

Problem ArithmeticTask::sample(uint64_t index, Split split) const {
  // create() proved the split non-empty; with kHeldOutPercent of problems held out, a
  // held-out sample needs ~20 attempts on average.
  for (uint64_t attempt = 0;; ++attempt) {
    Problem p = candidate(index, split, attempt);
    if (split_of(p.prompt) == split) return p;
  }
}

int64_t ArithmeticTask::max_problem_tokens() const {
  int64_t d = options_.max_digits;
  int64_t answer_digits = 0;  // the longest result, sign included
  for (char op : options_.operators) {
    // a+b < 2*10^d: at most d+1 digits. a-b > -10^d: a sign and d digits. a*b < 10^(2d).
    answer_digits = std::max(answer_digits, op == '*' ? 2 * d : d + 1);
  }
  return d + 1 + d + 1 + answer_digits + 1;  // a op b = answer '\n'
}

absl::StatusOr<TokenBatch> ArithmeticTask::make_batch(int64_t batch_size, int64_t seq_len,
                                                      uint64_t first_index, Split split) const {
  SY_CHECK(batch_size > 0 && seq_len > 0) << "batch_size " << batch_size << ", seq_len " << seq_len;
  if (seq_len < min_seq_len())
    return absl::InvalidArgumentError(absl::StrCat(
        "arithmetic: seq_len ", seq_len, " is too short: the longest problem with up to ",
        options_.max_digits, "-digit operands and operators \"", options_.operators, "\" has ",
        max_problem_tokens(), " tokens and needs seq_len >= ", min_seq_len()));
  TokenBatch batch;
  batch.inputs = Tensor::empty({batch_size, seq_len}, DType::kI32);
  batch.targets = Tensor::empty({batch_size, seq_len}, DType::kI32);
  int32_t* inputs = batch.inputs.data<int32_t>();
  int32_t* targets = batch.targets.data<int32_t>();
  std::fill(inputs, inputs + batch_size * seq_len, kPadId);
  std::fill(targets, targets + batch_size * seq_len, kIgnoreTarget);
  for (int64_t row = 0; row < batch_size; ++row) {
    Problem p = sample(first_index + row, split);
    std::vector<int32_t> tokens = ByteTokenizer::encode(p.prompt + p.answer);
    int64_t n = static_cast<int64_t>(tokens.size());
    int64_t prompt_len = static_cast<int64_t>(p.prompt.size());
    SY_CHECK(n - 1 <= seq_len) << "max_problem_tokens() undercounts '" << p.prompt << "'";
    int32_t* in = inputs + row * seq_len;
    int32_t* tg = targets + row * seq_len;
    for (int64_t i = 0; i + 1 < n; ++i) {
      in[i] = tokens[i];
      // Position i predicts token i+1: keep the target only when that token is answer.
      if (i + 1 >= prompt_len) {
        tg[i] = tokens[i + 1];
        ++batch.target_tokens;
      }
    }
  }
  return batch;
}

bool check_answer(const Problem& problem, std::string_view generated) {
  size_t end = generated.find(kEndOfAnswer);
  return end != std::string_view::npos && generated.substr(0, end + 1) == problem.answer;
}

}  // namespace sy
