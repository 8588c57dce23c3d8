// Fault injection into the RL loop on CPU (set_batch_hook_for_testing): a NaN or infinite KL,
// reward or advantage makes the step take no update (weights, optimizer state and the
// adaptive KL coefficient unchanged), counted and logged like a skipped training step, and
// more than train.max_skipped_steps such steps in a row end the run with a clear error; an
// infinite KL with rl.target_kl no longer aborts the process.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "parallel/local_communicator.h"
#include "rl/rl_loop.h"
#include "tests/testing/small_model.h"
#include "trainer/config.h"
#include "trainer/json.h"
#include "trainer/safetensors.h"
#include "trainer/train.h"

namespace sy::rl {
namespace {
namespace fs = std::filesystem;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNan = std::numeric_limits<float>::quiet_NaN();

constexpr char kPretraining[] = R"pb(
  data { arithmetic { max_digits: 1 eval_examples: 4 } }
  optimizer { weight_decay: 0.01 grad_clip: 1.0 }
  train { steps: 2 micro_batch: 4 cpu_threads: 1 seed: 7 eval_interval: 0 }
  checkpoint { interval: 2 keep_last: 5 }
)pb";

// PPO with the adaptive KL controller (rl.target_kl): the case that used to hit a CHECK.
constexpr char kPpo[] = R"pb(
  rl {
    init_checkpoint: "unused"
    algorithm: RL_PPO
    prompts_per_step: 4
    group_size: 2
    minibatches: 2
    lr: 1e-2
    critic_lr: 1e-2
    kl_coef: 0.05
    target_kl: 0.01
    kl_horizon: 100
    temperature: 0.8
    max_new_tokens: 3
    eval_examples: 4
    arithmetic { max_digits: 1 }
  }
)pb";

constexpr char kGrpo[] = R"pb(
  rl {
    init_checkpoint: "unused"
    algorithm: RL_GRPO
    prompts_per_step: 4
    group_size: 4
    lr: 1e-2
    kl_coef: 0.05
    target_kl: 0.01
    max_new_tokens: 3
    eval_examples: 4
    arithmetic { max_digits: 1 }
  }
)pb";

