// The RL loop with a JSONL prompt set, the math verifier and a tokenizer.json in the initial
// run directory (CPU, one process): prompts are encoded with that tokenizer through
// rl.prompt_template, its eos ends rollouts, completions are decoded with it for scoring, and
// bad prompt-set settings are errors naming the field.
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "parallel/local_communicator.h"
#include "rl/math_answer.h"
#include "rl/rl_loop.h"
#include "tests/testing/small_model.h"
#include "trainer/config.h"

namespace sy::rl {
namespace {
namespace fs = std::filesystem;

std::string source(const std::string& path) {
  return std::string(SWITCHYARD_SOURCE_DIR) + "/" + path;
}

// A directory with only the qwen2 fixture's tokenizer files: what create reads.
std::string tokenizer_run_dir() {
  const std::string dir = ::testing::TempDir() + "/rl_prompt_file_init";
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const char* f : {"tokenizer.json", "generation_config.json"})
    fs::copy_file(source(std::string("tests/data/tokenizers/qwen2/") + f), dir + "/" + f);
  return dir;
}

switchyard::Experiment config(const std::string& extra) {
  switchyard::Experiment c;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(testing::kSmallModel, &c));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(
      absl::StrCat(
          R"pb(
            model { vocab_size: 660 seq_len: 160 }
            optimizer { weight_decay: 0 grad_clip: 0 }
            train { steps: 1 micro_batch: 1 cpu_threads: 1 seed: 7 }
            rl {
              steps: 1
              prompts_per_step: 2
              group_size: 4
              lr: 1e-3
              max_new_tokens: 6
              eval_examples: 8
              task: TASK_MATH
              prompt_file { prompt_field: "question" answer_field: "answer" }
              prompt_template: "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
            }
            rl { init_checkpoint: ")pb",
          tokenizer_run_dir(), "\" prompt_file { train_file: \"",
          source("tests/data/prompts/word_problems_train.jsonl"), "\" eval_file: \"",
          source("tests/data/prompts/word_problems_eval.jsonl"), "\" } }"),
      &c));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(extra, &c)) << extra;
  const absl::Status status = validate_experiment(c);
  SY_CHECK(status.ok()) << status;
  return c;
}

TEST(RlPromptFileTest, PromptsGoThroughTheRunsTokenizerAndTemplate) {
  LocalCommunicator world;
  auto trainer = RlTrainer::create(config(""), world);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  RlTrainer& t = **trainer;
  EXPECT_EQ(t.tokenizer().kind(), "bpe");
  EXPECT_EQ(t.task().name(), "math");
  auto rollouts = t.rollout(0);
  ASSERT_TRUE(rollouts.ok()) << rollouts.status();
  ASSERT_EQ(rollouts->prompts.size(), 2u);
  const Prompt& p = rollouts->prompts[0];
  auto expected = t.tokenizer().encode(
      "<|im_start|>user\n" + p.text + "<|im_end|>\n<|im_start|>assistant\n", true);
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(t.encode_prompt(p), *expected);
  EXPECT_EQ(t.encode_prompt(p)[0], *t.tokenizer().token_to_id("<|im_start|>"));
  // Each completion ends at the tokenizer's eos (<|im_end|>) or at max_new_tokens.
  const int32_t eos = *t.tokenizer().token_to_id("<|im_end|>");
  for (const auto& c : rollouts->completions) {
    ASSERT_FALSE(c.empty());
    EXPECT_TRUE(c.back() == eos || c.size() == 6u);
    for (size_t i = 0; i + 1 < c.size(); ++i) EXPECT_NE(c[i], eos);
  }
  // Scoring decodes with the tokenizer: a completion spelling the answer scores correct.
  const std::string answer = p.fields.find("answer")->as_string();
  auto right = t.tokenizer().encode("So it is " + answer + ".", false);
  right->push_back(eos);
  EXPECT_EQ(t.completion_text(*right), "So it is " + answer + ".");
  EXPECT_TRUE(t.task().score(p, t.completion_text(*right)).correct);

  auto metrics = t.step(0);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_GT(metrics->response_length, 0);
  const EvalMetrics eval = t.evaluate();
  EXPECT_EQ(eval.total, 8);
}

TEST(RlPromptFileTest, BadSettingsAreErrorsNamingTheField) {
  LocalCommunicator world;
  auto expect_error = [&](const std::string& extra, const std::string& word) {
    auto trainer = RlTrainer::create(config(extra), world);
    ASSERT_FALSE(trainer.ok()) << extra;
    EXPECT_NE(trainer.status().message().find(word), std::string::npos) << trainer.status();
  };
  expect_error("rl { prompt_template: \"Q: {question}\" }", "rl.prompt_template");
  expect_error("rl { eval_examples: 9 }", "rl.eval_examples");
  expect_error("rl { max_new_tokens: 0 }", "rl.max_new_tokens");
  expect_error("rl { prompt_file { prompt_field: \"prompt\" } }", "\"prompt\"");
  expect_error("rl { prompt_file { train_file: \"/no/such.jsonl\" } }", "/no/such.jsonl");
  expect_error("model { vocab_size: 600 }", "model.vocab_size");
  expect_error("rl { max_new_tokens: 140 }", "model.seq_len");
}

}  // namespace
}  // namespace sy::rl
