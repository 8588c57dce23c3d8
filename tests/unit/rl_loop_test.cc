// The RL loop on a tiny randomly initialised MoE (CPU, one process): a GRPO step moves the
// policy towards rewarded completions, old log-probs are the policy's before the first update
// (ratio 1, no clipping), KL to a reference equal to the policy starts at exactly 0, the same
// seed gives the same rollouts and metrics, PPO's critic learns, GSPO steps on sequence
// ratios, the rollout log-probs reach the batch and weigh it under TIS, and bad rl configs
// and init checkpoints give clear errors.
#include "rl/rl_loop.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>
#include <tuple>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "parallel/local_communicator.h"
#include "rl/rl_command.h"
#include "tests/testing/small_model.h"
#include "tests/testing/testing.h"
#include "trainer/cli.h"
#include "trainer/config.h"
#include "trainer/json.h"
#include "trainer/tokenizer.h"
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
    group_size: 8
    lr: 1e-2
    max_new_tokens: 3
    eval_examples: 8
    arithmetic { max_digits: 1 }
  }
)pb";

switchyard::Experiment small_config(const std::string& extra = "") {
  switchyard::Experiment config;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(testing::kSmallModel, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(kSmallRl, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(extra, &config)) << extra;
  const absl::Status status = validate_experiment(config);  // resolved: the model included
  SY_CHECK(status.ok()) << status;
  return config;
}

// A toy task: prompts "<i>=" (digits), reward 1 when the completion starts with an even byte.
// A random policy finds it half the time, so every group has a signal.
class EvenFirstByteTask final : public RewardTask {
 public:
  std::string_view name() const override { return "even-first-byte"; }
  Prompt sample(uint64_t index, Split split) const override {
    return Prompt{absl::StrCat(index % 97, split == Split::kTrain ? "=" : "?")};
  }
  Score score(const Prompt&, std::string_view completion) const override {
    const bool even = !completion.empty() && static_cast<unsigned char>(completion[0]) % 2 == 0;
    return make_score(even, true, {});
  }
  int64_t max_prompt_tokens() const override { return 3; }
  int64_t max_completion_tokens() const override { return 3; }
};

std::unique_ptr<RlTrainer> make_trainer(const switchyard::Experiment& config, Communicator& world,
                                        bool toy_task = true) {
  auto trainer =
      RlTrainer::create(config, world, toy_task ? std::make_unique<EvenFirstByteTask>() : nullptr);
  SY_CHECK(trainer.ok()) << trainer.status();
  return std::move(*trainer);
}

// Mean over the step's prompts of the probability that the first new token is even.
double even_first_token_probability(RlTrainer& trainer, int64_t step) {
  const int p_count = 4;
  double total = 0;
  for (int p = 0; p < p_count; ++p) {
    const Prompt prompt = trainer.task().sample(step * p_count + p, Split::kTrain);
    const std::vector<int32_t> ids = ByteTokenizer::encode(prompt.text);
    const Tensor ids_t = Tensor::from_i32(ids, {1, static_cast<int64_t>(ids.size())});
    const std::vector<float> logits = trainer.policy().logits(ids_t, true).to_f32_vector();
    double mx = logits[0], sum = 0, even = 0;
    for (float l : logits) mx = std::max<double>(mx, l);
    for (size_t v = 0; v < logits.size(); ++v) {
      const double e = std::exp(logits[v] - mx);
      sum += e;
      if (v % 2 == 0) even += e;
    }
    total += even / sum;
  }
  return total / p_count;
}

TEST(RlLoop, GrpoStepRaisesTheProbabilityOfRewardedCompletions) {
  LocalCommunicator world;
  auto trainer = make_trainer(small_config(), world);
  const double before = even_first_token_probability(*trainer, 0);
  auto rollouts = trainer->rollout(0);
  ASSERT_TRUE(rollouts.ok());
  ASSERT_TRUE(trainer->score(*rollouts).ok());
  StepMetrics metrics;
  const Batch batch = trainer->make_batch(*rollouts, metrics);
  EXPECT_GT(metrics.reward_mean, 0.2);
  EXPECT_LT(metrics.reward_mean, 0.8);
  trainer->update(batch, metrics);

  // Completions' log-probabilities before (old) and after the update, by reward.
  const Tensor after_logp = trainer->policy().token_logprobs(batch.inputs, batch.targets).logp;
  const std::vector<float> old = batch.old_logp.to_f32_vector(), now = after_logp.to_f32_vector();
  const int64_t t_len = batch.inputs.dim(1);
  double change[2] = {0, 0}, count[2] = {0, 0};
  for (size_t b = 0; b < rollouts->rewards.size(); ++b) {
    const int rewarded = rollouts->rewards[b] > 0;
    for (int64_t t = 0; t < t_len; ++t) change[rewarded] += now[b * t_len + t] - old[b * t_len + t];
    count[rewarded] += 1;
  }
  EXPECT_GT(change[1] / count[1], 0.05) << "rewarded completions became more likely";
  EXPECT_LT(change[0] / count[0], -0.05) << "unrewarded completions became less likely";
  const double after = even_first_token_probability(*trainer, 0);
  EXPECT_GT(after, before) << "P(even first token) before " << before << ", after " << after;
}

TEST(RlLoop, OldLogprobsAreThePolicyBeforeTheFirstUpdate) {
  LocalCommunicator world;
  // In rollout order, the first minibatch is the rows whose old log-probs were computed
  // together: the ratio is exactly 1 (shuffled, it is 1 up to rounding).
  auto trainer = make_trainer(small_config("rl { epochs: 2 minibatches: 2 clip_low: 0.01 "
                                           "clip_high: 0.01 shuffle_minibatches: false }"),
                              world);
  auto rollouts = trainer->rollout(0);
  ASSERT_TRUE(rollouts.ok());
  ASSERT_TRUE(trainer->score(*rollouts).ok());
  StepMetrics metrics;
  const Batch batch = trainer->make_batch(*rollouts, metrics);
  // The policy's own log-probs of the whole batch, in one call: the same numbers.
  const Tensor logp = trainer->policy().token_logprobs(batch.inputs, batch.targets).logp;
  EXPECT_TRUE(testing::all_close(batch.old_logp, logp, 1e-6, 1e-7));
  const std::vector<float> old = batch.old_logp.to_f32_vector(), mask = batch.mask.to_f32_vector();
  const std::vector<int32_t> targets = batch.targets.to_i32_vector();
  for (size_t i = 0; i < mask.size(); ++i) {
    EXPECT_EQ(mask[i] != 0, targets[i] != kIgnoreIndex) << i;
    if (mask[i] != 0) EXPECT_LT(old[i], 0.0f) << i;
  }

  trainer->update(batch, metrics);
  ASSERT_EQ(metrics.updates.size(), 4u);  // 2 epochs x 2 minibatches
  EXPECT_EQ(metrics.updates[0].policy.clip_fraction, 0.0);
  EXPECT_EQ(metrics.updates[0].policy.approx_kl_old, 0.0);
  // The second minibatch comes after an update at lr 1e-2 with a 1% clip: the ratio moved.
  EXPECT_GT(metrics.updates[3].policy.approx_kl_old, 0.0);
  EXPECT_GT(metrics.updates[3].policy.clip_fraction, 0.0);
}

TEST(RlLoop, LogprobsAreThoseOfTheRolloutTemperature) {
  constexpr double kTemperature = 0.5;
  LocalCommunicator world;
  auto trainer = make_trainer(small_config("rl { temperature: 0.5 }"), world);
  auto rollouts = trainer->rollout(0);
  ASSERT_TRUE(rollouts.ok());
  ASSERT_TRUE(trainer->score(*rollouts).ok());
  StepMetrics metrics;
  const Batch batch = trainer->make_batch(*rollouts, metrics);

  // Old and reference log-probs and the entropy: log softmax(logits / T), from the logits.
  const int64_t rows = batch.inputs.dim(0), t_len = batch.inputs.dim(1);
  const std::vector<float> logits = trainer->policy().logits(batch.inputs, false).to_f32_vector();
  const std::vector<int32_t> targets = batch.targets.to_i32_vector();
  const int64_t vocab = static_cast<int64_t>(logits.size()) / (rows * t_len);
  Tensor expected_logp = Tensor::zeros({rows, t_len}),
         expected_entropy = Tensor::zeros({rows, t_len});
  double untempered_gap = 0;
  for (int64_t i = 0; i < rows * t_len; ++i) {
    const float* z = logits.data() + i * vocab;
    double mx = z[0], sum = 0, sum1 = 0, weighted = 0;
    for (int64_t v = 0; v < vocab; ++v) mx = std::max<double>(mx, z[v]);
    for (int64_t v = 0; v < vocab; ++v) {
      const double e = std::exp((z[v] - mx) / kTemperature);
      sum += e;
      weighted += e * (z[v] - mx) / kTemperature;
      sum1 += std::exp(z[v] - mx);
    }
    expected_entropy.data<float>()[i] = static_cast<float>(std::log(sum) - weighted / sum);
    if (targets[i] == kIgnoreIndex) continue;
    expected_logp.data<float>()[i] =
        static_cast<float>((z[targets[i]] - mx) / kTemperature - std::log(sum));
    untempered_gap +=
        std::abs(expected_logp.data<float>()[i] - (z[targets[i]] - mx - std::log(sum1)));
  }
  EXPECT_GT(untempered_gap, 1.0) << "T = 0.5 must make a difference on this batch";
  EXPECT_TRUE(testing::all_close(batch.old_logp, expected_logp, 1e-5, 1e-5));
  EXPECT_TRUE(testing::all_close(batch.ref_logp, expected_logp, 1e-5, 1e-5));
  EXPECT_TRUE(testing::all_close(batch.entropy, expected_entropy, 1e-4, 1e-5));

  // The update's gradient is that of the tempered log-probs (finite differences on the head).
  Transformer& policy = trainer->policy();
  std::mt19937_64 rng(5);
  const Tensor weights = testing::random_normal({rows, t_len}, rng);
  const float* m = batch.mask.data<float>();
  for (int64_t i = 0; i < rows * t_len; ++i)
    if (m[i] == 0) weights.data<float>()[i] = 0;
  trainer->policy_store().zero_grad();
  policy.token_logprobs(batch.inputs, batch.targets, false, kTemperature);
  policy.backward_logprobs(weights);
  Param* head = trainer->policy_store().find("lm_head.weight");
  ASSERT_NE(head, nullptr);
  EXPECT_TRUE(testing::grad_check(
      [&] {
        return testing::weighted_sum(
            policy.token_logprobs(batch.inputs, batch.targets, false, kTemperature).logp, weights);
      },
      head->value, head->grad, rng, {.eps = 1e-2, .rtol = 2e-2, .atol = 2e-3}));
}

TEST(RlLoop, ShuffledMinibatchesDealEveryRowOncePerEpochInASeededOrder) {
  LocalCommunicator world;
  auto trainer = make_trainer(small_config("rl { epochs: 2 minibatches: 4 }"), world);
  const int64_t rows = 4 * 8;
  const std::vector<int64_t> first = trainer->minibatch_order(0, 0);
  std::vector<int64_t> sorted = first;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> identity(rows);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_EQ(sorted, identity) << "a permutation of the step's rows";
  EXPECT_NE(first, identity);
  EXPECT_NE(trainer->minibatch_order(0, 1), first) << "a fresh order each epoch";
  EXPECT_NE(trainer->minibatch_order(1, 0), first) << "and each step";
  EXPECT_EQ(
      make_trainer(small_config("rl { epochs: 2 minibatches: 4 }"), world)->minibatch_order(0, 0),
      first)
      << "a function of the seed";
  EXPECT_NE(make_trainer(small_config("rl { epochs: 2 minibatches: 4 seed: 5 }"), world)
                ->minibatch_order(0, 0),
            first);
  // Off, or with one minibatch, rows go in rollout order.
  EXPECT_EQ(make_trainer(small_config("rl { minibatches: 4 shuffle_minibatches: false }"), world)
                ->minibatch_order(0, 0),
            identity);
  EXPECT_EQ(make_trainer(small_config("rl { epochs: 2 }"), world)->minibatch_order(0, 1), identity);

  // The update follows the order: shuffled and in-order runs of the same rollouts differ
  // after the first minibatch, and two shuffled runs agree bit for bit.
  auto run = [&](const std::string& extra) {
    auto t = make_trainer(small_config("rl { epochs: 2 minibatches: 4 " + extra + " }"), world);
    auto m = t->step(0);
    SY_CHECK(m.ok()) << m.status();
    return std::make_pair(m->updates,
                          t->policy_store().find("lm_head.weight")->value.to_f32_vector());
  };
  const auto [shuffled, w_shuffled] = run("");
  const auto [again, w_again] = run("");
  const auto [in_order, w_in_order] = run("shuffle_minibatches: false");
  EXPECT_EQ(w_shuffled, w_again);
  EXPECT_NE(w_shuffled, w_in_order);
  ASSERT_EQ(shuffled.size(), 8u);
  EXPECT_NE(shuffled[0].policy.policy_loss, in_order[0].policy.policy_loss)
      << "the first minibatch holds other rows";
}

TEST(RlLoop, KlToAReferenceEqualToThePolicyStartsAtExactlyZero) {
  for (const char* estimator : {"KL_K1", "KL_K2", "KL_K3"}) {
    for (const char* placement : {"true", "false"}) {
      LocalCommunicator world;
      auto trainer =
          make_trainer(small_config(absl::StrCat("rl { kl_coef: 0.1 kl_estimator: ", estimator,
                                                 " kl_in_reward: ", placement, " }")),
                       world);
      auto first = trainer->step(0);
      ASSERT_TRUE(first.ok());
      EXPECT_EQ(first->kl, 0.0) << estimator << " in reward " << placement;
      EXPECT_EQ(first->kl_sequence, 0.0);
      EXPECT_EQ(first->updates[0].policy.kl, 0.0);
      auto second = trainer->step(1);
      ASSERT_TRUE(second.ok());
      EXPECT_TRUE(std::isfinite(second->kl));
      EXPECT_NE(second->kl, 0.0) << "the policy moved away from the reference";
    }
  }
}

TEST(RlLoop, TheSameSeedGivesTheSameRolloutsAndMetrics) {
  LocalCommunicator world;
  const switchyard::Experiment config = small_config("rl { kl_coef: 0.05 }");
  auto a = make_trainer(config, world);
  auto b = make_trainer(config, world);
  for (int64_t step = 0; step < 2; ++step) {
    auto ra = a->rollout(step), rb = b->rollout(step);
    ASSERT_TRUE(ra.ok() && rb.ok());
    EXPECT_EQ(ra->completions, rb->completions) << "step " << step;
    ASSERT_TRUE(a->score(*ra).ok() && b->score(*rb).ok());
    StepMetrics ma, mb;
    const Batch ba = a->make_batch(*ra, ma), bb = b->make_batch(*rb, mb);
    a->update(ba, ma);
    b->update(bb, mb);
    EXPECT_EQ(ma.reward_mean, mb.reward_mean);
    EXPECT_EQ(ma.kl, mb.kl);
    EXPECT_EQ(ma.policy_loss, mb.policy_loss);
    EXPECT_EQ(ma.entropy, mb.entropy);
  }
  // A different seed samples different completions.
  auto c = make_trainer(small_config("rl { seed: 99 }"), world);
  auto rc = c->rollout(0), ra = a->rollout(0);
  EXPECT_NE(rc->completions, ra->completions);
}

TEST(RlLoop, GroupsOfEqualRewardsCanBeLeftOut) {
  LocalCommunicator world;
  // The arithmetic task rewards nothing a random policy writes: every group is equal, so with
  // filtering nothing carries loss and the update is skipped.
  auto trainer = make_trainer(small_config("rl { filter_equal_groups: true }"), world, false);
  auto metrics = trainer->step(0);
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ(metrics->groups, 4);
  EXPECT_EQ(metrics->groups_kept, 0);
  EXPECT_TRUE(metrics->updates[0].skipped);
}

TEST(RlLoop, PpoCriticLearnsTheRewardAndThePolicyImproves) {
  LocalCommunicator world;
  auto trainer = make_trainer(
      small_config("rl { algorithm: RL_PPO critic_lr: 1e-2 kl_coef: 0.01 kl_in_reward: true "
                   "epochs: 2 }"),
      world);
  const double before = even_first_token_probability(*trainer, 0);
  double first_value_loss = 0, last_value_loss = 0;
  for (int64_t step = 0; step < 6; ++step) {
    auto m = trainer->step(step);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_TRUE(std::isfinite(m->value_loss));
    if (step == 0) first_value_loss = m->value_loss;
    last_value_loss = m->value_loss;
  }
  EXPECT_LT(last_value_loss, first_value_loss);
  EXPECT_GT(even_first_token_probability(*trainer, 0), before);
}

TEST(RlLoop, EvaluationScoresGreedyCompletions) {
  LocalCommunicator world;
  auto trainer = make_trainer(small_config(), world);
  const EvalMetrics e = trainer->evaluate();
  EXPECT_EQ(e.total, 8);
  EXPECT_GE(e.accuracy, 0.0);
  EXPECT_LE(e.accuracy, 1.0);
  EXPECT_EQ(static_cast<double>(e.correct) / e.total, e.accuracy);
}

// ---- GSPO and rollout correction ------------------------------------------------------------

// The gradient of lm_head.weight that the step's last update left in the store (grad_clip 0:
// AdamW does not touch it), and the step's metrics.
std::pair<Tensor, StepMetrics> head_grad_after_step(const std::string& extra) {
  LocalCommunicator world;
  auto trainer = make_trainer(small_config(extra), world);
  auto metrics = trainer->step(0);
  SY_CHECK(metrics.ok()) << metrics.status();
  return {trainer->policy_store().find("lm_head.weight")->grad.clone(), *metrics};
}

TEST(RlLoop, GspoStepsAtRatioOneAsSeqMeanGrpo) {
  // At the first update every sequence ratio is 1 (unclipped), so GSPO's gradient
  // −A_b / (S n_b) per token is GRPO's under seq-mean-token-mean.
  const auto [gspo, gspo_m] = head_grad_after_step("rl { algorithm: RL_GSPO }");
  const auto [grpo, grpo_m] = head_grad_after_step("rl { aggregation: AGG_SEQ_MEAN_TOKEN_MEAN }");
  EXPECT_TRUE(testing::all_close(gspo, grpo, 1e-4, 1e-7));
  EXPECT_NEAR(gspo_m.policy_loss, grpo_m.policy_loss, 1e-6);
  EXPECT_GT(gspo_m.grad_norm, 0);
  EXPECT_TRUE(std::isfinite(gspo_m.grad_norm));
}

// A second pass over the same rollouts sees the ratios the first update moved: its loss is
// GSPO's, computed here from the policy's log-probs after the first update, with the paper's
// clip range [1 − 3e-4, 1 + 4e-4] clipping some completions whole and not others.
TEST(RlLoop, GspoSecondPassMatchesTheSequenceLossOfTheMovedPolicy) {
  LocalCommunicator world;
  auto trainer = make_trainer(
      small_config("rl { algorithm: RL_GSPO clip_low: 3e-4 clip_high: 4e-4 lr: 1e-5 }"), world);
  auto rollouts = trainer->rollout(0);
  ASSERT_TRUE(rollouts.ok());
  ASSERT_TRUE(trainer->score(*rollouts).ok());
  StepMetrics first;
  const Batch batch = trainer->make_batch(*rollouts, first);
  trainer->update(batch, first);
  ASSERT_EQ(first.updates.size(), 1u);
  EXPECT_EQ(first.updates[0].policy.clip_fraction, 0.0) << "ratio 1 at the first update";

  const std::vector<float> logp =
      trainer->policy().token_logprobs(batch.inputs, batch.targets).logp.to_f32_vector();
  const std::vector<float> old = batch.old_logp.to_f32_vector(),
                           adv = batch.advantages.to_f32_vector(),
                           mask = batch.mask.to_f32_vector();
  const int64_t rows = batch.inputs.dim(0), t_len = batch.inputs.dim(1);
  double loss = 0, clipped_tokens = 0, tokens = 0;
  int clipped_rows = 0;
  for (int64_t b = 0; b < rows; ++b) {
    double sum = 0, n = 0, a = 0;
    for (int64_t t = 0; t < t_len; ++t) {
      const int64_t i = b * t_len + t;
      if (mask[i] == 0) continue;
      sum += static_cast<double>(logp[i]) - old[i];
      n += 1;
      a = adv[i];
    }
    const double s = std::exp(sum / n);
    const double unclipped = -a * s, clipped = -a * std::clamp(s, 1 - 3e-4, 1 + 4e-4);
    loss += std::max(unclipped, clipped) / static_cast<double>(rows);
    clipped_rows += clipped > unclipped;
    clipped_tokens += clipped > unclipped ? n : 0;
    tokens += n;
  }
  EXPECT_GT(clipped_rows, 0);
  EXPECT_LT(clipped_rows, rows);
  StepMetrics second;
  trainer->update(batch, second);
  ASSERT_EQ(second.updates.size(), 1u);
  EXPECT_NEAR(second.updates[0].policy.policy_loss, loss, 1e-6 + 1e-4 * std::fabs(loss));
  EXPECT_DOUBLE_EQ(second.updates[0].policy.clip_fraction, clipped_tokens / tokens);
}

TEST(RlLoop, GspoStillImprovesThePolicy) {
  LocalCommunicator world;
  auto trainer = make_trainer(small_config("rl { algorithm: RL_GSPO }"), world);
  const double before = even_first_token_probability(*trainer, 0);
  auto m = trainer->step(0);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_GT(even_first_token_probability(*trainer, 0), before);
}

class RlLoopTis : public ::testing::Test {
 protected:
  void TearDown() override { set_batch_hook_for_testing(nullptr); }
};

TEST_F(RlLoopTis, RolloutLogprobsTravelWithTheBatch) {
  LocalCommunicator world;
  auto trainer = make_trainer(small_config(), world);
  auto rollouts = trainer->rollout(0);
  ASSERT_TRUE(rollouts.ok());
  ASSERT_EQ(rollouts->logprobs.size(), rollouts->completions.size());
  for (size_t i = 0; i < rollouts->logprobs.size(); ++i)
    EXPECT_EQ(rollouts->logprobs[i].size(), rollouts->completions[i].size()) << i;
  ASSERT_TRUE(trainer->score(*rollouts).ok());
  StepMetrics metrics;
  const Batch batch = trainer->make_batch(*rollouts, metrics);
  // On the CPU both forwards are f32: the engine's cached decode and the training forward
  // agree within rounding, at every completion token (and both are 0 elsewhere).
  EXPECT_TRUE(testing::all_close(batch.rollout_logp, batch.old_logp, 1e-4, 1e-5));
  double completion_logp = 0;
  for (float v : batch.rollout_logp.to_f32_vector()) completion_logp += v;
  EXPECT_LT(completion_logp, -1.0) << "the rollout log-probs are there";
  // Off: no weights, no statistics.
  EXPECT_FALSE(batch.tis_weights.defined());
  EXPECT_EQ(metrics.tis_weight_mean, 0.0);
  EXPECT_EQ(metrics.tis_truncated_fraction, 0.0);
}

// Rollout log-probs written by the hook, by row b: b % 3 == 0 at old − 1 (ratio e, truncated
// to the cap 2), b % 3 == 1 at old + 0.5 (ratio e^−0.5), the rest equal to old (ratio 1).
// The weights differ within each group, so they do not cancel against its advantages.
double shifted_weight(int64_t row) {
  return row % 3 == 0 ? 2.0 : row % 3 == 1 ? std::exp(-0.5) : 1.0;
}

void shift_rollout_logprobs(int64_t, std::vector<float>&, Batch& batch) {
  const int64_t t_len = batch.mask.dim(1);
  const float* old = batch.old_logp.data<float>();
  const float* mask = batch.mask.data<float>();
  float* roll = batch.rollout_logp.data<float>();
  for (int64_t i = 0; i < batch.mask.numel(); ++i) {
    if (mask[i] == 0) continue;
    const int64_t row = i / t_len;
    roll[i] = old[i] - (row % 3 == 0 ? 1.0f : row % 3 == 1 ? -0.5f : 0.0f);
  }
}

TEST_F(RlLoopTis, TokenWeightsTruncateAtTheCapAndScaleThePolicyLoss) {
  LocalCommunicator world;
  auto trainer = make_trainer(small_config("rl { rollout_correction { tis_cap: 2 } }"), world);
  set_batch_hook_for_testing(shift_rollout_logprobs);
  auto rollouts = trainer->rollout(0);
  ASSERT_TRUE(rollouts.ok());
  ASSERT_TRUE(trainer->score(*rollouts).ok());
  StepMetrics metrics;
  const Batch batch = trainer->make_batch(*rollouts, metrics);
  ASSERT_TRUE(batch.tis_weights.defined());
  const std::vector<float> mask = batch.mask.to_f32_vector(), w = batch.tis_weights.to_f32_vector(),
                           adv = batch.advantages.to_f32_vector();
  const int64_t t_len = batch.mask.dim(1);
  double tokens = 0, truncated = 0, weight_sum = 0, loss = 0;
  for (size_t i = 0; i < mask.size(); ++i) {
    if (mask[i] == 0) continue;
    const int64_t row = static_cast<int64_t>(i) / t_len;
    const double expected = shifted_weight(row);
    EXPECT_NEAR(w[i], expected, 1e-6) << i;
    tokens += 1;
    truncated += row % 3 == 0;
    weight_sum += expected;
    loss -= expected * adv[i];  // at ratio 1 a token's loss is −w · A
  }
  EXPECT_NEAR(metrics.tis_truncated_fraction, truncated / tokens, 1e-12);
  EXPECT_NEAR(metrics.tis_weight_mean, weight_sum / tokens, 1e-6);
  ASSERT_GT(std::fabs(loss / tokens), 1e-3) << "the weights must matter to the loss";
  trainer->update(batch, metrics);
  ASSERT_EQ(metrics.updates.size(), 1u);
  EXPECT_NEAR(metrics.updates[0].policy.policy_loss, loss / tokens, 1e-6);
}

// TIS on, with rollout log-probs equal to the old ones, weighs every token by exactly 1: the
// update is TIS off's, bit for bit.
TEST_F(RlLoopTis, EqualLogprobsGiveTheUpdateWithoutTis) {
  set_batch_hook_for_testing([](int64_t, std::vector<float>&, Batch& batch) {
    batch.rollout_logp.copy_from(batch.old_logp);
  });
  const auto [off, off_m] = head_grad_after_step("");
  const auto [on, on_m] = head_grad_after_step("rl { rollout_correction { tis_cap: 1 } }");
  EXPECT_EQ(off.to_f32_vector(), on.to_f32_vector());
  EXPECT_EQ(off_m.policy_loss, on_m.policy_loss);
  EXPECT_EQ(on_m.tis_weight_mean, 1.0);
  EXPECT_EQ(on_m.tis_truncated_fraction, 0.0);
}

// GSPO's weights are per completion (exp of the mean log-ratio over its tokens): row 0 at
// old − 1 everywhere (e → cap 2), row 1 at old + 0.2 (e^−0.2), the other 30 rows at 1.
TEST_F(RlLoopTis, GspoWeighsWholeCompletions) {
  set_batch_hook_for_testing([](int64_t, std::vector<float>&, Batch& batch) {
    batch.rollout_logp.copy_from(batch.old_logp);
    const int64_t t_len = batch.mask.dim(1);
    float* roll = batch.rollout_logp.data<float>();
    for (int64_t t = 0; t < t_len; ++t) {
      roll[t] -= 1.0f;
      roll[t_len + t] += 0.2f;
    }
  });
  LocalCommunicator world;
  auto trainer = make_trainer(
      small_config("rl { algorithm: RL_GSPO rollout_correction { tis_cap: 2 } }"), world);
  auto rollouts = trainer->rollout(0);
  ASSERT_TRUE(rollouts.ok());
  ASSERT_TRUE(trainer->score(*rollouts).ok());
  StepMetrics metrics;
  const Batch batch = trainer->make_batch(*rollouts, metrics);
  const std::vector<float> mask = batch.mask.to_f32_vector(), w = batch.tis_weights.to_f32_vector();
  const int64_t t_len = batch.mask.dim(1);
  for (size_t i = 0; i < mask.size(); ++i) {
    const int64_t row = static_cast<int64_t>(i) / t_len;
    const double expected = mask[i] == 0 ? 0.0 : row == 0 ? 2.0 : row == 1 ? std::exp(-0.2) : 1.0;
    EXPECT_NEAR(w[i], expected, 1e-6) << i;
  }
  EXPECT_NEAR(metrics.tis_truncated_fraction, 1.0 / 32, 1e-12);
  EXPECT_NEAR(metrics.tis_weight_mean, (2 + std::exp(-0.2) + 30) / 32, 1e-6);
  // At ratio 1 (the first update) completion b's loss is −w_b A_b; their mean over the 32.
  const std::vector<float> adv = batch.advantages.to_f32_vector();
  double loss = 0;
  for (int64_t b = 0; b < 32; ++b) {
    const double w_b = b == 0 ? 2.0 : b == 1 ? std::exp(-0.2) : 1.0;
    for (int64_t t = 0; t < t_len; ++t) {
      if (mask[b * t_len + t] == 0) continue;
      loss -= w_b * adv[b * t_len + t] / 32;
      break;
    }
  }
  ASSERT_GT(std::fabs(loss), 1e-3) << "the weights must matter to the loss";
  trainer->update(batch, metrics);
  EXPECT_TRUE(metrics.skipped.empty()) << metrics.skipped;
  ASSERT_EQ(metrics.updates.size(), 1u);
  EXPECT_NEAR(metrics.updates[0].policy.policy_loss, loss, 1e-6);
}

// `switchyard rl`'s loop with GSPO and TIS from a two-step pretraining run: the start-up line
// names both, each step's line and metrics.jsonl carry the TIS statistics.
TEST(RlLoop, AGspoRunWithTisLogsItsWeights) {
  const std::string base = testing::fresh_test_dir("rl_loop");
  switchyard::Experiment pretraining;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(testing::kSmallModel, &pretraining));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(
      "data { arithmetic { max_digits: 1 eval_examples: 2 } } "
      "train { steps: 2 micro_batch: 4 cpu_threads: 1 seed: 7 eval_interval: 0 }",
      &pretraining));
  const std::string init = (fs::path(base) / "init").string();
  std::ostringstream train_log;
  ASSERT_TRUE(train(pretraining, {.run_dir = init}, train_log).ok()) << train_log.str();

  switchyard::Experiment config = small_config(
      "rl { algorithm: RL_GSPO steps: 2 clip_low: 3e-4 clip_high: 4e-4 eval_examples: 2 "
      "rollout_correction { tis_cap: 2 } }");
  config.mutable_rl()->set_init_checkpoint(init);
  const std::string dir = (fs::path(base) / "run").string();
  std::ostringstream log;
  const absl::Status status = run_rl(config, {.run_dir = dir}, log);
  ASSERT_TRUE(status.ok()) << status << "\n" << log.str();
  EXPECT_TRUE(absl::StrContains(log.str(), "rl: GSPO |")) << log.str();
  EXPECT_TRUE(absl::StrContains(log.str(), "| TIS cap 2")) << log.str();
  EXPECT_TRUE(absl::StrContains(log.str(), "rl step 2/2 |")) << log.str();
  EXPECT_TRUE(absl::StrContains(log.str(), "| tis 1.0000 trunc 0.0% |")) << log.str();
  std::ifstream in(fs::path(dir) / "metrics.jsonl");
  int steps = 0;
  for (std::string line; std::getline(in, line);) {
    auto j = parse_json(line);
    ASSERT_TRUE(j.ok()) << line;
    const Json* weight = j->find("tis_weight_mean");
    if (weight == nullptr) continue;  // the evaluations' lines
    ++steps;
    EXPECT_NEAR(weight->as_double(), 1.0, 1e-3) << line;
    ASSERT_NE(j->find("tis_truncated_fraction"), nullptr) << line;
    EXPECT_EQ(j->find("tis_truncated_fraction")->as_double(), 0.0) << line;
    // The peak resident set, as training's lines (a CPU run: no device memory).
    EXPECT_EQ(j->find("peak_memory_gib"), nullptr) << line;
    ASSERT_NE(j->find("peak_rss_gib"), nullptr) << line;
    EXPECT_GT(j->find("peak_rss_gib")->as_double(), 0.001) << line;
    EXPECT_LT(j->find("peak_rss_gib")->as_double(), 64) << line;
  }
  EXPECT_EQ(steps, 2);
  EXPECT_TRUE(absl::StrContains(log.str(), " GiB | ETA ")) << log.str();
  EXPECT_TRUE(absl::StrContains(log.str(), "| peak rss ")) << log.str();
}

