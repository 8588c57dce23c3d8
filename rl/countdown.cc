#include "rl/countdown.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "kernels/hash.h"

namespace sy {

namespace {


// Mixed into the key so a countdown run and an arithmetic run with the same seed do not
// draw from the same streams.
constexpr uint64_t kCountdownSalt = 0x636f756e74646f77ull;  // "countdow"
constexpr char kAllOperators[] = "+-*/";
constexpr int kMaxCount = 6;
// 1000^6 = 1e18: every intermediate value of the generator fits in int64 (a+b and a*b of
// positive integers are both at most max(a,2) * max(b,2)).
constexpr int64_t kMaxNumber = 1000;
constexpr int kMaxLiteralDigits = 9;
// Enough attempts for create() to find a problem of each split unless the options make that
// (nearly) impossible; a held-out problem takes ~20 / (acceptance rate) attempts.
constexpr uint64_t kProbeAttempts = 1 << 16;

int64_t digits(int64_t x) { return static_cast<int64_t>(absl::StrCat(x).size()); }

// --- exact rationals ----------------------------------------------------------------------

using Value = std::optional<Rational>;  // nullopt: invalid arithmetic somewhere below

unsigned __int128 gcd128(unsigned __int128 a, unsigned __int128 b) {
  while (b != 0) {
    unsigned __int128 t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// Reduces num/den (den != 0) to lowest terms with den > 0; nullopt when it does not fit
// int64. Operands are int64, so the products and sums the callers form fit in __int128.
std::optional<Rational> reduce(__int128 num, __int128 den) {
  if (den < 0) num = -num, den = -den;
  unsigned __int128 g = gcd128(num < 0 ? -num : num, den);
  num /= static_cast<__int128>(g);
  den /= static_cast<__int128>(g);
  if (num < INT64_MIN || num > INT64_MAX || den > INT64_MAX) return std::nullopt;
  return Rational{static_cast<int64_t>(num), static_cast<int64_t>(den)};
}

// --- the expression parser ----------------------------------------------------------------

// Recursive descent over the grammar in countdown.h. Syntax errors end the parse; an
// arithmetic error only poisons the value (the first one is kept), because the expression
// is still well-formed.
class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  absl::StatusOr<CountdownExpression> run() {
    skip_spaces();
    SY_ASSIGN_OR_RETURN(Value value, expr(0));
    if (pos_ != text_.size()) return error("expected an operator or the end");
    result_.value = value;
    return std::move(result_);
  }

 private:
  absl::StatusOr<Value> expr(int depth) {
    SY_ASSIGN_OR_RETURN(Value left, term(depth));
    while (pos_ < text_.size() && (peek() == '+' || peek() == '-')) {
      char op = text_[pos_++];
      skip_spaces();
      SY_ASSIGN_OR_RETURN(Value right, term(depth));
      left = apply(left, op, right);
    }
    return left;
  }

  absl::StatusOr<Value> term(int depth) {
    SY_ASSIGN_OR_RETURN(Value left, factor(depth));
    while (pos_ < text_.size() && (peek() == '*' || peek() == '/')) {
      char op = text_[pos_++];
      skip_spaces();
      SY_ASSIGN_OR_RETURN(Value right, factor(depth));
      left = apply(left, op, right);
    }
    return left;
  }

  absl::StatusOr<Value> factor(int depth) {
    if (pos_ == text_.size()) return error("expected a number or '('");
    char c = peek();
    if (c == '(') {
      // The depth limit keeps a completion of a thousand '(' from exhausting the stack.
      if (depth + 1 > kMaxCountdownDepth)
        return error(absl::StrCat("parentheses nested deeper than ", kMaxCountdownDepth));
      ++pos_;
      skip_spaces();
      SY_ASSIGN_OR_RETURN(Value inner, expr(depth + 1));
      if (pos_ == text_.size() || peek() != ')') return error("expected ')'");
      ++pos_;
      skip_spaces();
      return inner;
    }
    if (c < '0' || c > '9') return error("expected a number or '('");
    size_t start = pos_;
    while (pos_ < text_.size() && peek() >= '0' && peek() <= '9') ++pos_;
    std::string_view literal = text_.substr(start, pos_ - start);
    if (literal.size() > 1 && literal[0] == '0') {
      pos_ = start;
      return error("a number with a leading zero");
    }
    if (literal.size() > static_cast<size_t>(kMaxLiteralDigits)) {
      pos_ = start;
      return error(absl::StrCat("a number longer than ", kMaxLiteralDigits, " digits"));
    }
    int64_t n = 0;
    for (char d : literal) n = n * 10 + (d - '0');
    result_.numbers.push_back(n);
    skip_spaces();
    return Value(Rational{n, 1});
  }

  Value apply(const Value& a, char op, const Value& b) {
    if (!a || !b) return std::nullopt;
    __int128 an = a->num, ad = a->den, bn = b->num, bd = b->den;
    std::optional<Rational> r;
    switch (op) {
      case '+':
        r = reduce(an * bd + bn * ad, ad * bd);
        break;
      case '-':
        r = reduce(an * bd - bn * ad, ad * bd);
        break;
      case '*':
        r = reduce(an * bn, ad * bd);
        break;
      case '/':
        if (bn == 0) return fail("division by zero");
        r = reduce(an * bd, ad * bn);
        break;
      default:
        SY_CHECK(false) << "operator '" << op << "'";
    }
    if (!r) return fail("a value beyond int64");
    return r;
  }

  Value fail(std::string_view why) {
    if (result_.arithmetic_error.empty()) result_.arithmetic_error = std::string(why);
    return std::nullopt;
  }

  char peek() const { return text_[pos_]; }
  void skip_spaces() {
    while (pos_ < text_.size() && text_[pos_] == ' ') ++pos_;
  }

  absl::Status error(std::string_view what) const {
    std::string found = "the end";
    if (pos_ < text_.size()) {
      unsigned char c = static_cast<unsigned char>(text_[pos_]);
      found = c >= 0x20 && c < 0x7f ? absl::StrCat("'", std::string(1, static_cast<char>(c)), "'")
                                    : absl::StrFormat("byte 0x%02x", c);
    }
    return absl::InvalidArgumentError(absl::StrCat("countdown expression: ", std::string(what),
                                                   " at offset ", pos_, " (found ", found, ")"));
  }

  std::string_view text_;
  size_t pos_ = 0;
  CountdownExpression result_;
};

}  // namespace

absl::StatusOr<CountdownExpression> parse_countdown_expression(std::string_view text) {
  return Parser(text).run();
}

const char* verdict_name(CountdownVerdict verdict) {
  switch (verdict) {
    case CountdownVerdict::kCorrect:
      return "correct";
    case CountdownVerdict::kNoEndOfAnswer:
      return "no end of answer";
    case CountdownVerdict::kSyntaxError:
      return "syntax error";
    case CountdownVerdict::kNumberNotGiven:
      return "number not given";
    case CountdownVerdict::kNumberReused:
      return "number reused";
    case CountdownVerdict::kNumberUnused:
      return "number unused";
    case CountdownVerdict::kInvalidArithmetic:
      return "invalid arithmetic";
    case CountdownVerdict::kWrongValue:
      return "wrong value";
  }
  return "?";
}

CountdownVerdict judge_countdown(std::span<const int64_t> numbers, int64_t target,
                                 std::string_view completion, bool use_all_numbers) {
  size_t end = completion.find(kEndOfAnswer);
  if (end == std::string_view::npos) return CountdownVerdict::kNoEndOfAnswer;
  absl::StatusOr<CountdownExpression> parsed =
      parse_countdown_expression(completion.substr(0, end));
  if (!parsed.ok()) return CountdownVerdict::kSyntaxError;

  // How often each number may still be used.
  std::map<int64_t, int> left;
  for (int64_t n : numbers) ++left[n];
  for (int64_t n : parsed->numbers) {
    auto it = left.find(n);
    if (it == left.end()) return CountdownVerdict::kNumberNotGiven;
    if (it->second == 0) return CountdownVerdict::kNumberReused;
    --it->second;
  }
  if (use_all_numbers &&
      std::any_of(left.begin(), left.end(), [](const auto& kv) { return kv.second > 0; }))
    return CountdownVerdict::kNumberUnused;

  if (!parsed->value) return CountdownVerdict::kInvalidArithmetic;
  if (*parsed->value != Rational{target, 1}) return CountdownVerdict::kWrongValue;
  return CountdownVerdict::kCorrect;
}

std::string countdown_prompt(std::span<const int64_t> numbers, int64_t target) {
  return absl::StrCat(absl::StrJoin(numbers, " "), ">", target, "=");
}

absl::StatusOr<CountdownTask> CountdownTask::create(const CountdownOptions& options, uint64_t seed,
                                                    const RewardOptions& reward) {
  SY_RETURN_IF_ERROR(validate_reward_options(reward));
  const CountdownOptions& o = options;
  if (o.min_count < 2 || o.max_count < o.min_count || o.max_count > kMaxCount)
    return absl::InvalidArgumentError(
        absl::StrCat("countdown: need 2 <= min_count <= max_count <= ", kMaxCount, ", got ",
                     o.min_count, "..", o.max_count));
  if (o.min_number < 1 || o.max_number < o.min_number || o.max_number > kMaxNumber)
    return absl::InvalidArgumentError(absl::StrCat(
        "countdown: need 1 <= min_number <= max_number <= ", kMaxNumber,
        " (so every intermediate value fits int64), got ", o.min_number, "..", o.max_number));
  if (o.min_target < 1 || o.max_target < o.min_target)
    return absl::InvalidArgumentError(absl::StrCat(
        "countdown: need 1 <= min_target <= max_target, got ", o.min_target, "..", o.max_target));
  std::string sorted = o.operators;
  std::sort(sorted.begin(), sorted.end());
  bool distinct = std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end();
  bool known = std::all_of(sorted.begin(), sorted.end(), [](char c) {
    return std::string_view(kAllOperators).find(c) != std::string_view::npos;
  });
  if (sorted.empty() || !distinct || !known)
    return absl::InvalidArgumentError(
        absl::StrCat("countdown: operators must be distinct characters from \"", kAllOperators,
                     "\", got \"", o.operators, "\""));

  // sample() redraws until a candidate fits; make sure that ends, for both splits, rather
  // than hang later on options whose targets can (almost) never land in range.
  CountdownTask task(options, seed, reward);
  for (Split split : {Split::kTrain, Split::kHeldOut}) {
    bool found = false;
    for (uint64_t attempt = 0; attempt < kProbeAttempts && !found; ++attempt) {
      std::optional<CountdownProblem> p = task.candidate(0, split, attempt);
      found = p && task.acceptable(*p, split);
    }
    if (!found)
      return absl::InvalidArgumentError(absl::StrCat(
          "countdown: no ", split_name(split), " problem in ", kProbeAttempts, " draws: combining ",
          o.min_count, "..", o.max_count, " numbers from ", o.min_number, "..", o.max_number,
          " with \"", o.operators, "\" rarely or never gives a target in ", o.min_target, "..",
          o.max_target,
          " other than one of the numbers; widen the target range or change the numbers"));
  }
  return task;
}

std::optional<CountdownProblem> CountdownTask::candidate(uint64_t index, Split split,
                                                         uint64_t attempt) const {
  uint64_t key = mix64(seed_ ^ kCountdownSalt);
  key = mix64(key ^ index);
  key = mix64(key ^ static_cast<uint64_t>(split));
  key = mix64(key ^ attempt);
  HashDraws draws(key);

  CountdownProblem p;
  int count = options_.min_count +
              static_cast<int>(draws.below(options_.max_count - options_.min_count + 1));
  for (int i = 0; i < count; ++i)
    p.numbers.push_back(options_.min_number + static_cast<int64_t>(draws.below(
                                                  options_.max_number - options_.min_number + 1)));

  // Combine two random pool entries at a time. A composite's text carries its own
  // parentheses, so the solution is fully parenthesised (minus the outermost pair).
  struct Node {
    int64_t value;
    std::string text;
  };
  std::vector<Node> pool;
  for (int64_t n : p.numbers) pool.push_back({n, absl::StrCat(n)});
  while (pool.size() > 1) {
    size_t i = draws.below(pool.size());
    size_t j = draws.below(pool.size() - 1);
    if (j >= i) ++j;
    const Node& a = pool[i];
    const Node& b = pool[j];
    // Every (operator, order) that keeps the result a positive integer; one is drawn.
    struct Choice {
      const Node* left;
      char op;
      const Node* right;
      int64_t value;
    };
    std::vector<Choice> choices;
    for (char op : options_.operators) {
      switch (op) {
        case '+':
          choices.push_back({&a, op, &b, a.value + b.value});
          break;
        case '*':
          choices.push_back({&a, op, &b, a.value * b.value});
          break;
        case '-':
          if (a.value > b.value) choices.push_back({&a, op, &b, a.value - b.value});
          if (b.value > a.value) choices.push_back({&b, op, &a, b.value - a.value});
          break;
        case '/':
          if (a.value % b.value == 0) choices.push_back({&a, op, &b, a.value / b.value});
          if (a.value != b.value && b.value % a.value == 0)
            choices.push_back({&b, op, &a, b.value / a.value});
          break;
      }
    }
    if (choices.empty()) return std::nullopt;
    const Choice& c = choices[draws.below(choices.size())];
    Node combined{c.value,
                  absl::StrCat("(", c.left->text, std::string(1, c.op), c.right->text, ")")};
    pool.erase(pool.begin() + std::max(i, j));
    pool.erase(pool.begin() + std::min(i, j));
    pool.push_back(std::move(combined));
  }
  p.target = pool[0].value;
  p.solution = pool[0].text;
  if (p.solution.front() == '(') p.solution = p.solution.substr(1, p.solution.size() - 2);
  std::sort(p.numbers.begin(), p.numbers.end());
  p.prompt = countdown_prompt(p.numbers, p.target);
  return p;
}

bool CountdownTask::acceptable(const CountdownProblem& p, Split split) const {
  if (p.target < options_.min_target || p.target > options_.max_target) return false;
  if (std::find(p.numbers.begin(), p.numbers.end(), p.target) != p.numbers.end()) return false;
  return ArithmeticTask::split_of(p.prompt) == split;
}

CountdownProblem CountdownTask::problem(uint64_t index, Split split) const {
  // create() showed candidates of this split are accepted with positive probability.
  for (uint64_t attempt = 0;; ++attempt) {
    std::optional<CountdownProblem> p = candidate(index, split, attempt);
    if (p && acceptable(*p, split)) return *std::move(p);
  }
}

Prompt CountdownTask::sample(uint64_t index, Split split) const {
  CountdownProblem p = problem(index, split);
  Prompt prompt;
  prompt.text = std::move(p.prompt);
  Json::Array numbers(p.numbers.begin(), p.numbers.end());
  prompt.fields.set("numbers", Json(std::move(numbers)));
  prompt.fields.set("target", p.target);
  return prompt;
}

CountdownVerdict CountdownTask::judge(const Prompt& prompt, std::string_view completion) const {
  const Json* numbers = prompt.fields.is_object() ? prompt.fields.find("numbers") : nullptr;
  const Json* target = prompt.fields.is_object() ? prompt.fields.find("target") : nullptr;
  SY_CHECK(numbers != nullptr && numbers->is_array() && target != nullptr && target->is_int())
      << "countdown: prompt '" << prompt.text << "' has no \"numbers\" / \"target\" fields: "
      << "not made by CountdownTask::sample";
  std::vector<int64_t> given;
  for (const Json& n : numbers->as_array()) given.push_back(n.as_int());
  return judge_countdown(given, target->as_int(), completion, options_.use_all_numbers);
}

Score CountdownTask::score(const Prompt& prompt, std::string_view completion) const {
  CountdownVerdict v = judge(prompt, completion);
  return make_score(v == CountdownVerdict::kCorrect, is_well_formed(v), reward_);
}

int64_t CountdownTask::max_prompt_tokens() const {
  // max_count numbers and the spaces between them, '>', the target, '='.
  return options_.max_count * (digits(options_.max_number) + 1) - 1 + 1 +
         digits(options_.max_target) + 1;
}

int64_t CountdownTask::max_completion_tokens() const {
  // Every number once, an operator between each two, a pair of parentheses around each
  // combination but the last (a binary tree of n leaves has n - 2 non-root inner nodes),
  // and the '\n'.
  int64_t n = options_.max_count;
  return n * digits(options_.max_number) + (n - 1) + 2 * (n - 2) + 1;
}

}  // namespace sy
