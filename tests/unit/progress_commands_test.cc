// Checkpoint progress in the commands that load and save, off a terminal (a log file sees the
// quiet summaries alone): `train` writes one summary per save with its step and the bytes on
// disk, and one per resume load with the bytes of the tensors it filled; `rl` does the same for
// its init checkpoint (ours or a Hugging Face model), for each save of the critic and the
// policy and for a resume; `score` summarises its load and then its texts and tokens.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "kernels/check.h"
#include "models/param_store.h"
#include "models/transformer.h"
#include "parallel/local_communicator.h"
#include "rl/rl_run.h"
#include "rl/rl_trainer.h"
#include "tests/testing/small_model.h"
#include "trainer/checkpoint.h"
#include "trainer/cli/score.h"
#include "trainer/config.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/json.h"
#include "trainer/optimizer.h"
#include "trainer/run.h"
#include "trainer/train.h"

namespace sy {
namespace {
namespace fs = std::filesystem;

constexpr char kTraining[] = R"pb(
  data { arithmetic { max_digits: 1 eval_examples: 2 } }
  train { steps: 4 micro_batch: 4 cpu_threads: 1 seed: 7 eval_interval: 0 }
  checkpoint { interval: 2 keep_last: 5 }
)pb";

constexpr char kPpo[] = R"pb(
  rl {
    algorithm: RL_PPO
    prompts_per_step: 2
    group_size: 2
    epochs: 1
    minibatches: 1
    max_new_tokens: 3
    eval_interval: 2
    eval_examples: 2
    arithmetic { max_digits: 1 }
  }
)pb";

switchyard::Experiment config_with(const std::string& extra) {
  switchyard::Experiment config;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(testing::kSmallModel, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(kTraining, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(extra, &config)) << extra;
  const absl::Status valid = validate_experiment(config);
  SY_CHECK(valid.ok()) << valid;
  return config;
}

std::string fresh_dir(const std::string& name) {
  const fs::path dir =
      fs::path(::testing::TempDir()) / absl::StrCat("switchyard_progress_commands_", name);
  fs::remove_all(dir);
  return dir.string();
}

// The lines of `log` that start with `prefix`.
std::vector<std::string> lines_starting(const std::string& log, const std::string& prefix) {
  std::vector<std::string> out;
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);)
    if (absl::StartsWith(line, prefix)) out.push_back(line);
  return out;
}

std::string mib(int64_t bytes) { return absl::StrFormat("%.1f MiB", bytes / double(1 << 20)); }

// A summary over bytes: "<what>: <MiB> in <time>( (<rate>))".
std::regex bytes_summary(const std::string& what, int64_t bytes) {
  return std::regex(absl::StrCat(what, ": ", mib(bytes), R"( in [0-9.]+s( \([0-9.]+ MiB/s\))?)"));
}

// What a save's summary counts: the checkpoint's safetensors files on disk.
int64_t safetensors_bytes(const std::string& checkpoint_dir) {
  int64_t bytes = 0;
  for (const auto& f : fs::directory_iterator(checkpoint_dir))
    if (f.path().extension() == ".safetensors") bytes += static_cast<int64_t>(f.file_size());
  return bytes;
}

// What a load's summary counts: the tensors it fills, weights and (for a resume) moments.
int64_t tensor_bytes(const switchyard::Experiment& config, bool with_optimizer, bool value_head) {
  ParamStore store;
  Transformer model(model_spec_from_config(config), store, {}, value_head);
  int64_t bytes = 0;
  for (const Param* p : store.params()) bytes += static_cast<int64_t>(p->value.nbytes());
  if (with_optimizer) {
    AdamW optimizer(store, optimizer_settings(config.optimizer()));
    for (const auto& [name, t] : optimizer.state()) bytes += static_cast<int64_t>(t.nbytes());
  }
  return bytes;
}

void expect_one_line(const std::string& log, const std::string& prefix, const std::regex& want) {
  const std::vector<std::string> found = lines_starting(log, prefix);
  ASSERT_EQ(found.size(), 1u) << "lines starting \"" << prefix << "\" in:\n" << log;
  EXPECT_TRUE(std::regex_match(found[0], want)) << found[0];
}