// ---- configs -------------------------------------------------------------------------------

std::string write_temp(const std::string& name, const std::string& text) {
  const fs::path path = fs::path(::testing::TempDir()) / name;
  std::ofstream(path) << text;
  return path.string();
}

absl::Status load_rl(const std::vector<std::string>& overrides) {
  const std::string path = write_temp("rl_config.textproto", R"pb(
    run_dir: "runs/rl"
    rl { init_checkpoint: "runs/tiny" }
  )pb");
  return rl::load_rl_config(path, overrides).status();
}

TEST(RlConfig, AnRlConfigNeedsNoModel) {
  EXPECT_TRUE(load_rl({}).ok()) << load_rl({});
  // The same file as a training config lacks the model.
  const std::string path = write_temp("rl_as_train.textproto", "rl { init_checkpoint: \"x\" }");
  EXPECT_TRUE(absl::StrContains(load_experiment(path, {}).status().message(), "model.vocab_size"));
}

TEST(RlConfig, TheShippedConfigsLoad) {
  for (const char* name : {"grpo_arith", "ppo_arith", "gspo_arith"}) {
    const std::string path = absl::StrCat(SWITCHYARD_SOURCE_DIR, "/configs/", name, ".textproto");
    auto config = rl::load_rl_config(path, {});
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->rl().init_checkpoint(), "runs/tiny") << name;
    EXPECT_EQ(config->run_dir(), absl::StrCat("runs/", name));
  }
}

