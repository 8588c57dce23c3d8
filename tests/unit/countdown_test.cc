#include "rl/countdown.h"

#include <algorithm>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sy {
namespace {

CountdownTask make_task(CountdownOptions options = {}, uint64_t seed = 1,
                        double format_weight = 0.1) {
  absl::StatusOr<CountdownTask> task =
      CountdownTask::create(options, seed, {.format_weight = format_weight});
  SY_CHECK(task.ok()) << task.status();
  return *std::move(task);
}

// --- an independent brute-force solver (the test's own, sharing no code with rl/) -------

struct Frac {
  int64_t n, d;  // d > 0, lowest terms
};

Frac make_frac(int64_t n, int64_t d) {
  if (d < 0) n = -n, d = -d;
  int64_t g = std::gcd(n < 0 ? -n : n, d);
  return {n / g, d / g};
}

// True iff some expression over a sub-multiset of `values` (each used at most once) equals
// target. Every value in `values` is itself a reachable expression, so checking each state
// covers every subset.
bool reachable(std::vector<Frac> values, int64_t target) {
  for (const Frac& v : values)
    if (v.d == 1 && v.n == target) return true;
  for (size_t i = 0; i < values.size(); ++i) {
    for (size_t j = 0; j < values.size(); ++j) {
      if (i == j) continue;
      Frac a = values[i], b = values[j];
      std::vector<Frac> results = {make_frac(a.n * b.d + b.n * a.d, a.d * b.d),
                                   make_frac(a.n * b.d - b.n * a.d, a.d * b.d),
                                   make_frac(a.n * b.n, a.d * b.d)};
      if (b.n != 0) results.push_back(make_frac(a.n * b.d, a.d * b.n));
      std::vector<Frac> rest;
      for (size_t k = 0; k < values.size(); ++k)
        if (k != i && k != j) rest.push_back(values[k]);
      for (const Frac& r : results) {
        rest.push_back(r);
        if (reachable(rest, target)) return true;
        rest.pop_back();
      }
    }
  }
  return false;
}

// --- generation -----------------------------------------------------------------------------

TEST(CountdownTest, GoldenProblemsPinTheGenerator) {
  // (seed, split, index) must name the same problem forever: runs resume by index and
  // held-out accuracy is compared across runs.
  CountdownTask task = make_task();
  EXPECT_EQ(task.problem(0, Split::kTrain).prompt, "1 10 14 25>210=");
  EXPECT_EQ(task.problem(1, Split::kTrain).prompt, "1 18 22 25>65=");
  EXPECT_EQ(task.problem(0, Split::kHeldOut).prompt, "6 11 12 21>177=");
}

TEST(CountdownTest, SameCoordinatesSameProblemAndSeedsDiffer) {
  CountdownTask a = make_task({}, 7), b = make_task({}, 7), c = make_task({}, 8);
  int differ = 0;
  for (uint64_t i = 0; i < 200; ++i) {
    for (Split split : {Split::kTrain, Split::kHeldOut}) {
      CountdownProblem pa = a.problem(i, split), pb = b.problem(i, split);
      EXPECT_EQ(pa.prompt, pb.prompt);
      EXPECT_EQ(pa.solution, pb.solution);
      Prompt qa = a.sample(i, split), qb = b.sample(i, split);
      EXPECT_EQ(qa.text, qb.text);
      EXPECT_EQ(qa.fields, qb.fields);
      differ += pa.prompt != c.problem(i, split).prompt;
    }
  }
  EXPECT_GT(differ, 350);
}

TEST(CountdownTest, ProblemsFollowTheOptionsAndTheirConstructionReachesTheTarget) {
  for (bool use_all : {false, true}) {
    CountdownOptions options{.min_count = 2,
                             .max_count = 5,
                             .min_number = 2,
                             .max_number = 40,
                             .min_target = 10,
                             .max_target = 500,
                             .operators = "+-*/",
                             .use_all_numbers = use_all};
    CountdownTask task = make_task(options, 11);
    std::set<size_t> counts;
    for (uint64_t i = 0; i < 500; ++i) {
      for (Split split : {Split::kTrain, Split::kHeldOut}) {
        CountdownProblem p = task.problem(i, split);
        counts.insert(p.numbers.size());
        ASSERT_GE(p.numbers.size(), 2u);
        ASSERT_LE(p.numbers.size(), 5u);
        EXPECT_TRUE(std::is_sorted(p.numbers.begin(), p.numbers.end())) << p.prompt;
        for (int64_t n : p.numbers) {
          EXPECT_GE(n, 2);
          EXPECT_LE(n, 40);
        }
        EXPECT_GE(p.target, 10);
        EXPECT_LE(p.target, 500);
        EXPECT_EQ(std::count(p.numbers.begin(), p.numbers.end(), p.target), 0) << p.prompt;
        EXPECT_EQ(p.prompt, countdown_prompt(p.numbers, p.target));

        // The construction is an answer: it parses, uses every number exactly once and
        // equals the target, so the scorer accepts it under either rule.
        absl::StatusOr<CountdownExpression> e = parse_countdown_expression(p.solution);
        ASSERT_TRUE(e.ok()) << p.solution << ": " << e.status();
        std::vector<int64_t> used = e->numbers;
        std::sort(used.begin(), used.end());
        EXPECT_EQ(used, p.numbers) << p.solution;
        ASSERT_TRUE(e->value.has_value()) << p.solution;
        EXPECT_EQ(*e->value, (Rational{p.target, 1})) << p.solution;
        Prompt q = task.sample(i, split);
        Score s = task.score(q, p.solution + "\n");
        EXPECT_TRUE(s.correct) << q.text << " " << p.solution;
        EXPECT_DOUBLE_EQ(s.reward, 1.1);
        EXPECT_LE(static_cast<int64_t>(q.text.size()), task.max_prompt_tokens());
        EXPECT_LE(static_cast<int64_t>(p.solution.size()) + 1, task.max_completion_tokens())
            << p.solution;
      }
    }
    EXPECT_EQ(counts, (std::set<size_t>{2, 3, 4, 5}));
  }
}

TEST(CountdownTest, BruteForceSolverReachesASampleOfTargets) {
  CountdownTask task = make_task();
  std::mt19937_64 rng(5);
  for (int k = 0; k < 100; ++k) {
    uint64_t index = rng() % 1000000;
    Split split = k % 4 == 0 ? Split::kHeldOut : Split::kTrain;
    CountdownProblem p = task.problem(index, split);
    std::vector<Frac> values;
    for (int64_t n : p.numbers) values.push_back({n, 1});
    EXPECT_TRUE(reachable(values, p.target)) << p.prompt;
  }
}

TEST(CountdownTest, HeldOutIsDisjointFromTrain) {
  CountdownTask task = make_task();
  std::set<std::string> train, held_out;
  for (uint64_t i = 0; i < 4000; ++i) train.insert(task.sample(i, Split::kTrain).text);
  for (uint64_t i = 0; i < 400; ++i) held_out.insert(task.sample(i, Split::kHeldOut).text);
  for (const std::string& p : held_out) {
    EXPECT_EQ(train.count(p), 0u) << p;
    EXPECT_EQ(ArithmeticTask::split_of(p), Split::kHeldOut);
  }
  // Enough variety that the held-out split measures generalisation, not recall.
  EXPECT_GT(train.size(), 3900u);
  EXPECT_GT(held_out.size(), 370u);
}

TEST(CountdownTest, FieldsCarryNumbersAndTarget) {
  CountdownTask task = make_task();
  CountdownProblem p = task.problem(3, Split::kTrain);
  Prompt q = task.sample(3, Split::kTrain);
  EXPECT_EQ(q.text, p.prompt);
  ASSERT_NE(q.fields.find("target"), nullptr);
  EXPECT_EQ(q.fields.find("target")->as_int(), p.target);
  std::vector<int64_t> numbers;
  for (const Json& n : q.fields.find("numbers")->as_array()) numbers.push_back(n.as_int());
  EXPECT_EQ(numbers, p.numbers);
  EXPECT_EQ(task.name(), "countdown");
}

TEST(CountdownTest, RejectsBadOptions) {
  struct Case {
    CountdownOptions options;
    const char* message;
  };
  const Case cases[] = {
      {{.min_count = 1}, "min_count"},
      {{.min_count = 4, .max_count = 3}, "min_count"},
      {{.max_count = 7}, "max_count"},
      {{.min_number = 0}, "min_number"},
      {{.max_number = 1001}, "max_number"},
      {{.min_target = 0}, "min_target"},
      {{.operators = "+^"}, "operators"},
      {{.operators = "++"}, "operators"},
      {{.operators = ""}, "operators"},
      // Two numbers from 1..2 with '+' can never make 100.
      {{.min_count = 2,
        .max_count = 2,
        .min_number = 1,
        .max_number = 2,
        .min_target = 100,
        .max_target = 200,
        .operators = "+"},
       "widen the target range"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<CountdownTask> task = CountdownTask::create(c.options, 1);
    ASSERT_FALSE(task.ok()) << c.message;
    EXPECT_NE(task.status().message().find(c.message), std::string_view::npos) << task.status();
  }
  absl::StatusOr<CountdownTask> weight = CountdownTask::create({}, 1, {.format_weight = NAN});
  EXPECT_FALSE(weight.ok());
}

// --- scoring --------------------------------------------------------------------------------

TEST(CountdownTest, JudgesHandWrittenAnswers) {
  const std::vector<int64_t> numbers = {3, 3, 4, 7, 25};
  using V = CountdownVerdict;
  struct Case {
    std::string completion;
    V at_most_once;  // the default rule
    V exactly_once;
  };
  const Case cases[] = {
      {"(25-7)*3+4\n", V::kCorrect, V::kNumberUnused},  // 58 without the second 3
      {"(25 - 7) * 3 + 4\n", V::kCorrect, V::kNumberUnused},
      {"(25-7)*3+4\nanything after the newline", V::kCorrect, V::kNumberUnused},
      {"3*4+7*3+25\n", V::kCorrect, V::kCorrect},    // both 3s: allowed, 3 is given twice
      {"(25/3+7+4)*3\n", V::kCorrect, V::kCorrect},  // through the fraction 25/3, exactly
      {"(25-7)*3+4", V::kNoEndOfAnswer, V::kNoEndOfAnswer},
      {"(25-7)*3+7\n", V::kNumberReused, V::kNumberReused},
      {"(25-7)*3+3+3+3\n", V::kNumberReused, V::kNumberReused},  // a third 3
      {"(25-5)*3-2\n", V::kNumberNotGiven, V::kNumberNotGiven},
      {"58\n", V::kNumberNotGiven, V::kNumberNotGiven},
      {"25*3-7-4\n", V::kWrongValue, V::kNumberUnused},                  // 64
      {"25/(3-3)+7*4\n", V::kInvalidArithmetic, V::kInvalidArithmetic},  // division by zero
      {"(7+25/3)*4\n", V::kWrongValue, V::kNumberUnused},  // 184/3: not even an integer
      {"((25-7)*3)+(4)\n", V::kCorrect, V::kNumberUnused},
      {"(25-7)*3+4)\n", V::kSyntaxError, V::kSyntaxError},
      {"((25-7)*3+4\n", V::kSyntaxError, V::kSyntaxError},
      {"(25-7)3+4\n", V::kSyntaxError, V::kSyntaxError},
      {"25--7\n", V::kSyntaxError, V::kSyntaxError},
      {"-25+7\n", V::kSyntaxError, V::kSyntaxError},  // no unary minus
      {"25+\n", V::kSyntaxError, V::kSyntaxError},
      {"()\n", V::kSyntaxError, V::kSyntaxError},
      {"\n", V::kSyntaxError, V::kSyntaxError},
      {"07+25\n", V::kSyntaxError, V::kSyntaxError},
      {"25.0+7\n", V::kSyntaxError, V::kSyntaxError},
      {"25x7\n", V::kSyntaxError, V::kSyntaxError},
      {"25\t+7\n", V::kSyntaxError, V::kSyntaxError},
      {"1234567890+3\n", V::kSyntaxError, V::kSyntaxError},
      {std::string("\xff\xfe\x00(3\x80", 6) + "\n", V::kSyntaxError, V::kSyntaxError},
      {std::string(1000, '(') + "3" + std::string(1000, ')') + "\n", V::kSyntaxError,
       V::kSyntaxError},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(judge_countdown(numbers, 58, c.completion, false), c.at_most_once)
        << "'" << c.completion
        << "': " << verdict_name(judge_countdown(numbers, 58, c.completion, false));
    EXPECT_EQ(judge_countdown(numbers, 58, c.completion, true), c.exactly_once)
        << "'" << c.completion
        << "': " << verdict_name(judge_countdown(numbers, 58, c.completion, true));
  }
}

TEST(CountdownTest, FractionalIntermediatesAreExact) {
  // The 24 game's classic: 8/(3-8/3) = 8/(1/3) = 24. Floating point would give 23.999...
  const std::vector<int64_t> numbers = {3, 3, 8, 8};
  EXPECT_EQ(judge_countdown(numbers, 24, "8/(3-8/3)\n", true), CountdownVerdict::kCorrect);
  absl::StatusOr<CountdownExpression> e = parse_countdown_expression("8/(3-8/3)");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(*e->value, (Rational{24, 1}));
  e = parse_countdown_expression("3/8-1");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(*e->value, (Rational{-5, 8}));
}

TEST(CountdownTest, ParserReportsWhereAndWhy) {
  absl::StatusOr<CountdownExpression> e = parse_countdown_expression("3+*4");
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("offset 2"), std::string_view::npos) << e.status();
  e = parse_countdown_expression(std::string(40, '(') + "1" + std::string(40, ')'));
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("nested deeper"), std::string_view::npos) << e.status();
  // Division by zero is well-formed: a value-less result, not a syntax error.
  e = parse_countdown_expression("7/(3-3)");
  ASSERT_TRUE(e.ok());
  EXPECT_FALSE(e->value.has_value());
  EXPECT_EQ(e->arithmetic_error, "division by zero");
  EXPECT_EQ(e->numbers, (std::vector<int64_t>{7, 3, 3}));
  // Overflow is detected, not wrapped.
  e = parse_countdown_expression("999999999*999999999*999999999");
  ASSERT_TRUE(e.ok());
  EXPECT_FALSE(e->value.has_value());
  EXPECT_EQ(e->arithmetic_error, "a value beyond int64");
}

