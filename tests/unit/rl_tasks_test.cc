#include <string>

#include "gtest/gtest.h"
#include "rl/tasks.h"

namespace sy {
namespace {

ArithmeticRewardTask make_task(ArithmeticOptions options, uint64_t seed, double format_weight) {
  absl::StatusOr<ArithmeticRewardTask> task =
      ArithmeticRewardTask::create(options, seed, {.format_weight = format_weight});
  SY_CHECK(task.ok()) << task.status();
  return *std::move(task);
}

TEST(ArithmeticRewardTaskTest, PromptsAndSplitsAreThoseOfTheTrainingTask) {
  // RL continues a checkpoint of the default run: the held-out problems it reports accuracy
  // on must be the pretraining task's held-out problems.
  ArithmeticOptions options{1, 4, "+-*"};
  ArithmeticRewardTask rl = make_task(options, 99, 0.1);
  absl::StatusOr<ArithmeticTask> pre = ArithmeticTask::create(options, 99);
  ASSERT_TRUE(pre.ok());
  for (uint64_t i = 0; i < 100; ++i) {
    for (Split split : {Split::kTrain, Split::kHeldOut}) {
      Problem p = pre->sample(i, split);
      Prompt q = rl.sample(i, split);
      EXPECT_EQ(q.text, p.prompt);
      ASSERT_NE(q.fields.find("answer"), nullptr);
      EXPECT_EQ(q.fields.find("answer")->as_string() + "\n", p.answer);
      EXPECT_EQ(ArithmeticTask::split_of(q.text), split);
    }
  }
  EXPECT_EQ(rl.name(), "arithmetic");
}

TEST(ArithmeticRewardTaskTest, ScoresCorrectWrongAndMalformedAnswers) {
  ArithmeticRewardTask task = make_task({}, 1, 0.1);
  Prompt p{"37+48=", Json::Object{{"answer", Json("85")}}};
  struct Case {
    std::string completion;
    bool correct, format_ok;
    double reward;
  };
  const Case cases[] = {
      {"85\n", true, true, 1.1},
      {"85\ntrailing text is ignored", true, true, 1.1},
      {"84\n", false, true, 0.1},
      {"-85\n", false, true, 0.1},
      {"085\n", false, true, 0.1},  // well-formed digits, but not the answer's text
      {"85", false, false, 0.0},    // cut off before the '\n'
      {"", false, false, 0.0},
      {"\n", false, false, 0.0},
      {"-\n", false, false, 0.0},
      {" 85\n", false, false, 0.0},
      {"8 5\n", false, false, 0.0},
      {"85.0\n", false, false, 0.0},
      {"+85\n", false, false, 0.0},
      {std::string("\xff\x00\x85\n", 4), false, false, 0.0},  // arbitrary bytes, a NUL among them
  };
  for (const Case& c : cases) {
    Score s = task.score(p, c.completion);
    EXPECT_EQ(s.correct, c.correct) << "'" << c.completion << "'";
    EXPECT_EQ(s.format_ok, c.format_ok) << "'" << c.completion << "'";
    EXPECT_DOUBLE_EQ(s.reward, c.reward) << "'" << c.completion << "'";
  }
}

TEST(ArithmeticRewardTaskTest, NegativeAnswersAndNoFormatReward) {
  ArithmeticRewardTask task = make_task({}, 1, 0.0);
  Prompt p{"4-697=", Json::Object{{"answer", Json("-693")}}};
  EXPECT_EQ(task.score(p, "-693\n").reward, 1.0);
  EXPECT_EQ(task.score(p, "693\n").reward, 0.0);
  EXPECT_TRUE(task.score(p, "693\n").format_ok);
}

TEST(ArithmeticRewardTaskTest, EverySampledAnswerScoresOne) {
  ArithmeticRewardTask task = make_task({2, 5, "+-*"}, 3, 0.25);
  for (uint64_t i = 0; i < 200; ++i) {
    Prompt p = task.sample(i, Split::kTrain);
    std::string answer = p.fields.find("answer")->as_string() + "\n";
    EXPECT_EQ(task.score(p, answer).reward, 1.25) << p.text;
    EXPECT_LE(static_cast<int64_t>(p.text.size()), task.max_prompt_tokens());
    EXPECT_LE(static_cast<int64_t>(answer.size()), task.max_completion_tokens());
  }
  // 5-digit products have up to 10 digits, plus the '\n'.
  EXPECT_EQ(task.max_completion_tokens(), 11);
  EXPECT_EQ(task.max_prompt_tokens(), 12);
}

TEST(ArithmeticRewardTaskTest, RejectsBadOptions) {
  absl::StatusOr<ArithmeticRewardTask> bad_weight =
      ArithmeticRewardTask::create({}, 1, {.format_weight = -0.5});
  ASSERT_FALSE(bad_weight.ok());
  EXPECT_NE(bad_weight.status().message().find("format_weight"), std::string_view::npos);
  absl::StatusOr<ArithmeticRewardTask> bad_digits = ArithmeticRewardTask::create({0, 3, "+"}, 1);
  ASSERT_FALSE(bad_digits.ok());
  EXPECT_NE(bad_digits.status().message().find("min_digits"), std::string_view::npos);
}

TEST(IsIntegerAnswerTest, Cases) {
  EXPECT_TRUE(is_integer_answer("0\n"));
  EXPECT_TRUE(is_integer_answer("-12\nmore"));
  EXPECT_FALSE(is_integer_answer("12"));
  EXPECT_FALSE(is_integer_answer("--1\n"));
  EXPECT_FALSE(is_integer_answer("1-\n"));
}

}  // namespace
}  // namespace sy