switchyard::Experiment config_of(const char* rl, const std::string& extra = "") {
  switchyard::Experiment config;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(testing::kSmallModel, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(kPretraining, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(rl, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(extra, &config)) << extra;
  const absl::Status status = validate_experiment(config);
  SY_CHECK(status.ok()) << status;
  return config;
}

std::unique_ptr<RlTrainer> make_trainer(const switchyard::Experiment& config, Communicator& world) {
  auto trainer = RlTrainer::create(config, world);
  SY_CHECK(trainer.ok()) << trainer.status();
  return std::move(*trainer);
}

// The first completion token of row 0 (where the mask is 1).
int64_t first_completion_token(const Batch& batch) {
  const std::vector<float> mask = batch.mask.to_f32_vector();
  for (int64_t i = 0; i < batch.inputs.dim(1); ++i)
    if (mask[i] != 0) return i;
  SY_CHECK(false) << "row 0 has no completion token";
  return -1;
}

enum class Fault { kRefLogpInf, kOldLogpNan, kRewardNan };

// A hook that injects `fault` at the 0-based steps `steps`.
BatchHook inject(Fault fault, std::set<int64_t> steps) {
  return [fault, steps](int64_t step, std::vector<float>& rewards, Batch& batch) {
    if (!steps.count(step)) return;
    const int64_t i = first_completion_token(batch);
    switch (fault) {
      case Fault::kRefLogpInf:  // the reference deems a sampled token impossible
        batch.ref_logp.data<float>()[i] = -kInf;
        break;
      case Fault::kOldLogpNan:
        batch.old_logp.data<float>()[i] = kNan;
        break;
      case Fault::kRewardNan:
        rewards[0] = kNan;
        break;
    }
  };
}

std::map<std::string, std::vector<float>> weights(ParamStore& store) {
  std::map<std::string, std::vector<float>> out;
  for (const Param* p : store.params()) out[p->name] = p->value.to_f32_vector();
  return out;
}

class RlDivergence : public ::testing::Test {
 protected:
  void TearDown() override { set_batch_hook_for_testing(nullptr); }
};

TEST_F(RlDivergence, AnInfiniteKlWithTargetKlSkipsTheStepAndChangesNothing) {
  LocalCommunicator world;
  auto trainer = make_trainer(config_of(kPpo), world);
  set_batch_hook_for_testing(inject(Fault::kRefLogpInf, {0}));
  const auto before = weights(trainer->policy_store());
  const double coef = trainer->kl_coef();
  auto skipped = trainer->step(0);
  ASSERT_TRUE(skipped.ok()) << skipped.status();
  // The KL is a loss term here (kl_in_reward is off): the advantages stay finite.
  EXPECT_EQ(skipped->skipped, "nan/inf KL at 1 tokens");
  EXPECT_EQ(skipped->skipped_in_row, 1);
  EXPECT_TRUE(skipped->updates.empty()) << "no update was tried";
  EXPECT_EQ(weights(trainer->policy_store()), before);
  EXPECT_EQ(trainer->kl_coef(), coef) << "the KL controller saw no KL";

  // The next, clean step trains and moves the adaptive coefficient again.
  auto next = trainer->step(1);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_TRUE(next->skipped.empty()) << next->skipped;
  EXPECT_EQ(next->skipped_in_row, 0);
  EXPECT_TRUE(std::isfinite(next->kl));
  EXPECT_NE(weights(trainer->policy_store()), before);
  EXPECT_NE(trainer->kl_coef(), coef);
}

TEST_F(RlDivergence, NonFiniteLogprobsAndRewardsAreNamed) {
  struct Case {
    Fault fault;
    const char* rl;
    std::string expected;
  };
  // GRPO: a NaN reward spoils its group's advantages (4 rows); a NaN old log-prob the KL.
  for (const Case& c : {Case{Fault::kRewardNan, kGrpo, "nan/inf rewards of 1 completions"},
                        Case{Fault::kOldLogpNan, kGrpo, "nan/inf KL at 1 tokens"},
                        Case{Fault::kRewardNan, kPpo, "nan/inf rewards of 1 completions"}}) {
    LocalCommunicator world;
    auto trainer = make_trainer(config_of(c.rl), world);
    set_batch_hook_for_testing(inject(c.fault, {0}));
    const auto before = weights(trainer->policy_store());
    auto m = trainer->step(0);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_TRUE(absl::StartsWith(m->skipped, c.expected)) << m->skipped;
    if (c.fault == Fault::kRewardNan) {
      EXPECT_TRUE(absl::StrContains(m->skipped, "advantages at")) << m->skipped;
    }
    EXPECT_EQ(weights(trainer->policy_store()), before) << m->skipped;
  }
}

TEST_F(RlDivergence, MoreThanMaxSkippedStepsInARowEndTheStepWithAnError) {
  LocalCommunicator world;
  auto trainer = make_trainer(config_of(kGrpo, "train { max_skipped_steps: 1 }"), world);
  // Step 0 bad, step 1 good (resets the count), steps 2 and 3 bad: the second in a row ends it.
  set_batch_hook_for_testing(inject(Fault::kRefLogpInf, {0, 2, 3}));
  auto s0 = trainer->step(0);
  ASSERT_TRUE(s0.ok()) << s0.status();
  EXPECT_EQ(s0->skipped_in_row, 1);
  auto s1 = trainer->step(1);
  ASSERT_TRUE(s1.ok()) << s1.status();
  EXPECT_TRUE(s1->skipped.empty());
  auto s2 = trainer->step(2);
  ASSERT_TRUE(s2.ok()) << s2.status();
  EXPECT_EQ(s2->skipped_in_row, 1);
  auto s3 = trainer->step(3);
  ASSERT_FALSE(s3.ok());
  EXPECT_EQ(s3.status().code(), absl::StatusCode::kAborted);
  const std::string message(s3.status().message());
  EXPECT_TRUE(absl::StrContains(message, "rl step 4: 2 steps in a row changed no weights"))
      << message;
  EXPECT_TRUE(absl::StrContains(message, "nan/inf KL at 1 tokens")) << message;
  EXPECT_TRUE(absl::StrContains(message, "train.max_skipped_steps = 1")) << message;
  EXPECT_TRUE(absl::StrContains(message, "lower rl.lr")) << message;
}

// --- the whole run ---------------------------------------------------------------------------

std::string fresh_dir(const std::string& name) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir =
      fs::path(::testing::TempDir()) / absl::StrCat("switchyard_rl_div_", info->name(), "_", name);
  fs::remove_all(dir);
  return dir.string();
}

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

switchyard::Experiment run_config(const std::string& init, int steps, const std::string& extra) {
  switchyard::Experiment config = config_of(kPpo, extra);
  config.mutable_rl()->set_init_checkpoint(init);
  config.mutable_rl()->set_steps(steps);
  return config;
}

TEST_F(RlDivergence, ARunSkipsAnInfiniteKlStepLogsItAndFinishes) {
  const std::string init = pretrain(), dir = fresh_dir("run");
  set_batch_hook_for_testing(inject(Fault::kRefLogpInf, {1}));
  std::ostringstream log;
  const absl::Status status =
      run_rl(run_config(init, 3, "checkpoint { interval: 1 }"), {.run_dir = dir}, log);
  ASSERT_TRUE(status.ok()) << status << "\n" << log.str();
  EXPECT_TRUE(absl::StrContains(log.str(), "rl step 2: skipped, nan/inf KL at 1 tokens"))
      << log.str();
  EXPECT_TRUE(absl::StrContains(log.str(), "(1 in a row)")) << log.str();

  // metrics.jsonl stays JSON (no bare nan), with the skipped step marked.
  std::ifstream in(fs::path(dir) / "metrics.jsonl");
  int skipped_lines = 0, lines = 0;
  for (std::string line; std::getline(in, line); ++lines) {
    auto j = parse_json(line);
    ASSERT_TRUE(j.ok()) << line;
    if (j->find("skipped") != nullptr) {
      ++skipped_lines;
      EXPECT_EQ(j->find("step")->as_int(), 2) << line;
      EXPECT_EQ(j->find("skipped_steps")->as_int(), 1) << line;
    }
  }
  EXPECT_EQ(skipped_lines, 1);
  EXPECT_GT(lines, 3);

  // The skipped step's checkpoint holds step 1's weights, exactly.
  auto tensors_of = [&](int step) {
    char name[32];
    std::snprintf(name, sizeof(name), "step_%08d", step);
    std::map<std::string, std::vector<float>> out;
    for (const auto& entry : fs::directory_iterator(fs::path(dir) / "checkpoints" / name)) {
      if (entry.path().extension() != ".safetensors") continue;
      auto file = load_safetensors(entry.path().string());
      SY_CHECK(file.ok()) << file.status();
      for (const auto& [tensor_name, tensor] : file->tensors)
        out[entry.path().filename().string() + "/" + tensor_name] = tensor.to_f32_vector();
    }
    return out;
  };
  const auto step1 = tensors_of(1), step2 = tensors_of(2), step3 = tensors_of(3);
  ASSERT_FALSE(step1.empty());
  EXPECT_EQ(step1, step2);
  EXPECT_NE(step2, step3);
}

TEST_F(RlDivergence, ARunThatKeepsDivergingEndsWithAClearError) {
  const std::string init = pretrain(), dir = fresh_dir("run");
  set_batch_hook_for_testing(inject(Fault::kRewardNan, {1, 2, 3, 4}));
  std::ostringstream log;
  const absl::Status status =
      run_rl(run_config(init, 5, "train { max_skipped_steps: 2 }"), {.run_dir = dir}, log);
  ASSERT_FALSE(status.ok()) << log.str();
  EXPECT_TRUE(absl::StrContains(status.message(), "rl step 4: 3 steps in a row changed no weights"))
      << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "rl.critic_lr")) << status;
  EXPECT_TRUE(absl::StrContains(log.str(), "rl step 3: skipped, nan/inf rewards of 1 completions"))
      << log.str();
}

}  // namespace
}  // namespace sy::rl
