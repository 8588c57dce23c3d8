// Routing replay in RL (rl.routing_replay) and the rollout/training mismatch, on a tiny MoE
// (CPU, one process): the rollouts' routes reach the batch; on the CPU the rollout engine and
// the old-policy forward agree (no token routed otherwise, log-probs within rounding), and
// perturbed weights show in both statistics; with replay the old-policy, reference and update
// forwards take the rollout's experts (forced ones change the old log-probs, the reference
// follows, the update's ratio starts at 1), without it they do not; replay on a dense model is
// a clear config error; the step line and metrics.jsonl carry the two statistics.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "parallel/local_communicator.h"
#include "rl/rl_loop.h"
#include "tests/testing/small_model.h"
#include "tests/testing/testing.h"
#include "trainer/config.h"
#include "trainer/json.h"
#include "trainer/train.h"

namespace sy::rl {
namespace {
namespace fs = std::filesystem;

constexpr char kSmallRl[] = R"pb(
  optimizer { weight_decay: 0 grad_clip: 0 }
  train { steps: 1 micro_batch: 1 cpu_threads: 1 seed: 7 }
  rl {
    init_checkpoint: "unused"
    steps: 1
    prompts_per_step: 4
    group_size: 4
    lr: 1e-2
    max_new_tokens: 3
    eval_examples: 4
    arithmetic { max_digits: 1 }
  }
)pb";

switchyard::Experiment small_config(const std::string& extra = "") {
  switchyard::Experiment config;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(testing::kSmallModel, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(kSmallRl, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(extra, &config)) << extra;
  return config;
}

std::unique_ptr<RlTrainer> make_trainer(const std::string& extra, Communicator& world) {
  auto trainer = RlTrainer::create(small_config(extra), world);
  SY_CHECK(trainer.ok()) << trainer.status();
  return std::move(*trainer);
}

constexpr char kReplay[] = "rl { routing_replay: REPLAY_ROLLOUT }";

// A step's rollouts and batch, with the rollouts' routes replaced by `forced` (every position
// and layer) when it is given.
struct Step {
  Rollouts rollouts;
  Batch batch;
  StepMetrics metrics;
};
Step make_step(RlTrainer& trainer, const std::vector<int32_t>& forced = {}) {
  Step s;
  auto rollouts = trainer.rollout(0);
  SY_CHECK(rollouts.ok()) << rollouts.status();
  s.rollouts = std::move(*rollouts);
  SY_CHECK(trainer.score(s.rollouts).ok());
  if (!forced.empty()) {
    for (std::vector<int32_t>& r : s.rollouts.routes)
      for (size_t i = 0; i < r.size(); ++i) r[i] = forced[i % forced.size()];
  }
  s.batch = trainer.make_batch(s.rollouts, s.metrics);
  return s;
}

double abs_diff_sum(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_f32_vector(), y = b.to_f32_vector();
  double sum = 0;
  for (size_t i = 0; i < x.size(); ++i) sum += std::fabs(double(x[i]) - y[i]);
  return sum;
}

TEST(RlRoutingReplay, TheRolloutEngineAndTheOldPolicyAgreeOnTheCpu) {
  LocalCommunicator world;
  auto trainer = make_trainer("", world);
  const Step s = make_step(*trainer);
  const Batch& batch = s.batch;
  const int64_t rows = batch.inputs.dim(0), t_len = batch.inputs.dim(1);
  ASSERT_EQ(batch.routes.shape(), (Shape{rows, t_len, 1, 2}));  // one MoE layer, top-2
  // Each row's routes cover its prompt and completion but the last token; -1 after.
  const std::vector<int32_t> routes = batch.routes.to_i32_vector();
  for (int64_t b = 0; b < rows; ++b) {
    const int64_t inputs = static_cast<int64_t>(s.rollouts.routes[b].size()) / 2;
    const int64_t length =
        static_cast<int64_t>(trainer->encode_prompt(s.rollouts.prompts[b / 4]).size() +
                             s.rollouts.completions[b].size());
    EXPECT_EQ(inputs, length - 1) << "row " << b;
    for (int64_t t = 0; t < t_len; ++t) {
      const int32_t e = routes[(b * t_len + t) * 2];
      EXPECT_EQ(e < 0, t >= inputs) << "row " << b << " position " << t;
    }
  }
  EXPECT_EQ(s.metrics.routing_mismatch, 0.0);
  EXPECT_GE(s.metrics.rollout_logprob_diff, 0.0);
  EXPECT_LT(s.metrics.rollout_logprob_diff, 1e-5);
}

TEST(RlRoutingReplay, PerturbedWeightsShowInTheMismatch) {
  LocalCommunicator world;
  auto trainer = make_trainer("", world);
  auto rollouts = trainer->rollout(0);
  ASSERT_TRUE(rollouts.ok());
  ASSERT_TRUE(trainer->score(*rollouts).ok());
  // The rollout engine sampled with the router before this change; the old policy sees it.
  ParamStore& store = trainer->policy_store();
  Param* router = store.find("layers.1.moe.router.weight");
  ASSERT_NE(router, nullptr);
  std::mt19937_64 rng(3);
  const Tensor noise = testing::random_normal(router->value.shape(), rng, 0.5f);
  float* w = router->value.data<float>();
  for (int64_t i = 0; i < noise.numel(); ++i) w[i] += noise.data<float>()[i];
  store.values_changed();
  StepMetrics metrics;
  trainer->make_batch(*rollouts, metrics);
  EXPECT_GT(metrics.routing_mismatch, 0.05);
  EXPECT_LE(metrics.routing_mismatch, 1.0);
  EXPECT_GT(metrics.rollout_logprob_diff, 1e-3);
}

TEST(RlRoutingReplay, TheOldPolicyReferenceAndUpdateForwardsReplayTheRolloutsRoutes) {
  // Every token of the rollouts routed to experts {3, 2}: rarely the router's own choice.
  const std::vector<int32_t> forced = {3, 2};
  for (const bool replay : {false, true}) {
    SCOPED_TRACE(replay ? "replay" : "no replay");
    LocalCommunicator world;
    auto trainer = make_trainer(replay ? kReplay : "", world);
    const Step s = make_step(*trainer, forced);
    const Batch& batch = s.batch;
    const float temperature = 1.0f;
    Transformer& policy = trainer->policy();
    const Tensor own = policy.token_logprobs(batch.inputs, batch.targets, false, temperature).logp;
    const ForwardRoutes routes{.routes = batch.routes, .replay = true};
    const Tensor replayed =
        policy.token_logprobs(batch.inputs, batch.targets, false, temperature, &routes).logp;
    ASSERT_GT(abs_diff_sum(replayed, own), 1e-2) << "the forced routes must matter";
    EXPECT_TRUE(testing::all_close(batch.old_logp, replay ? replayed : own, 1e-6, 1e-7));
    // The reference (equal to the policy) replays the same routes: no KL.
    EXPECT_TRUE(testing::all_close(batch.ref_logp, batch.old_logp, 0, 0));
    EXPECT_EQ(s.metrics.kl, 0.0);
    // The old policy's own top-k is what is compared, replay or not.
    EXPECT_GT(s.metrics.routing_mismatch, 0.2);
    // The rollout sampled with the router's own experts: replaying others moves the old
    // log-probs away from the rollout's.
    if (replay) {
      EXPECT_GT(s.metrics.rollout_logprob_diff, 1e-3);
    } else {
      EXPECT_LT(s.metrics.rollout_logprob_diff, 1e-5);
    }

    // The update forward replays batch.routes: the batch's own ones keep its ratio at exactly
    // 1 before the first step; others move it, under replay only.
    StepMetrics same = s.metrics;
    auto twin = make_trainer(replay ? kReplay : "", world);
    Step other = make_step(*twin, forced);
    trainer->update(batch, same);
    ASSERT_EQ(same.updates.size(), 1u);
    EXPECT_EQ(same.updates[0].policy.approx_kl_old, 0.0);
    int32_t* r = other.batch.routes.data<int32_t>();
    for (int64_t i = 0; i < other.batch.routes.numel(); ++i)
      if (r[i] >= 0) r[i] = i % 2 == 0 ? 0 : 1;  // {0, 1} now
    twin->update(other.batch, other.metrics);
    ASSERT_EQ(other.metrics.updates.size(), 1u);
    if (replay) {
      EXPECT_GT(other.metrics.updates[0].policy.approx_kl_old, 1e-4);
    } else {
      EXPECT_EQ(other.metrics.updates[0].policy.approx_kl_old, 0.0);
    }
  }
}

TEST(RlRoutingReplay, ReplayingTheRolloutsOwnRoutesChangesNothingOnTheCpu) {
  LocalCommunicator world;
  auto plain = make_trainer("", world);
  auto replaying = make_trainer(kReplay, world);
  Step a = make_step(*plain), b = make_step(*replaying);
  EXPECT_TRUE(testing::all_close(b.batch.old_logp, a.batch.old_logp, 0, 0));
  EXPECT_TRUE(testing::all_close(b.batch.ref_logp, a.batch.ref_logp, 0, 0));
  plain->update(a.batch, a.metrics);
  replaying->update(b.batch, b.metrics);
  EXPECT_EQ(b.metrics.grad_norm, a.metrics.grad_norm);
  EXPECT_EQ(b.metrics.policy_loss, a.metrics.policy_loss);
}

TEST(RlRoutingReplay, ReplayOnADenseModelIsAClearConfigError) {
  switchyard::Experiment dense = small_config(kReplay);
  dense.mutable_model()->set_first_k_dense(dense.model().n_layers());
  const absl::Status status = validate_experiment(dense, ConfigSources(), rl_experiment_rules());
  EXPECT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(
      status.message(),
      "rl.routing_replay: is REPLAY_ROLLOUT, but the model is dense (model.first_k_dense = 2 of 2 "
      "layers): it has no expert routing to replay; leave rl.routing_replay at REPLAY_OFF"))
      << status;
  EXPECT_TRUE(
      validate_experiment(small_config(kReplay), ConfigSources(), rl_experiment_rules()).ok());
  switchyard::Experiment dense_off = small_config();
  dense_off.mutable_model()->set_first_k_dense(2);
  EXPECT_TRUE(validate_experiment(dense_off, ConfigSources(), rl_experiment_rules()).ok());
}

TEST(RlRoutingReplay, TheStepLineAndMetricsCarryTheMismatch) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path root = fs::path(::testing::TempDir()) / absl::StrCat("switchyard_", info->name());
  fs::remove_all(root);
  // The init checkpoint: two pretraining steps of the small model.
  switchyard::Experiment pretraining;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(testing::kSmallModel, &pretraining));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(
      "data { arithmetic { max_digits: 1 eval_examples: 4 } } "
      "train { steps: 2 micro_batch: 4 cpu_threads: 1 eval_interval: 0 }",
      &pretraining));
  std::ostringstream log;
  ASSERT_TRUE(train(pretraining, {.run_dir = (root / "init").string()}, log).ok()) << log.str();

  switchyard::Experiment config = pretraining;
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(kSmallRl, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(kReplay, &config));
  config.mutable_rl()->set_init_checkpoint((root / "init").string());
  ASSERT_TRUE(validate_experiment(config, ConfigSources(), rl_experiment_rules()).ok());
  std::ostringstream rl_log;
  const absl::Status status = run_rl(config, {.run_dir = (root / "rl").string()}, rl_log);
  ASSERT_TRUE(status.ok()) << status << "\n" << rl_log.str();
  EXPECT_TRUE(absl::StrContains(rl_log.str(), " | mismatch ")) << rl_log.str();
  EXPECT_TRUE(absl::StrContains(rl_log.str(), " routes 0.0% | ")) << rl_log.str();
  std::ifstream in(root / "rl" / "metrics.jsonl");
  int steps = 0;
  for (std::string line; std::getline(in, line);) {
    auto j = parse_json(line);
    ASSERT_TRUE(j.ok()) << line;
    if (j->find("reward_mean") == nullptr) continue;  // an eval line
    ++steps;
    ASSERT_NE(j->find("routing_mismatch"), nullptr) << line;
    ASSERT_NE(j->find("rollout_logprob_diff"), nullptr) << line;
    EXPECT_EQ(j->find("routing_mismatch")->as_double(), 0.0) << line;
    EXPECT_LT(j->find("rollout_logprob_diff")->as_double(), 1e-5) << line;
  }
  EXPECT_EQ(steps, 1);
}

}  // namespace
}  // namespace sy::rl
