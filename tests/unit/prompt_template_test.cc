// Prompt templates: parsing, and `generate --prompt_template` equal to spelling the templated
// prompt out (CPU, a small trained run).
#include "trainer/data/prompt_template.h"

#include <filesystem>
#include <sstream>

#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "tests/testing/small_model.h"
#include "trainer/commands.h"
#include "trainer/config.h"
#include "trainer/train.h"

namespace sy {
namespace {
namespace fs = std::filesystem;

TEST(PromptTemplateTest, PutsThePromptInItsSlot) {
  auto t = PromptTemplate::parse("<|im_start|>user\n{prompt}<|im_end|>\n", "x");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->apply("2+2?"), "<|im_start|>user\n2+2?<|im_end|>\n");
  EXPECT_EQ(PromptTemplate().apply("as is"), "as is");
  auto plain = PromptTemplate::parse("{prompt}", "x");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->apply("{prompt} stays"), "{prompt} stays");
  auto none = PromptTemplate::parse("Q: {question}", "rl.prompt_template");
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("rl.prompt_template"), std::string::npos);
  EXPECT_NE(none.status().message().find("{prompt}"), std::string::npos);
  EXPECT_FALSE(PromptTemplate::parse("{prompt}{prompt}", "x").ok());
}

TEST(PromptTemplateTest, GenerateAppliesTheTemplate) {
  const std::string run = (fs::path(::testing::TempDir()) / "prompt_template_run").string();
  fs::remove_all(run);
  switchyard::Experiment config;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(testing::kSmallModel, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(
      "model { vocab_size: 128 seq_len: 32 } "
      "train { steps: 2 micro_batch: 2 cpu_threads: 1 eval_interval: 0 } "
      "checkpoint { interval: 0 } data { arithmetic { max_digits: 1 eval_examples: 2 } }",
      &config));
  SY_CHECK(validate_experiment(config).ok());
  std::ostringstream log;
  ASSERT_TRUE(train(config, {.run_dir = run}, log).ok()) << log.str();

  auto generate = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"--checkpoint", run, "--max_new_tokens", "6",
                                     "--stop_at_eos=false"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::ostringstream out;
    absl::Status s = run_generate_command(args, out);
    EXPECT_TRUE(s.ok()) << s;
    return out.str();
  };
  const std::string spelled = generate({"--prompt", "Q: 3+4="});
  const std::string templated = generate({"--prompt", "3+4", "--prompt_template", "Q: {prompt}="});
  // The output is the given prompt then the completion: the completions agree.
  ASSERT_TRUE(spelled.starts_with("Q: 3+4="));
  ASSERT_TRUE(templated.starts_with("3+4"));
  EXPECT_EQ(spelled.substr(7), templated.substr(3));

  std::ostringstream out;
  absl::Status bad = run_generate_command(
      {"--checkpoint", run, "--prompt", "1", "--prompt_template", "no slot"}, out);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("--prompt_template"), std::string::npos) << bad;
}

}  // namespace
}  // namespace sy