TEST(RlConfig, BadValuesGiveClearErrors) {
  struct Case {
    std::string set, expected;
  };
  const std::vector<Case> cases = {
      {"rl { init_checkpoint: '' }", "rl.init_checkpoint: is empty"},
      {"rl { group_size: 1 }", "rl.group_size: must be >= 2 for RL_GRPO"},
      {"rl { prompts_per_step: 0 }", "rl.prompts_per_step: must be > 0"},
      {"rl { prompts_per_step: 3 group_size: 3 minibatches: 2 }",
       "rl.minibatches = 2 does not divide rl.prompts_per_step * rl.group_size = 9"},
      {"rl { clip_low: 1 }", "rl.clip_low: must be in [0, 1), got 1"},
      {"rl { clip_high: -0.1 }", "rl.clip_high: must be in [0, 1)"},
      {"rl { dual_clip: 0.5 }", "rl.dual_clip: must be 0 (off) or > 1"},
      {"rl { target_kl: 0.1 }", "rl.kl_coef = 0, but rl.target_kl = 0.1 adapts"},
      {"rl { temperature: 0 }", "rl.temperature: must be > 0"},
      {"rl { top_p: 1.5 }", "rl.top_p: must be in (0, 1]"},
      {"rl { lr: -1 }", "rl.lr: must be > 0"},
      {"rl { gamma: 1.5 }", "rl.gamma: must be in [0, 1]"},
      {"rl { epochs: 0 }", "rl.epochs: must be > 0"},
      {"rl { arithmetic { operators: '/' } }", "rl.arithmetic.operators"},
      {"rl { arithmetic { max_digits: 12 } }", "rl.arithmetic digits [1, 12]"},
      {"precision: PRECISION_BF16", "precision: is PRECISION_BF16, but switchyard rl runs"},
      {"rl { algorithm: RL_GSPO group_size: 1 }",
       "rl.group_size: must be >= 2 for RL_GSPO, got 1 (a group of one has no baseline)"},
      {"rl { algorithm: RL_GSPO dual_clip: 3 }",
       "rl.dual_clip: is 3, but RL_GSPO clips each completion's sequence ratio"},
      {"rl { algorithm: RL_GSPO aggregation: AGG_SEQ_MEAN_TOKEN_SUM_NORM }",
       "rl.aggregation: is AGG_SEQ_MEAN_TOKEN_SUM_NORM, but RL_GSPO's loss is a mean over "
       "completions"},
      {"rl { rollout_correction { tis_cap: 0.5 } }",
       "rl.rollout_correction.tis_cap: must be 0 (off) or finite >= 1, got 0.5"},
      {"rl { rollout_correction { tis_cap: -2 } }",
       "rl.rollout_correction.tis_cap: must be 0 (off) or finite >= 1, got -2"},
      {"rl { rollout_correction { tis_cap: inf } }",
       "rl.rollout_correction.tis_cap: must be 0 (off) or finite >= 1, got inf"},
      {"rl { rollout_correction { tis_cap: nan } }",
       "rl.rollout_correction.tis_cap: must be 0 (off) or finite >= 1, got nan"},
  };
  for (const Case& c : cases) {
    const absl::Status status = load_rl({c.set});
    EXPECT_FALSE(status.ok()) << c.set;
    EXPECT_TRUE(absl::StrContains(status.message(), c.expected))
        << c.set << " gave: " << status.message();
    // The message points at the --set that broke the rule.
    if (c.set.find("''") == std::string::npos) {
      EXPECT_TRUE(absl::StartsWith(status.message(), "--set #1")) << status.message();
    }
  }
  // The model comes from the init checkpoint's run.
  const absl::Status model_set = load_rl({"model { d_model: 64 }"});
  EXPECT_TRUE(absl::StrContains(model_set.message(),
                                "--set #1 'model { d_model: 64 }':1:1: model: is set, but an RL "
                                "config takes the model from rl.init_checkpoint's run; remove the "
                                "model block"))
      << model_set;
  // PPO has no groups: one completion per prompt is fine.
  EXPECT_TRUE(load_rl({"rl { algorithm: RL_PPO group_size: 1 }"}).ok());
  // The cap's edges, and GSPO with the paper's clip range and the default aggregation.
  for (const char* ok :
       {"rl { rollout_correction { tis_cap: 0 } }", "rl { rollout_correction { tis_cap: 1 } }",
        "rl { algorithm: RL_GSPO clip_low: 3e-4 clip_high: 4e-4 "
        "aggregation: AGG_SEQ_MEAN_TOKEN_MEAN rollout_correction { tis_cap: 2 } }",
        "rl { algorithm: RL_PPO rollout_correction { tis_cap: 3 } }"}) {
    EXPECT_TRUE(load_rl({ok}).ok()) << ok << ": " << load_rl({ok});
  }
}