TEST(CountdownTest, ArbitraryBytesNeverCrashTheScorer) {
  CountdownTask task = make_task();
  Prompt q = task.sample(0, Split::kTrain);
  std::mt19937_64 rng(17);
  const std::string alphabet = "0123456789+-*/() \n";
  for (int k = 0; k < 20000; ++k) {
    std::string s(rng() % 24, '\0');
    for (char& c : s)
      c = k % 2 ? static_cast<char>(rng() % 256) : alphabet[rng() % alphabet.size()];
    Score score = task.score(q, s);
    EXPECT_GE(score.reward, 0.0);
    if (score.correct) EXPECT_TRUE(score.format_ok);
  }
}

TEST(CountdownTest, RewardsFollowTheVerdict) {
  CountdownTask task = make_task({}, 1, 0.1);
  Prompt q{"3 3 4 7 25>58=",
           Json::Object{{"numbers", Json(Json::Array{3, 3, 4, 7, 25})}, {"target", Json(58)}}};
  EXPECT_DOUBLE_EQ(task.score(q, "(25-7)*3+4\n").reward, 1.1);
  EXPECT_DOUBLE_EQ(task.score(q, "25/(3-3)\n").reward, 0.1);  // well-formed, invalid
  EXPECT_DOUBLE_EQ(task.score(q, "99\n").reward, 0.1);        // well-formed, not given
  EXPECT_DOUBLE_EQ(task.score(q, "(25-7)*3+4").reward, 0.0);  // no '\n'
  EXPECT_DOUBLE_EQ(task.score(q, "25-+7\n").reward, 0.0);
  EXPECT_EQ(task.judge(q, "25+7\n"), CountdownVerdict::kWrongValue);
}

}  // namespace
}  // namespace sy
