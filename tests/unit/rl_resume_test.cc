// `switchyard rl` checkpoints and resumes: a run stopped at a checkpoint and resumed ends with
// the same policy, critic, optimizer states and per-step metrics, bit for bit, as one that
// ran straight through (PPO with an adaptive KL coefficient and shuffled minibatches, GRPO);
// SIGTERM writes a checkpoint and exits 0, and `--resume` finishes the run; resuming what
// cannot be resumed is a clear error.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "rl/rl_loop.h"
#include "tests/testing/small_model.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/json.h"
#include "trainer/safetensors.h"
#include "trainer/train.h"

namespace sy::rl {
namespace {
namespace fs = std::filesystem;

// The small model of rl_testing.h, pretrained for two steps (the init checkpoint), then PPO
// or GRPO on 1-digit arithmetic with every piece of state a resume must restore in play.
constexpr char kPretraining[] = R"pb(
  data { arithmetic { max_digits: 1 eval_examples: 4 } }
  optimizer { weight_decay: 0.01 grad_clip: 1.0 }
  train { steps: 2 micro_batch: 4 cpu_threads: 1 seed: 7 eval_interval: 0 }
  checkpoint { interval: 2 keep_last: 5 }
)pb";

constexpr char kPpo[] = R"pb(
  rl {
    algorithm: RL_PPO
    prompts_per_step: 4
    group_size: 2
    epochs: 2
    minibatches: 2
    lr: 1e-2
    critic_lr: 1e-2
    kl_coef: 0.05
    target_kl: 0.01
    kl_horizon: 100
    kl_in_reward: true
    temperature: 0.8
    max_new_tokens: 3
    eval_interval: 2
    eval_examples: 4
    arithmetic { max_digits: 1 }
  }
)pb";

constexpr char kGrpo[] = R"pb(
  rl {
    algorithm: RL_GRPO
    prompts_per_step: 4
    group_size: 4
    epochs: 2
    minibatches: 4
    lr: 1e-2
    kl_coef: 0.05
    max_new_tokens: 3
    eval_interval: 2
    eval_examples: 4
    arithmetic { max_digits: 1 }
  }
)pb";

std::string fresh_dir(const std::string& name) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir =
      fs::path(::testing::TempDir()) / absl::StrCat("switchyard_rl_", info->name(), "_", name);
  fs::remove_all(dir);
  return dir.string();
}

// The init checkpoint: two pretraining steps of kModel.
std::string pretrain() {
  switchyard::Experiment config;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(testing::kSmallModel, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(kPretraining, &config));
  const std::string dir = fresh_dir("init");
  std::ostringstream log;
  const absl::Status status = train(config, {.run_dir = dir}, log);
  SY_CHECK(status.ok()) << status << "\n" << log.str();
  return dir;
}