TEST(RlConfig, ResolvingNeedsAPretrainingRun) {
  switchyard::Experiment config = small_config();
  config.clear_model();
  config.clear_moe();
  config.clear_mtp();
  config.mutable_rl()->set_init_checkpoint("/nonexistent/run");
  auto resolved = resolve_rl_experiment(config);
  EXPECT_FALSE(resolved.ok());
  EXPECT_TRUE(absl::StrContains(resolved.status().message(),
                                "rl.init_checkpoint: /nonexistent/run has no config.textproto"))
      << resolved.status();

  // The model comes from the checkpoint's run; the RL config may not set it.
  const fs::path run = fs::path(::testing::TempDir()) / "rl_pretrained_run";
  fs::create_directories(run);
  std::ofstream(run / "config.textproto") << resolved_experiment_text(small_config());
  config.mutable_rl()->set_init_checkpoint(run.string());
  resolved = resolve_rl_experiment(config);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->model().d_model(), 32);
  EXPECT_EQ(resolved->train().micro_batch(), 1);
  config.mutable_model()->set_d_model(64);
  resolved = resolve_rl_experiment(config);
  EXPECT_TRUE(absl::StrContains(resolved.status().message(),
                                "model: an RL config takes the model from rl.init_checkpoint"))
      << resolved.status();
}

