#include "rl/math_answer.h"

#include <filesystem>
#include <fstream>
#include <set>

#include "gtest/gtest.h"
#include "rl/prompt_file_task.h"

namespace sy {
namespace {

TEST(MathAnswerTest, FinalAnswerIsTheLastBoxedElseTheLastNumber) {
  EXPECT_EQ(extract_final_answer("so 3 + 4 = 7, and doubling gives 14."), "14");
  EXPECT_EQ(extract_final_answer("first \\boxed{2} then \\boxed{\\frac{3}{4}} done 99"),
            "\\frac{3}{4}");
  EXPECT_EQ(extract_final_answer("costs $1,250.50 in total"), "$1,250.50");
  EXPECT_EQ(extract_final_answer("it is -12 degrees"), "-12");
  EXPECT_EQ(extract_final_answer("3/4 of them"), "3/4");
  EXPECT_EQ(extract_final_answer("about 40% of it"), "40%");
  EXPECT_EQ(extract_final_answer("lists 1, 2, 3"), "3");
  EXPECT_EQ(extract_final_answer("no numbers here"), std::nullopt);
  EXPECT_EQ(extract_final_answer("\\boxed{unclosed 5"), "5");
}

TEST(MathAnswerTest, NumbersAreComparedByValue) {
  EXPECT_TRUE(answers_match("1,000", "1000"));
  EXPECT_TRUE(answers_match("1000.0", "1000"));
  EXPECT_TRUE(answers_match("3/4", "0.75"));
  EXPECT_TRUE(answers_match("\\frac{3}{4}", "0.75"));
  EXPECT_TRUE(answers_match("$5", "5"));
  EXPECT_TRUE(answers_match("75%", "75"));
  EXPECT_TRUE(answers_match("-$3", "-3"));
  EXPECT_TRUE(answers_match("42.", "42"));
  EXPECT_FALSE(answers_match("1001", "1000"));
  EXPECT_FALSE(answers_match("0.7", "3/4"));
  EXPECT_FALSE(answers_match("-5", "5"));
  EXPECT_FALSE(answers_match("1,00", "100"));  // not a thousands separator
  EXPECT_TRUE(answers_match(" x + 1 ", "x+1"));
  EXPECT_TRUE(answers_match("\\text{Tuesday}", "Tuesday"));
  EXPECT_FALSE(answers_match("", ""));
  EXPECT_EQ(parse_number("1,234,567"), 1234567.0);
  EXPECT_EQ(parse_number("7/0"), std::nullopt);
  EXPECT_EQ(parse_number("abc"), std::nullopt);
}

TEST(MathAnswerTest, ReferenceAnswersFollowGsm8kHashes) {
  EXPECT_EQ(reference_answer("She has 3 + 4 = 7 apples.\n#### 7"), "7");
  EXPECT_EQ(reference_answer("Total 1,200 then 12\n#### 1,200"), "1,200");
  EXPECT_EQ(reference_answer("so the answer is \\boxed{12}"), "12");
  EXPECT_EQ(reference_answer("42"), "42");
  EXPECT_EQ(reference_answer("####   "), std::nullopt);
}

std::string prompts(const std::string& name) {
  return std::string(SWITCHYARD_SOURCE_DIR) + "/tests/data/prompts/" + name;
}

TEST(PromptFileTaskTest, ReadsGsm8kStyleFilesAndScoresWithTheVerifier) {
  auto task = MathPromptFileTask::create({.train_file = prompts("word_problems_train.jsonl"),
                                          .eval_file = prompts("word_problems_eval.jsonl"),
                                          .prompt_field = "question",
                                          .answer_field = "answer",
                                          .max_completion_tokens = 64,
                                          .seed = 3},
                                         {.format_weight = 0.1});
  ASSERT_TRUE(task.ok()) << task.status();
  EXPECT_EQ((*task)->train_size(), 32);
  EXPECT_EQ((*task)->eval_size(), 8);
  // The first eval line, in file order.
  std::ifstream in(prompts("word_problems_eval.jsonl"));
  std::string line;
  std::getline(in, line);
  Prompt p = (*task)->sample(0, Split::kHeldOut);
  EXPECT_NE(line.find(p.text), std::string::npos);
  const std::string answer = p.fields.find("answer")->as_string();
  EXPECT_NE(line.find("#### " + answer), std::string::npos);
  Score right = (*task)->score(p, "Let me think. The answer is \\boxed{" + answer + "}.");
  EXPECT_TRUE(right.correct);
  EXPECT_DOUBLE_EQ(right.reward, 1.1);
  Score wrong = (*task)->score(p, "The answer is 100000.");
  EXPECT_FALSE(wrong.correct);
  EXPECT_TRUE(wrong.format_ok);
  EXPECT_DOUBLE_EQ(wrong.reward, 0.1);
  Score none = (*task)->score(p, "I do not know.");
  EXPECT_FALSE(none.format_ok);
  EXPECT_DOUBLE_EQ(none.reward, 0.0);
  // Every training row appears once per pass of 32, in a seeded order.
  std::set<std::string> seen;
  for (uint64_t i = 0; i < 32; ++i) seen.insert((*task)->sample(i, Split::kTrain).text);
  EXPECT_EQ(seen.size(), 32u);
  EXPECT_EQ((*task)->sample(5, Split::kTrain).text, (*task)->sample(37, Split::kTrain).text);
}

std::string write_file(const std::string& name, const std::string& content) {
  std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << content;
  return path;
}

void expect_error(const std::string& file, const std::vector<std::string>& words) {
  auto task = MathPromptFileTask::create({.train_file = file,
                                          .eval_file = "",
                                          .prompt_field = "question",
                                          .answer_field = "answer",
                                          .max_completion_tokens = 8});
  ASSERT_FALSE(task.ok());
  for (const std::string& w : words)
    EXPECT_NE(task.status().message().find(w), std::string::npos) << task.status();
}

TEST(PromptFileTaskTest, BadLinesAreErrorsNamingFileLineAndField) {
  expect_error(
      write_file("missing_field.jsonl",
                 "{\"question\": \"1+1?\", \"answer\": \"2\"}\n\n{\"q\": \"x\", \"answer\": "
                 "\"3\"}\n"),
      {"missing_field.jsonl:3", "\"question\""});
  expect_error(write_file("not_json.jsonl", "{\"question\": \"1+1?\", \"answer\": \"2\"}\nnope\n"),
               {"not_json.jsonl:2", "not JSON"});
  expect_error(write_file("no_answer.jsonl", "{\"question\": \"1+1?\", \"answer\": \"two\"}\n"),
               {"no_answer.jsonl:1", "\"answer\"", "final answer"});
  expect_error(write_file("wrong_type.jsonl", "{\"question\": [1], \"answer\": \"2\"}\n"),
               {"wrong_type.jsonl:1", "\"question\"", "not a string"});
  expect_error(write_file("empty.jsonl", "\n"), {"empty.jsonl", "no prompts"});
  expect_error(::testing::TempDir() + "/no_such.jsonl", {"no_such.jsonl", "cannot open"});
  // A number as the answer field is its value.
  auto task = MathPromptFileTask::create(
      {.train_file = write_file("number.jsonl", "{\"question\": \"1+1?\", \"answer\": 2}\n"),
       .eval_file = "",
       .prompt_field = "question",
       .max_completion_tokens = 8});
  ASSERT_TRUE(task.ok()) << task.status();
  EXPECT_TRUE((*task)->score((*task)->sample(0, Split::kTrain), "=2").correct);
}

}  // namespace
}  // namespace sy
