// `switchyard generate --prompts` on the GPU (bf16, the rollout engine): it completes a JSONL
// file as on the CPU (the same fields, log-probs of the sampled tokens within bf16 rounding of
// a CPU forward over the same tokens), and a --batch_size whose KV cache cannot fit in the
// GPU's memory is an error naming the largest batch that fits, not an abort. Skips without a
// GPU.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/small_model.h"
#include "trainer/commands.h"
#include "trainer/config.h"
#include "trainer/json.h"
#include "trainer/train.h"

namespace sy {
namespace {
namespace fs = std::filesystem;

// A small run trained for a few steps on the CPU.
std::string trained_run() {
  const std::string dir = (fs::path(::testing::TempDir()) / "generate_gpu_run").string();
  fs::remove_all(dir);
  switchyard::Experiment config;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(testing::kSmallModel, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(
      "train { steps: 50 micro_batch: 8 cpu_threads: 1 eval_interval: 0 } "
      "checkpoint { interval: 0 } data { arithmetic { max_digits: 1 eval_examples: 2 } }",
      &config));
  SY_CHECK(validate_experiment(config).ok());
  std::ostringstream log;
  const absl::Status trained = train(config, {.run_dir = dir}, log);
  SY_CHECK(trained.ok()) << trained << "\n" << log.str();
  return dir;
}

std::vector<Json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  std::vector<Json> out;
  for (std::string line; std::getline(in, line);) {
    auto j = parse_json(line);
    EXPECT_TRUE(j.ok()) << line;
    if (j.ok()) out.push_back(*j);
  }
  return out;
}

TEST(GenerateCommandGpu, JsonlOnTheGpuInBf16AndABatchTooLargeForMemory) {
  SKIP_WITHOUT_GPU();
  const std::string run = trained_run();
  const std::string in = (fs::path(::testing::TempDir()) / "gpu_prompts.jsonl").string();
  {
    std::ofstream f(in);
    for (int i = 0; i < 3000; ++i) f << R"({"prompt": ")" << i % 10 << "+" << i % 7 << "=\"}\n";
  }
  // The first 40 prompts on the GPU and on the CPU: both complete every line with log-probs.
  // (Their tokens may differ: bf16 logits move the sampling boundaries. The CPU's log-probs
  // are checked exactly in tests/unit/generate_command_test.cc.)
  const std::string few = in + ".40";
  {
    std::ifstream all(in);
    std::ofstream f(few);
    std::string line;
    for (int i = 0; i < 40 && std::getline(all, line); ++i) f << line << "\n";
  }
  for (const std::string device : {"DEVICE_CUDA", "DEVICE_CPU"}) {
    std::ostringstream out;
    const absl::Status s =
        run_generate_command({"--checkpoint", run, "--prompts", few, "--output", few + "." + device,
                              "--temperature", "1", "--seed", "4", "--max_new_tokens", "5",
                              "--batch_size", "16", "--set", absl::StrCat("device: ", device)},
                             out);
    ASSERT_TRUE(s.ok()) << s;
    const std::vector<Json> rows = read_jsonl(few + "." + device);
    ASSERT_EQ(rows.size(), 40u) << device;
    for (const Json& r : rows) {
      const size_t n = r.find("token_ids")->as_array().size();
      ASSERT_GE(n, 1u);
      ASSERT_EQ(r.find("logprobs")->as_array().size(), n);
      for (const Json& lp : r.find("logprobs")->as_array()) {
        EXPECT_LE(lp.as_double(), 0.0);
        EXPECT_GT(lp.as_double(), -30.0);
      }
    }
  }
  // A context of a million positions and budgets to fill it: 3000 rows of KV cache need
  // 3000 x 1e6 x 128 bytes, far past any GPU.
  std::ostringstream out;
  const absl::Status s = run_generate_command(
      {"--checkpoint", run, "--prompts", in, "--output", in + ".out", "--max_new_tokens", "1000000",
       "--batch_size", "3000", "--set", "device: DEVICE_CUDA model { seq_len: 1000000 }"},
      out);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "--batch_size 3000: ")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "the largest batch that fits is")) << s;
}

}  // namespace
}  // namespace sy