switchyard::Experiment rl_config(const char* rl, const std::string& init, int steps) {
  switchyard::Experiment config;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(testing::kSmallModel, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(kPretraining, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(rl, &config));
  config.mutable_rl()->set_init_checkpoint(init);
  config.mutable_rl()->set_steps(steps);
  const absl::Status status = validate_experiment(config);
  SY_CHECK(status.ok()) << status;
  return config;
}

absl::Status run(const switchyard::Experiment& config, const std::string& dir, bool resume) {
  std::ostringstream log;
  return run_rl(config, {.run_dir = dir, .resume = resume}, log);
}

// Per-step numbers of metrics.jsonl (timings left out), by step and kind of line.
std::map<std::pair<int64_t, bool>, std::map<std::string, double>> step_metrics(
    const std::string& dir) {
  std::map<std::pair<int64_t, bool>, std::map<std::string, double>> out;
  std::ifstream in(fs::path(dir) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = parse_json(line);
    SY_CHECK(j.ok()) << line;
    const bool eval = j->find("eval_accuracy") != nullptr;
    auto& numbers = out[{j->find("step")->as_int(), eval}];
    for (const auto& [key, value] : j->as_object()) {
      // Clock readings (time_*), rates derived from them (*_per_s) and the process's peak
      // memory (peak_*: a resumed process has its own) differ run to run.
      const bool clock = absl::StartsWith(key, "time_") || absl::EndsWith(key, "_per_s") ||
                         absl::StartsWith(key, "peak_");
      if (!clock && value.is_number()) numbers[key] = value.as_double();
    }
  }
  return out;
}

void expect_same_tensors(const std::string& a, const std::string& b) {
  auto ta = load_safetensors(a), tb = load_safetensors(b);
  ASSERT_TRUE(ta.ok()) << ta.status();
  ASSERT_TRUE(tb.ok()) << tb.status();
  ASSERT_EQ(ta->tensors.size(), tb->tensors.size()) << a;
  for (const auto& [name, t] : ta->tensors) {
    ASSERT_TRUE(tb->tensors.count(name)) << name << " missing from " << b;
    EXPECT_EQ(t.to_f32_vector(), tb->tensors.at(name).to_f32_vector()) << name << " of " << a;
  }
}

TEST(RlResume, AResumedRunIsBitIdenticalToAnUninterruptedOne) {
  const std::string init = pretrain();
  for (const char* rl : {kPpo, kGrpo}) {
    const bool ppo = rl == kPpo;
    SCOPED_TRACE(ppo ? "PPO" : "GRPO");
    const std::string full = fresh_dir("full"), resumed = fresh_dir("resumed");
    ASSERT_TRUE(run(rl_config(rl, init, 4), full, false).ok());
    ASSERT_TRUE(run(rl_config(rl, init, 2), resumed, false).ok());
    ASSERT_TRUE(run(rl_config(rl, init, 4), resumed, true).ok());

    const auto a = step_metrics(full), b = step_metrics(resumed);
    EXPECT_EQ(a, b);
    ASSERT_TRUE(a.count({4, false})) << "step 4 was logged";
    if (ppo) {
      // The adaptive coefficient moved, so the resumed run had to restore it.
      EXPECT_NE(a.at({4, false}).at("kl_coef"), 0.05);
    }
    const std::string step4 = "checkpoints/step_00000004/";
    for (const char* file : {"model.safetensors", "optimizer-rank0.safetensors"}) {
      expect_same_tensors(absl::StrCat(full, "/", step4, file),
                          absl::StrCat(resumed, "/", step4, file));
      if (ppo) {
        expect_same_tensors(absl::StrCat(full, "/critic/", step4, file),
                            absl::StrCat(resumed, "/critic/", step4, file));
      }
    }
    EXPECT_EQ(ppo, fs::exists(fs::path(full) / "critic"));
  }
}

TEST(RlResume, WhatCannotBeResumedIsAClearError) {
  const std::string init = pretrain();
  const std::string dir = fresh_dir("run");
  absl::Status s = run(rl_config(kPpo, init, 2), dir, true);
  EXPECT_TRUE(absl::StrContains(s.message(), "no checkpoint in")) << s;

  ASSERT_TRUE(run(rl_config(kPpo, init, 2), dir, false).ok());
  s = run(rl_config(kPpo, init, 2), dir, true);
  EXPECT_TRUE(absl::StrContains(s.message(), "already holds step 2 of rl.steps = 2")) << s;

  fs::remove(fs::path(dir) / "rl_state" / "step_00000002.json");
  s = run(rl_config(kPpo, init, 3), dir, true);
  EXPECT_TRUE(absl::StrContains(s.message(), "rl_state/step_00000002.json: missing")) << s;

  fs::remove_all(fs::path(dir) / "critic");
  s = run(rl_config(kPpo, init, 3), dir, true);
  EXPECT_TRUE(absl::StrContains(s.message(), "the critic of")) << s;
}

// Runs the switchyard binary; returns (exit code, output).
std::pair<int, std::string> run_binary(const std::string& args) {
  const std::string out = fresh_dir("output.txt");
  const int status =
      std::system(absl::StrCat(SWITCHYARD_BINARY, " ", args, " > ", out, " 2>&1").c_str());
  std::ifstream in(out);
  std::stringstream text;
  text << in.rdbuf();
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, text.str()};
}

TEST(RlCommand, SigtermWritesACheckpointAndExitsCleanlyThenResumeFinishes) {
  const std::string init = fresh_dir("init"), dir = fresh_dir("rl");
  auto [code, text] = run_binary(absl::StrCat(
      "train --config ", SWITCHYARD_SOURCE_DIR, "/configs/tiny.textproto --run_dir ", init,
      " --set 'train { steps: 2 eval_interval: 0 } schedule { warmup_steps: 0 }'"));
  ASSERT_EQ(code, 0) << text;
  const std::string config = fresh_dir("rl.textproto");
  std::ofstream(config) << "device: DEVICE_CPU\nrl { init_checkpoint: \"" << init
                        << "\" steps: 100000 prompts_per_step: 4 group_size: 4 "
                           "eval_examples: 4 }\n";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    execl(SWITCHYARD_BINARY, SWITCHYARD_BINARY, "rl", "--config", config.c_str(), "--run_dir",
          dir.c_str(), nullptr);
    _exit(127);
  }
  // Stop it once it has logged a step.
  auto steps_logged = [&] {
    std::ifstream in(fs::path(dir) / "metrics.jsonl");
    int n = 0;
    for (std::string line; std::getline(in, line);) n += absl::StrContains(line, "reward_mean");
    return n;
  };
  for (int i = 0; i < 600 && steps_logged() == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
  auto latest = latest_checkpoint(dir);
  ASSERT_TRUE(latest.ok()) << latest.status();
  const int64_t stopped = steps_logged();
  EXPECT_EQ(*latest, absl::StrFormat("%s/checkpoints/step_%08d", dir, stopped));

  std::tie(code, text) =
      run_binary(absl::StrCat("rl --resume ", dir, " --set 'rl { steps: ", stopped + 2, " }'"));
  EXPECT_EQ(code, 0) << text;
  EXPECT_TRUE(absl::StrContains(text, absl::StrCat("resumed from ", dir, " at step ", stopped)))
      << text;
  EXPECT_EQ(steps_logged(), stopped + 2);
  EXPECT_TRUE(fs::exists(fs::path(dir) / "checkpoints" / absl::StrFormat("step_%08d", stopped + 2) /
                         "manifest.json"));
  // --resume takes the config and run directory from the run.
  std::tie(code, text) = run_binary(absl::StrCat("rl --resume ", dir, " --run_dir /tmp/x"));
  EXPECT_NE(code, 0);
  EXPECT_TRUE(absl::StrContains(text, "drop --config and --run_dir")) << text;
}

}  // namespace
}  // namespace sy::rl