TEST(TrainProgress, EachSaveAndTheResumeLoadWriteOneSummary) {
  const std::string dir = fresh_dir("train");
  std::ostringstream first;
  ASSERT_TRUE(train(config_with(""), {.run_dir = dir}, first).ok()) << first.str();
  const std::string ckpt = dir + "/checkpoints/step_0000000";
  // Steps 2 and 4, once each, and no other checkpoint line (the loop's own line is gone).
  EXPECT_EQ(lines_starting(first.str(), "save checkpoint ").size(), 2u) << first.str();
  expect_one_line(first.str(), "save checkpoint step_00000002:",
                  bytes_summary("save checkpoint step_00000002", safetensors_bytes(ckpt + "2")));
  expect_one_line(first.str(), "save checkpoint step_00000004:",
                  bytes_summary("save checkpoint step_00000004", safetensors_bytes(ckpt + "4")));
  EXPECT_TRUE(lines_starting(first.str(), "checkpoint ").empty()) << first.str();
  EXPECT_TRUE(lines_starting(first.str(), "load ").empty()) << first.str();

  // Resumed to step 6: the load of step 4 (weights and AdamW moments), then one save.
  const auto longer = config_with("train { steps: 6 }");
  std::ostringstream second;
  ASSERT_TRUE(train(longer, {.run_dir = dir, .resume = true}, second).ok()) << second.str();
  const std::string load = absl::StrCat("load ", ckpt, "4");
  expect_one_line(second.str(), "load ", bytes_summary(load, tensor_bytes(longer, true, false)));
  EXPECT_TRUE(
      absl::StrContains(second.str(), absl::StrCat("\nresumed from ", ckpt, "4 at step 4\n")))
      << second.str();
  EXPECT_EQ(lines_starting(second.str(), "save checkpoint ").size(), 1u) << second.str();
  expect_one_line(second.str(), "save checkpoint step_00000006:",
                  bytes_summary("save checkpoint step_00000006", safetensors_bytes(ckpt + "6")));
}

TEST(RlProgress, TheInitLoadEachSaveAndTheResumeWriteOneSummaryEach) {
  const std::string init = fresh_dir("rl_init"), dir = fresh_dir("rl_run");
  std::ostringstream pretraining;
  ASSERT_TRUE(train(config_with("train { steps: 2 }"), {.run_dir = init}, pretraining).ok())
      << pretraining.str();
  auto rl_config = [&](int steps) {
    auto config = config_with(kPpo);
    config.mutable_rl()->set_init_checkpoint(init);
    config.mutable_rl()->set_steps(steps);
    return config;
  };
  const int64_t policy_bytes = tensor_bytes(rl_config(2), false, false);
  const std::regex init_load =
      bytes_summary(absl::StrCat("load ", init, "/checkpoints/step_00000002"), policy_bytes);

  std::ostringstream first;
  ASSERT_TRUE(rl::run_rl(rl_config(2), {.run_dir = dir}, first).ok()) << first.str();
  expect_one_line(first.str(), "load ", init_load);
  // The critic's checkpoint, then the policy's: one line each.
  const std::vector<std::string> saves = lines_starting(first.str(), "save checkpoint ");
  ASSERT_EQ(saves.size(), 2u) << first.str();
  EXPECT_TRUE(std::regex_match(
      saves[0], bytes_summary("save checkpoint step_00000002",
                              safetensors_bytes(dir + "/critic/checkpoints/step_00000002"))))
      << saves[0];
  EXPECT_TRUE(std::regex_match(
      saves[1], bytes_summary("save checkpoint step_00000002",
                              safetensors_bytes(dir + "/checkpoints/step_00000002"))))
      << saves[1];

  // Resumed: the init checkpoint (the reference), the policy's and the critic's states.
  std::ostringstream second;
  ASSERT_TRUE(rl::run_rl(rl_config(3), {.run_dir = dir, .resume = true}, second).ok())
      << second.str();
  const std::vector<std::string> loads = lines_starting(second.str(), "load ");
  ASSERT_EQ(loads.size(), 3u) << second.str();
  EXPECT_TRUE(std::regex_match(loads[0], init_load)) << loads[0];
  EXPECT_TRUE(std::regex_match(
      loads[1], bytes_summary(absl::StrCat("load ", dir, "/checkpoints/step_00000002"),
                              tensor_bytes(rl_config(3), true, false))))
      << loads[1];
  EXPECT_TRUE(std::regex_match(
      loads[2], bytes_summary(absl::StrCat("load ", dir, "/critic/checkpoints/step_00000002"),
                              tensor_bytes(rl_config(3), true, true))))
      << loads[2];
  EXPECT_EQ(lines_starting(second.str(), "save checkpoint step_00000003: ").size(), 2u)
      << second.str();
  EXPECT_TRUE(lines_starting(second.str(), "save checkpoint step_00000002").empty())
      << second.str();
}