// `switchyard config` on an RL config: the RL rules, and the model of rl.init_checkpoint's run.
TEST(RlConfig, TheConfigCommandPrintsAnRlConfigWithTheCheckpointsModel) {
  register_rl_config_kind();
  const fs::path run = fs::path(::testing::TempDir()) / "rl_config_command_run";
  fs::create_directories(run);
  std::ofstream(run / "config.textproto") << resolved_experiment_text(small_config());
  const std::string path = write_temp(
      "rl_config_command.textproto",
      absl::StrCat("run_dir: \"runs/rl\"\nrl { init_checkpoint: \"", run.string(), "\" }\n"));
  auto config_command = [](const std::vector<std::string>& args) {
    std::ostringstream out, err;
    std::vector<std::string> argv = {"config"};
    argv.insert(argv.end(), args.begin(), args.end());
    const int code = run_cli(argv, out, err);
    return std::tuple{code, out.str(), err.str()};
  };
  auto [code, out, err] = config_command({"--config", path});
  ASSERT_EQ(code, 0) << err;
  // What `switchyard rl` runs: the checkpoint's model (d_model 32) under the RL settings.
  auto printed =
      load_experiment(write_temp("rl_config_printed.textproto", out), {}, rl_experiment_rules());
  ASSERT_TRUE(printed.ok()) << printed.status() << "\n" << out;
  EXPECT_EQ(printed->model().d_model(), 32);
  EXPECT_EQ(printed->rl().init_checkpoint(), run.string());
  EXPECT_EQ(printed->run_dir(), "runs/rl");

  // A bad RL value is named as `switchyard rl` names it.
  std::tie(code, out, err) = config_command({"--config", path, "--set", "rl { group_size: 1 }"});
  EXPECT_EQ(code, 1);
  EXPECT_TRUE(absl::StrContains(err, "rl.group_size: must be >= 2 for RL_GRPO")) << err;

  // Before the pretraining run exists, the config is still checked, and the output says what
  // is missing.
  std::tie(code, out, err) =
      config_command({"--config", path, "--set", "rl { init_checkpoint: '/nonexistent/run' }"});
  ASSERT_EQ(code, 0) << err;
  EXPECT_TRUE(absl::StartsWith(out,
                               "# model, moe and mtp come from rl.init_checkpoint "
                               "(/nonexistent/run), which has no config.textproto yet"))
      << out;
  EXPECT_FALSE(absl::StrContains(out, "model {")) << out;
  EXPECT_TRUE(absl::StrContains(out, "group_size: 8")) << out;
}

TEST(RlConfig, AMissingCheckpointIsAClearError) {
  LocalCommunicator world;
  auto trainer = make_trainer(small_config(), world);
  const absl::Status status = trainer->load_policy_weights("/nonexistent/checkpoint");
  EXPECT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(), "manifest.json")) << status;
}

}  // namespace
}  // namespace sy::rl
