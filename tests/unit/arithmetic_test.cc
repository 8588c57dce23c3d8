#include "trainer/arithmetic.h"

#include <charconv>
#include <set>
#include <string>

#include "gtest/gtest.h"

namespace sy {
namespace {

ArithmeticTask make_task(ArithmeticOptions options, uint64_t seed) {
  absl::StatusOr<ArithmeticTask> task = ArithmeticTask::create(options, seed);
  SY_CHECK(task.ok()) << task.status();
  return *std::move(task);
}

// "a op b=" split back into its parts; the test's own reading of the prompt.
struct Parsed {
  int64_t a, b;
  char op;
  int a_digits, b_digits;
};

Parsed parse_prompt(const std::string& prompt) {
  Parsed p{};
  const char* s = prompt.data();
  const char* end = s + prompt.size();
  auto r1 = std::from_chars(s, end, p.a);
  EXPECT_EQ(r1.ec, std::errc()) << prompt;
  p.a_digits = static_cast<int>(r1.ptr - s);
  p.op = *r1.ptr;
  auto r2 = std::from_chars(r1.ptr + 1, end, p.b);
  EXPECT_EQ(r2.ec, std::errc()) << prompt;
  p.b_digits = static_cast<int>(r2.ptr - (r1.ptr + 1));
  EXPECT_EQ(std::string(r2.ptr, end), "=") << prompt;
  return p;
}

TEST(ArithmeticTest, GoldenProblemsPinTheGenerator) {
  // Resumed runs and held-out evaluations rely on (seed, split, index) naming the same
  // problem forever: a change here changes every run's data.
  ArithmeticTask task = make_task({1, 3, "+-*"}, 1234);
  EXPECT_EQ(task.sample(0, Split::kTrain).prompt, "4-697=");
  EXPECT_EQ(task.sample(0, Split::kTrain).answer, "-693\n");
  EXPECT_EQ(task.sample(1, Split::kTrain).prompt, "5*9=");
  EXPECT_EQ(task.sample(3, Split::kTrain).prompt, "148+6=");
  EXPECT_EQ(task.sample(0, Split::kHeldOut).prompt, "8+21=");
  EXPECT_EQ(task.sample(1, Split::kHeldOut).prompt, "82+6=");
}

TEST(ArithmeticTest, SameSeedAndIndexGiveTheSameProblemAndSeedsDiffer) {
  ArithmeticTask a = make_task({}, 7), b = make_task({}, 7), c = make_task({}, 8);
  int differ = 0;
  for (uint64_t i = 0; i < 200; ++i) {
    for (Split split : {Split::kTrain, Split::kHeldOut}) {
      Problem pa = a.sample(i, split), pb = b.sample(i, split);
      EXPECT_EQ(pa.prompt, pb.prompt);
      EXPECT_EQ(pa.answer, pb.answer);
      differ += pa.prompt != c.sample(i, split).prompt;
    }
  }
  EXPECT_GT(differ, 350);  // out of 400: only chance collisions agree
  // Sampling out of order gives the same problem: no hidden state.
  EXPECT_EQ(a.sample(123456789, Split::kTrain).prompt, b.sample(123456789, Split::kTrain).prompt);
}

TEST(ArithmeticTest, AnswersAreCorrectForEveryOperator) {
  ArithmeticTask task = make_task({1, 4, "+-*"}, 3);
  std::set<char> ops_seen;
  bool negative_seen = false;
  for (uint64_t i = 0; i < 3000; ++i) {
    Problem p = task.sample(i, i % 2 ? Split::kTrain : Split::kHeldOut);
    Parsed q = parse_prompt(p.prompt);
    int64_t expected = q.op == '+' ? q.a + q.b : q.op == '-' ? q.a - q.b : q.a * q.b;
    ASSERT_EQ(p.answer, std::to_string(expected) + "\n") << p.prompt;
    EXPECT_TRUE(check_answer(p, std::to_string(expected) + "\n"));
    ops_seen.insert(q.op);
    negative_seen |= expected < 0;
  }
  EXPECT_EQ(ops_seen, (std::set<char>{'+', '-', '*'}));
  EXPECT_TRUE(negative_seen);
  EXPECT_EQ(make_problem(12, '-', 30).answer, "-18\n");
  EXPECT_EQ(make_problem(999999999, '*', 999999999).answer, "999999998000000001\n");
}

TEST(ArithmeticTest, OperandDigitCountsStayInRange) {
  ArithmeticTask task = make_task({2, 4, "+"}, 5);
  std::set<int> digits_seen;
  for (uint64_t i = 0; i < 2000; ++i) {
    Parsed q = parse_prompt(task.sample(i, Split::kTrain).prompt);
    for (int d : {q.a_digits, q.b_digits}) {
      EXPECT_GE(d, 2);
      EXPECT_LE(d, 4);
      digits_seen.insert(d);
    }
  }
  EXPECT_EQ(digits_seen, (std::set<int>{2, 3, 4}));

  // One-digit operands include 0.
  ArithmeticTask small = make_task({1, 1, "+"}, 5);
  bool zero_seen = false;
  for (uint64_t i = 0; i < 500; ++i) {
    Parsed q = parse_prompt(small.sample(i, Split::kTrain).prompt);
    EXPECT_LE(q.a, 9);
    zero_seen |= q.a == 0 || q.b == 0;
  }
  EXPECT_TRUE(zero_seen);
}

TEST(ArithmeticTest, TrainAndHeldOutAreDisjoint) {
  ArithmeticTask task = make_task({1, 2, "+-*"}, 11);
  std::set<std::string> train;
  for (uint64_t i = 0; i < 30000; ++i) {
    Problem p = task.sample(i, Split::kTrain);
    EXPECT_EQ(ArithmeticTask::split_of(p.prompt), Split::kTrain);
    train.insert(p.prompt);
  }
  // The space is 3 * 100^2 problems, so 30000 train draws cover much of it; still no held-out
  // prompt may appear among them, and held-out membership ignores the seed.
  ArithmeticTask other_seed = make_task({1, 2, "+-*"}, 12);
  std::set<std::string> held_out;
  for (uint64_t i = 0; i < 2000; ++i) {
    for (const ArithmeticTask* t : {&task, &other_seed}) {
      Problem p = t->sample(i, Split::kHeldOut);
      EXPECT_EQ(train.count(p.prompt), 0u) << p.prompt;
      held_out.insert(p.prompt);
    }
  }
  EXPECT_GT(held_out.size(), 100u);  // a real set, not one problem over and over
}

TEST(ArithmeticTest, BatchLayoutMasksThePromptAndPads) {
  // Seed 1 with 1-digit '+' starts "9+0=9\n", "3+0=3\n", "1+3=4\n" (see the golden test).
  ArithmeticTask task = make_task({1, 1, "+"}, 1);
  ASSERT_EQ(task.sample(0, Split::kTrain).prompt, "9+0=");
  ASSERT_EQ(task.sample(1, Split::kTrain).prompt, "3+0=");
  ASSERT_EQ(task.sample(2, Split::kTrain).prompt, "1+3=");
  absl::StatusOr<TokenBatch> batch = task.make_batch(2, 7, 1, Split::kTrain);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_EQ(batch->inputs.shape(), (Shape{2, 7}));
  EXPECT_EQ(batch->targets.shape(), (Shape{2, 7}));
  const int32_t I = kIgnoreTarget, P = kPadId;
  // Row 0 = "3+0=3\n": inputs "3+0=3", targets only where the next token is answer.
  // Row 1 = "1+3=4\n".
  EXPECT_EQ(batch->inputs.to_i32_vector(), (std::vector<int32_t>{'3', '+', '0', '=', '3', P, P,  //
                                                                 '1', '+', '3', '=', '4', P, P}));
  EXPECT_EQ(batch->targets.to_i32_vector(), (std::vector<int32_t>{I, I, I, '3', '\n', I, I,  //
                                                                  I, I, I, '4', '\n', I, I}));
  EXPECT_EQ(batch->target_tokens, 4);
}

TEST(ArithmeticTest, MaxProblemTokensBoundsEveryProblemAndIsReached) {
  for (const ArithmeticOptions& options :
       {ArithmeticOptions{1, 1, "-"}, ArithmeticOptions{1, 1, "*"}, ArithmeticOptions{1, 3, "+-"},
        ArithmeticOptions{2, 3, "+-*"}}) {
    ArithmeticTask task = make_task(options, 2);
    size_t longest = 0;
    for (uint64_t i = 0; i < 20000; ++i) {
      Problem p = task.sample(i, Split::kTrain);
      longest = std::max(longest, p.prompt.size() + p.answer.size());
    }
    EXPECT_LE(static_cast<int64_t>(longest), task.max_problem_tokens()) << options.operators;
    if (options.max_digits == 1)  // small enough that the longest is certainly drawn
      EXPECT_EQ(static_cast<int64_t>(longest), task.max_problem_tokens()) << options.operators;
  }
  // "999*999=998001\n": 15 tokens; its inputs need seq_len 14.
  ArithmeticTask task = make_task({1, 3, "+*"}, 0);
  EXPECT_EQ(task.max_problem_tokens(), 15);
  EXPECT_EQ(task.min_seq_len(), 14);
  EXPECT_TRUE(task.make_batch(64, 14, 0, Split::kTrain).ok());
}

TEST(ArithmeticTest, TooShortSeqLenSaysWhatIsNeeded) {
  ArithmeticTask task = make_task({1, 3, "+-"}, 0);  // longest "999+999=1998\n": 13 tokens
  absl::StatusOr<TokenBatch> batch = task.make_batch(4, 11, 0, Split::kTrain);
  ASSERT_FALSE(batch.ok());
  EXPECT_NE(batch.status().message().find("needs seq_len >= 12"), absl::string_view::npos)
      << batch.status();
  EXPECT_NE(batch.status().message().find("seq_len 11"), absl::string_view::npos);
}

TEST(ArithmeticTest, CheckAnswerMatchesUpToTheFirstNewline) {
  Problem p = make_problem(37, '+', 485);
  EXPECT_EQ(p.prompt, "37+485=");
  EXPECT_EQ(p.answer, "522\n");
  EXPECT_TRUE(check_answer(p, "522\n"));
  EXPECT_TRUE(check_answer(p, "522\n17+1=18\n"));  // text after the answer is ignored
  EXPECT_FALSE(check_answer(p, "522"));            // never finished
  EXPECT_FALSE(check_answer(p, "5220\n"));
  EXPECT_FALSE(check_answer(p, "52\n"));
  EXPECT_FALSE(check_answer(p, " 522\n"));
  EXPECT_FALSE(check_answer(p, ""));
}

TEST(ArithmeticTest, BadOptionsAreRejectedWithTheReason) {
  struct Case {
    ArithmeticOptions options;
    std::string what;
  };
  for (const Case& c : {Case{{0, 3, "+"}, "min_digits must be at least 1, got 0"},
                        Case{{3, 2, "+"}, "max_digits (2) must be at least min_digits (3)"},
                        Case{{1, 10, "+"}, "max_digits must be at most 9"},
                        Case{{1, 2, ""}, "operators must be distinct characters"},
                        Case{{1, 2, "+/"}, "got \"+/\""}, Case{{1, 2, "++"}, "got \"++\""}}) {
    absl::StatusOr<ArithmeticTask> task = ArithmeticTask::create(c.options, 0);
    ASSERT_FALSE(task.ok()) << c.what;
    EXPECT_NE(task.status().message().find(c.what), absl::string_view::npos) << task.status();
  }
}

}  // namespace
}  // namespace sy