// A Hugging Face directory as rl.init_checkpoint: the read of its tensors, summarised.
TEST(RlProgress, AHuggingFaceInitCheckpointReadWritesOneSummary) {
  const std::string hf = std::string(SWITCHYARD_SOURCE_DIR) + "/tests/data/hf/mixtral";
  auto config = experiment_from_hf(hf);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(google::protobuf::TextFormat::MergeFromString(
      absl::StrCat("device: DEVICE_CPU train { cpu_threads: 1 } ", kPpo), &*config));
  config->mutable_rl()->set_init_checkpoint(hf);
  LocalCommunicator world;
  auto trainer = rl::RlTrainer::create(*config, world);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  int64_t bytes = 0;
  for (const Param* p : (*trainer)->policy_store().params())
    bytes += static_cast<int64_t>(p->value.nbytes());
  std::ostringstream out;
  ASSERT_TRUE((*trainer)->load_policy_weights(hf, &out).ok()) << out.str();
  EXPECT_TRUE(std::regex_match(
      out.str(), std::regex(absl::StrCat(R"(read [^\n]*/tests/data/hf/mixtral: )", mib(bytes),
                                         R"( in [0-9.]+s( \([0-9.]+ MiB/s\))?\n)"))))
      << out.str();
}

TEST(ScoreProgress, TheLoadAndTheTextsEachWriteOneSummary) {
  const std::string run = fresh_dir("score_run");
  std::ostringstream log;
  const auto config = config_with("train { steps: 2 }");
  ASSERT_TRUE(train(config, {.run_dir = run}, log).ok()) << log.str();
  const std::string input = fresh_dir("score_in.jsonl"), output = input + ".out";
  std::ofstream(input) << R"({"text": "3+4=7"})"
                       << "\n"
                       << R"({"text": "9"})"
                       << "\n"
                       << R"({"text": "12-5=7\n"})"
                       << "\n";
  std::ostringstream out;
  const absl::Status scored_ok =
      run_score_command({"--checkpoint", run, "--input", input, "--output", output}, out);
  ASSERT_TRUE(scored_ok.ok()) << scored_ok << "\n" << out.str();

  // The tokens scored (each text's after its first) and their mean, from what was written.
  int64_t tokens = 0;
  double total = 0;
  std::ifstream scored(output);
  for (std::string line; std::getline(scored, line);) {
    auto j = parse_json(line);
    ASSERT_TRUE(j.ok()) << line;
    tokens += static_cast<int64_t>(j->find("logprobs")->as_array().size());
    total += j->find("total_logprob")->as_double();
  }
  ASSERT_GT(tokens, 0);
  const std::string text = out.str();
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 2) << text;
  expect_one_line(text, "load ",
                  bytes_summary(absl::StrCat("load ", run, "/checkpoints/step_00000002"),
                                tensor_bytes(config, false, false)));
  std::smatch m;
  const std::vector<std::string> found = lines_starting(text, "score: ");
  ASSERT_EQ(found.size(), 1u) << text;
  ASSERT_TRUE(std::regex_match(
      found[0], m,
      std::regex(absl::StrCat(R"(score: 3 texts in [0-9.]+s( \([0-9.k]+ texts/s\))? \| )", tokens,
                              R"( tokens \([0-9.k]+ tok/s\) \| mean log-prob (-?[0-9.]+), )",
                              R"(perplexity ([0-9.]+) -> )", output))))
      << found[0];
  EXPECT_NEAR(std::stod(m[2]), total / tokens, 1e-4) << found[0];
}

}  // namespace
}  // namespace sy
