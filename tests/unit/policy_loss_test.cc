#include "rl/policy_loss.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy::rl {
namespace {

using sy::testing::all_close;
using sy::testing::grad_check;
using sy::testing::GradCheckOptions;
using sy::testing::rng_for_test;

// --- one token: the clipped surrogate and its gradient -----------------------------------------

struct TokenCase {
  std::string name;
  double ratio, advantage, clip_low, clip_high, dual_clip;
  double loss, dlogp;  // by hand from L = max(−ρA, −clip(ρ)A), dual: min(L, −cA) for A < 0
  bool clipped, dual_clipped;
};

const TokenCase kTokenCases[] = {
    // Inside [1 − ε, 1 + ε]: L = −ρA, dL/dlogp = −ρA.
    {"InactivePositive", 1.1, 2, 0.2, 0.2, 0, -2.2, -2.2, false, false},
    {"InactiveNegative", 0.9, -1, 0.2, 0.2, 0, 0.9, 0.9, false, false},
    // A > 0, ρ above 1 + ε: the clipped term −1.2 · 2 = −2.4 > −3 wins; no gradient.
    {"HighSideClippedForPositiveA", 1.5, 2, 0.2, 0.2, 0, -2.4, 0, true, false},
    // A > 0, ρ below 1 − ε: −ρA = −1 > −0.8 · 2 = −1.6 wins; the gradient still flows.
    {"LowRatioNotClippedForPositiveA", 0.5, 2, 0.2, 0.2, 0, -1.0, -1.0, false, false},
    // A < 0, ρ below 1 − ε: −0.8 · (−1) = 0.8 > 0.5 wins; no gradient.
    {"LowSideClippedForNegativeA", 0.5, -1, 0.2, 0.2, 0, 0.8, 0, true, false},
    // A < 0, ρ above 1 + ε: −ρA = 1.5 > 1.2 wins; the gradient flows (no dual-clip).
    {"HighRatioNotClippedForNegativeA", 1.5, -1, 0.2, 0.2, 0, 1.5, 1.5, false, false},
    // Clip-higher (ε_low 0.2, ε_high 0.28): ρ = 1.25 is clipped only under the symmetric 0.2.
    {"ClipHigherLetsRatioRise", 1.25, 1, 0.2, 0.28, 0, -1.25, -1.25, false, false},
    {"SymmetricClipsSameRatio", 1.25, 1, 0.2, 0.2, 0, -1.2, 0, true, false},
    {"ClipHigherUpperBound", 1.3, 1, 0.2, 0.28, 0, -1.28, 0, true, false},
    {"ClipHigherLowerBoundIsEpsLow", 0.78, -1, 0.2, 0.28, 0, 0.8, 0, true, false},
    {"ClipHigherInsideLowerBound", 0.82, -1, 0.2, 0.28, 0, 0.82, 0.82, false, false},
    // Dual-clip c = 3, A < 0: L = min(−ρA, −cA); capped at 3 when ρ > 3.
    {"DualClipActive", 4, -1, 0.2, 0.2, 3, 3, 0, false, true},
    {"DualClipActiveScalesWithA", 5, -0.5, 0.2, 0.2, 3, 1.5, 0, false, true},
    {"DualClipInactiveBelowC", 2, -1, 0.2, 0.2, 3, 2, 2, false, false},
    {"DualClipIgnoresPositiveA", 4, 1, 0.2, 0.2, 3, -1.2, 0, true, false},
    {"DualClipLeavesLowClipAlone", 0.5, -1, 0.2, 0.2, 3, 0.8, 0, true, false},
    {"ZeroAdvantage", 1.7, 0, 0.2, 0.2, 3, 0, 0, false, false},
};

void PrintTo(const TokenCase& c, std::ostream* os) { *os << c.name; }

class TokenCaseTest : public ::testing::TestWithParam<TokenCase> {};

TEST_P(TokenCaseTest, LossAndGradientMatchHandComputed) {
  const TokenCase& c = GetParam();
  PolicyLossInputs in;
  in.logp = Tensor::from_f32({static_cast<float>(std::log(c.ratio))}, {1, 1});
  in.old_logp = Tensor::from_f32({0}, {1, 1});
  in.advantages = Tensor::from_f32({static_cast<float>(c.advantage)}, {1, 1});
  in.mask = Tensor::from_f32({1}, {1, 1});
  PolicyLossOptions options{
      .clip_low = c.clip_low, .clip_high = c.clip_high, .dual_clip = c.dual_clip};
  Tensor dlogp = Tensor::empty({1, 1});
  PolicyLossStats stats = policy_loss(dlogp, in, options);
  EXPECT_NEAR(stats.loss, c.loss, 1e-6);
  EXPECT_NEAR(stats.policy_loss, c.loss, 1e-6);
  EXPECT_TRUE(all_close(dlogp, {c.dlogp}, 1e-6, 1e-7));
  if (c.dlogp == 0) EXPECT_EQ(dlogp.data<float>()[0], 0.0f) << "clipped: exactly no gradient";
  EXPECT_EQ(stats.clip_fraction, c.clipped ? 1.0 : 0.0);
  EXPECT_EQ(stats.dual_clip_fraction, c.dual_clipped ? 1.0 : 0.0);
  EXPECT_EQ(stats.kl, 0);
}

INSTANTIATE_TEST_SUITE_P(Cases, TokenCaseTest, ::testing::ValuesIn(kTokenCases),
                         [](const auto& info) { return info.param.name; });

// Four tokens and one masked one (garbage values): ratios {1.5, 0.5, 1.1, 4} with A {2, −1, 2,
// −1}, ε 0.2, dual-clip 3 → per-token L {−2.4, 0.8, −2.2, 3}, token mean −0.2; the ε clip is
// active on 2 of 4, the dual cap on 1; approx KL = mean ½ ln²ρ = 0.32196888173231314.
TEST(PolicyLossTest, MetricsOverABatch) {
  PolicyLossInputs in;
  auto ln = [](double r) { return static_cast<float>(std::log(r)); };
  in.logp = Tensor::from_f32({ln(1.5), ln(0.5), 7, ln(1.1), ln(4)}, {1, 5});
  in.old_logp = Tensor::from_f32({0, 0, -7, 0, 0}, {1, 5});
  in.advantages = Tensor::from_f32({2, -1, 100, 2, -1}, {1, 5});
  in.mask = Tensor::from_f32({1, 1, 0, 1, 1}, {1, 5});
  Tensor dlogp = Tensor::empty({1, 5});
  PolicyLossStats stats = policy_loss(dlogp, in, {.dual_clip = 3});
  EXPECT_NEAR(stats.loss, -0.2, 1e-6);
  EXPECT_DOUBLE_EQ(stats.clip_fraction, 0.5);
  EXPECT_DOUBLE_EQ(stats.dual_clip_fraction, 0.25);
  EXPECT_NEAR(stats.approx_kl_old, 0.32196888173231314, 1e-6);
  EXPECT_TRUE(all_close(dlogp, {0, 0, 0, -2.2 / 4, 0}, 1e-6, 1e-8));
}

// --- aggregation ---------------------------------------------------------------------------------

// Three sequences of 2, 4 and 1 response tokens in a [3, 4] batch:
//   row 0: mask {1, 1, 0, 0}  A {1, 2}
//   row 1: mask {1, 1, 1, 1}  A {−1, 0.5, 3, −2}
//   row 2: mask {0, 0, 1, 0}  A {4}
// At ratio 1 (logp = old_logp) the per-token loss is −A and its gradient −A, so
//   token-mean:               w = 1/7,                 loss = −7.5/7 = −1.0714285714285714
//   seq-mean-token-mean:      w = 1/6, 1/12, 1/3,      loss = −(1.5 + 0.125 + 4)/3 = −1.875
//   seq-mean-token-sum-norm:  L = 5: w = 1/15,         loss = −(3 + 0.5 + 4)/15 = −0.5
//                             L = T = 4: w = 1/12,     loss = −7.5/12 = −0.625
struct AggregationCase {
  std::string name;
  LossAggregation aggregation;
  double row_weight[3];
  double loss;
};

const AggregationCase kAggregationCases[] = {
    {"TokenMean", {AggregationMode::kTokenMean}, {1.0 / 7, 1.0 / 7, 1.0 / 7}, -7.5 / 7},
    {"SeqMeanTokenMean",
     {AggregationMode::kSeqMeanTokenMean},
     {1.0 / 6, 1.0 / 12, 1.0 / 3},
     -1.875},
    {"SeqMeanTokenSumNorm",
     {AggregationMode::kSeqMeanTokenSumNorm, 5},
     {1.0 / 15, 1.0 / 15, 1.0 / 15},
     -0.5},
    {"SeqMeanTokenSumNormPaddedLength",
     {AggregationMode::kSeqMeanTokenSumNorm, 0},
     {1.0 / 12, 1.0 / 12, 1.0 / 12},
     -0.625},
};

const std::vector<float> kMask = {1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0};
const std::vector<float> kAdvantages = {1, 2, 50, 50, -1, 0.5f, 3, -2, 50, 50, 4, 50};

void PrintTo(const AggregationCase& c, std::ostream* os) { *os << c.name; }

class AggregationTest : public ::testing::TestWithParam<AggregationCase> {};

TEST_P(AggregationTest, WeightsValueAndGradient) {
  const AggregationCase& c = GetParam();
  Tensor mask = Tensor::from_f32(kMask, {3, 4});
  std::vector<double> expected_w(12, 0.0);
  for (int i = 0; i < 12; ++i)
    if (kMask[i] != 0) expected_w[i] = c.row_weight[i / 4];
  std::vector<double> w = aggregation_weights(mask, c.aggregation);
  ASSERT_EQ(w.size(), 12u);
  for (int i = 0; i < 12; ++i) EXPECT_NEAR(w[i], expected_w[i], 1e-15) << i;

  PolicyLossInputs in;
  in.logp = Tensor::from_f32({-0.5f, -1, 3, 3, -2, -0.25f, -3, -1.5f, 3, 3, -0.75f, 3}, {3, 4});
  in.old_logp = in.logp.clone();
  in.old_logp.data<float>()[2] = -9;  // under mask 0: must not matter
  in.advantages = Tensor::from_f32(kAdvantages, {3, 4});
  in.mask = mask;
  Tensor dlogp = Tensor::from_f32(std::vector<float>(12, 42.0f), {3, 4});
  PolicyLossStats stats = policy_loss(dlogp, in, {.aggregation = c.aggregation});
  EXPECT_NEAR(stats.loss, c.loss, 1e-6);
  std::vector<double> expected_grad(12);
  for (int i = 0; i < 12; ++i)
    expected_grad[i] = -expected_w[i] * (kMask[i] != 0 ? kAdvantages[i] : 0);
  EXPECT_TRUE(all_close(dlogp, expected_grad, 1e-6, 1e-8));
}

INSTANTIATE_TEST_SUITE_P(Modes, AggregationTest, ::testing::ValuesIn(kAggregationCases),
                         [](const auto& info) { return info.param.name; });

// A row without response tokens has no token mean, so seq-mean-token-mean leaves it out;
// seq-mean-token-sum-norm divides by the constant L · B and so counts it.
TEST(AggregationWeightsTest, EmptyRow) {
  Tensor mask = Tensor::from_f32({1, 1, 0, 0, 0, 0}, {2, 3});
  const std::vector<std::pair<LossAggregation, double>> cases = {
      {{AggregationMode::kTokenMean}, 0.5},
      {{AggregationMode::kSeqMeanTokenMean}, 0.5},
      {{AggregationMode::kSeqMeanTokenSumNorm}, 1.0 / 6}};
  for (const auto& [aggregation, weight] : cases) {
    std::vector<double> w = aggregation_weights(mask, aggregation);
    EXPECT_EQ(w, (std::vector<double>{weight, weight, 0, 0, 0, 0}))
        << aggregation_mode_name(aggregation.mode);
  }
  Tensor none = Tensor::zeros({2, 3});
  for (const auto& [aggregation, weight] : cases)
    EXPECT_EQ(aggregation_weights(none, aggregation), std::vector<double>(6, 0.0));
}

// --- KL to the reference in the loss ------------------------------------------------------------

// Two tokens at ratio 1 with A {1, −1}: the policy part is 0 with gradient {−0.5, 0.5} (token
// mean). logp {−1, −2}, ref_logp {−1.5, −1.25}: d = {0.5, −0.75}, β = 0.1. Per estimator
// (see kl_test.cc for KL and dKL/dlogp at these d):
//   k1: KL {0.5, −0.75} → mean −0.125;     grad {0.5(−1 + 0.1), 0.5(1 + 0.1)} = {−0.45, 0.55}
//   k2: KL {0.125, 0.28125} → 0.203125;    grad {0.5(−1 + 0.05), 0.5(1 − 0.075)}
//                                               = {−0.475, 0.4625}
//   k3: KL {0.10653065971263342, 0.3670000166126748} → 0.2367653381626541;
//       grad {0.5(−1 + 0.03934693402873666), 0.5(1 − 0.11170000166126748)}
//          = {−0.48032653298563166, 0.44414999916936626}
struct KlLossCase {
  KlEstimator estimator;
  double kl;
  double grad[2];
};

const KlLossCase kKlLossCases[] = {
    {KlEstimator::kK1, -0.125, {-0.45, 0.55}},
    {KlEstimator::kK2, 0.203125, {-0.475, 0.4625}},
    {KlEstimator::kK3, 0.2367653381626541, {-0.48032653298563166, 0.44414999916936626}},
};

void PrintTo(const KlLossCase& c, std::ostream* os) { *os << kl_estimator_name(c.estimator); }

class KlInLossTest : public ::testing::TestWithParam<KlLossCase> {
 protected:
  PolicyLossInputs inputs() const {
    PolicyLossInputs in;
    in.logp = Tensor::from_f32({-1, -2}, {1, 2});
    in.old_logp = in.logp.clone();
    in.advantages = Tensor::from_f32({1, -1}, {1, 2});
    in.mask = Tensor::from_f32({1, 1}, {1, 2});
    in.ref_logp = Tensor::from_f32({-1.5f, -1.25f}, {1, 2});
    return in;
  }
};

TEST_P(KlInLossTest, AddsBetaTimesAggregatedKlAndItsGradient) {
  const KlLossCase& c = GetParam();
  Tensor dlogp = Tensor::empty({1, 2});
  PolicyLossStats stats =
      policy_loss(dlogp, inputs(), {.kl_coef = 0.1, .kl_estimator = c.estimator});
  EXPECT_NEAR(stats.policy_loss, 0, 1e-7);
  EXPECT_NEAR(stats.kl, c.kl, 1e-7);
  EXPECT_NEAR(stats.loss, 0.1 * c.kl, 1e-7);
  EXPECT_TRUE(all_close(dlogp, {c.grad[0], c.grad[1]}, 1e-6, 1e-8));
}

// With the KL in the reward instead (kl_coef 0), the loss reports the KL but neither its value
// nor its gradient enters the loss.
TEST_P(KlInLossTest, ZeroCoefficientReportsKlOnly) {
  const KlLossCase& c = GetParam();
  Tensor dlogp = Tensor::empty({1, 2});
  PolicyLossStats stats = policy_loss(dlogp, inputs(), {.kl_estimator = c.estimator});
  EXPECT_NEAR(stats.kl, c.kl, 1e-7);
  EXPECT_NEAR(stats.loss, 0, 1e-7);
  EXPECT_TRUE(all_close(dlogp, {-0.5, 0.5}, 1e-7, 0));
}

INSTANTIATE_TEST_SUITE_P(Estimators, KlInLossTest, ::testing::ValuesIn(kKlLossCases),
                         [](const auto& info) { return kl_estimator_name(info.param.estimator); });

TEST(PolicyLossDeathTest, BadOptionsAreProgrammingErrors) {
  PolicyLossInputs in;
  in.logp = Tensor::from_f32({-1}, {1, 1});
  in.old_logp = in.logp.clone();
  in.advantages = Tensor::from_f32({1}, {1, 1});
  in.mask = Tensor::from_f32({1}, {1, 1});
  EXPECT_DEATH(policy_loss(Tensor(), in, {.dual_clip = 0.5}), "dual_clip must be 0");
  EXPECT_DEATH(policy_loss(Tensor(), in, {.kl_coef = 0.1}), "kl_coef > 0 needs ref_logp");
  in.mask = Tensor::from_f32({0.5f}, {1, 1});
  EXPECT_DEATH(policy_loss(Tensor(), in, {}), "expected 0 or 1");
}

// --- finite differences in every mode ---------------------------------------------------------

// Random [4, 6] batches with ragged masks; ratios spread over the clipped, unclipped and
// dual-clipped regions but kept 0.02 away from each kink (1 − ε_low, 1 + ε_high, c), where
// the loss is not differentiable.
class PolicyGradientTest
    : public ::testing::TestWithParam<std::tuple<AggregationMode, KlEstimator>> {};

TEST_P(PolicyGradientTest, MatchesFiniteDifferences) {
  auto [mode, estimator] = GetParam();
  const PolicyLossOptions options{.clip_low = 0.2,
                                  .clip_high = 0.28,
                                  .dual_clip = 2.0,
                                  .aggregation = {mode, 8},
                                  .kl_coef = 0.1,
                                  .kl_estimator = estimator};
  auto rng = rng_for_test();
  const int batch = 4, seq_len = 6;
  std::normal_distribution<double> normal(0, 1);
  std::vector<float> logp, old, adv, ref, mask;
  for (int b = 0; b < batch; ++b) {
    const int start = b % 2, length = 1 + b + (b == 3);  // 1, 2, 3, 5 response tokens
    for (int t = 0; t < seq_len; ++t) {
      double ratio;
      do {
        ratio = std::exp(0.45 * normal(rng));
      } while (std::fabs(ratio - 0.8) < 0.02 || std::fabs(ratio - 1.28) < 0.02 ||
               std::fabs(ratio - 2.0) < 0.02);
      const double o = -1.5 + 0.5 * normal(rng);
      old.push_back(static_cast<float>(o));
      logp.push_back(static_cast<float>(o + std::log(ratio)));
      adv.push_back(static_cast<float>(normal(rng)));
      ref.push_back(static_cast<float>(o + 0.3 * normal(rng)));
      mask.push_back(t >= start && t < start + length ? 1.0f : 0.0f);
    }
  }
  PolicyLossInputs in;
  in.logp = Tensor::from_f32(logp, {batch, seq_len});
  in.old_logp = Tensor::from_f32(old, {batch, seq_len});
  in.advantages = Tensor::from_f32(adv, {batch, seq_len});
  in.mask = Tensor::from_f32(mask, {batch, seq_len});
  in.ref_logp = Tensor::from_f32(ref, {batch, seq_len});
  Tensor dlogp = Tensor::empty({batch, seq_len});
  PolicyLossStats stats = policy_loss(dlogp, in, options);
  EXPECT_GT(stats.clip_fraction, 0);  // the random ratios reach the clipped regions
  auto loss = [&] { return policy_loss(Tensor(), in, options).loss; };
  EXPECT_TRUE(grad_check(loss, in.logp, dlogp, rng,
                         GradCheckOptions{.eps = 1e-3, .rtol = 1e-3, .atol = 1e-6}));
}

INSTANTIATE_TEST_SUITE_P(
    Modes, PolicyGradientTest,
    ::testing::Combine(::testing::Values(AggregationMode::kTokenMean,
                                         AggregationMode::kSeqMeanTokenMean,
                                         AggregationMode::kSeqMeanTokenSumNorm),
                       ::testing::Values(KlEstimator::kK1, KlEstimator::kK2, KlEstimator::kK3)),
    [](const auto& info) {
      std::string name = aggregation_mode_name(std::get<0>(info.param));
      for (char& ch : name)
        if (ch == '-') ch = '_';
      return name + "_" + kl_estimator_name(std::get<1>(info.param));
    });

// --- rollout correction (TIS weights) on the token-level loss ------------------------------

// Three tokens at ratio 1 with A {1, −2, 0.5} and TIS weights {0.5, 2, 1.25}, token mean:
//   policy loss = (−1 · 0.5 + 2 · 2 − 0.5 · 1.25) / 3 = 2.875 / 3
// KL (k1, β 0.1) with logp − ref_logp = {0.5, −0.25, 0.25}: mean 0.5 / 3, not reweighted:
//   loss = 2.875 / 3 + 0.1 · 0.5 / 3 = 0.975
//   dlogp = (w · (−A) + β) / 3 = {(−0.5 + 0.1), (4 + 0.1), (−0.625 + 0.1)} / 3
TEST(PolicyLossTisTest, WeightsScaleThePolicyGradientTermAlone) {
  PolicyLossInputs in;
  in.logp = Tensor::from_f32({-1, -2, -0.5f}, {1, 3});
  in.old_logp = in.logp.clone();
  in.advantages = Tensor::from_f32({1, -2, 0.5f}, {1, 3});
  in.mask = Tensor::from_f32({1, 1, 1}, {1, 3});
  in.ref_logp = Tensor::from_f32({-1.5f, -1.75f, -0.75f}, {1, 3});
  in.is_weights = Tensor::from_f32({0.5f, 2, 1.25f}, {1, 3});
  Tensor dlogp = Tensor::empty({1, 3});
  const PolicyLossStats stats =
      policy_loss(dlogp, in, {.kl_coef = 0.1, .kl_estimator = KlEstimator::kK1});
  EXPECT_NEAR(stats.policy_loss, 2.875 / 3, 1e-6);
  EXPECT_NEAR(stats.kl, 0.5 / 3, 1e-6);
  EXPECT_NEAR(stats.loss, 0.975, 1e-6);
  EXPECT_TRUE(all_close(dlogp, {-0.4 / 3, 4.1 / 3, -0.525 / 3}, 1e-6, 1e-7));
}

// Weights of exactly 1 are TIS turned off: the same loss and gradient, bit for bit, for both
// losses (the trainer passes no weights when rl.rollout_correction is off).
TEST(PolicyLossTisTest, UnitWeightsLeaveBothLossesUnchanged) {
  auto rng = rng_for_test();
  std::normal_distribution<double> normal(0, 1);
  const int batch = 3, seq_len = 5;
  std::vector<float> logp, old, adv, ref, mask;
  for (int b = 0; b < batch; ++b) {
    const float a = static_cast<float>(normal(rng));
    for (int t = 0; t < seq_len; ++t) {
      old.push_back(static_cast<float>(-1.5 + 0.5 * normal(rng)));
      logp.push_back(old.back() + static_cast<float>(0.3 * normal(rng)));
      ref.push_back(old.back() + static_cast<float>(0.3 * normal(rng)));
      adv.push_back(a);
      mask.push_back(t >= b ? 1.0f : 0.0f);
    }
  }
  PolicyLossInputs in;
  in.logp = Tensor::from_f32(logp, {batch, seq_len});
  in.old_logp = Tensor::from_f32(old, {batch, seq_len});
  in.advantages = Tensor::from_f32(adv, {batch, seq_len});
  in.mask = Tensor::from_f32(mask, {batch, seq_len});
  in.ref_logp = Tensor::from_f32(ref, {batch, seq_len});
  const PolicyLossOptions options{.clip_low = 0.1, .clip_high = 0.1, .kl_coef = 0.1};
  for (const bool sequence : {false, true}) {
    auto run = [&](const PolicyLossInputs& inputs, const Tensor& dlogp) {
      return sequence ? sequence_policy_loss(dlogp, inputs, options)
                      : policy_loss(dlogp, inputs, options);
    };
    Tensor plain = Tensor::empty({batch, seq_len}), weighted = Tensor::empty({batch, seq_len});
    const PolicyLossStats off = run(in, plain);
    PolicyLossInputs ones = in;
    ones.is_weights = Tensor::from_f32(mask, {batch, seq_len});  // 1 at every response token
    const PolicyLossStats on = run(ones, weighted);
    EXPECT_EQ(off.loss, on.loss) << "sequence " << sequence;
    EXPECT_EQ(off.clip_fraction, on.clip_fraction);
    EXPECT_EQ(plain.to_f32_vector(), weighted.to_f32_vector());
  }
}

// --- GSPO: the sequence-level loss -------------------------------------------------------------

// One completion (S = 1): s = exp(mean of logp − old_logp over its n tokens),
// L = max(−sA, −clip(s, 1 − ε_low, 1 + ε_high) A), dL/dlogp_t = −sA / n unclipped, else 0.
struct SequenceCase {
  std::string name;
  std::vector<double> log_ratios;  // logp − old_logp of each token
  double advantage, clip_low, clip_high;
  double loss, dlogp;  // by hand; dlogp the same at each token
  bool clipped;
};

const SequenceCase kSequenceCases[] = {
    // s = e^−0.1 = 0.904837418 inside [0.8, 1.2]: L = −2s, dL/dlogp_t = −2s / 2.
    {"InactivePositive", {0.1, -0.3}, 2, 0.2, 0.2, -1.80967484, -0.90483742, false},
    {"InactiveNegative", {0.1, -0.3}, -1, 0.2, 0.2, 0.90483742, 0.45241871, false},
    // s = e^0.3 = 1.349858808 above 1.2 with A > 0: −1.2 · 1.5 wins; no gradient, though the
    // first token's own ratio e^0.5 and the others' are all outside the clip range too.
    {"HighSideClippedForPositiveA", {0.5, 0.3, 0.2, 0.2}, 1.5, 0.2, 0.2, -1.8, 0, true},
    // s = e^−0.3 = 0.740818221 below 0.8 with A > 0: −sA = −1.4816 > −1.6; gradient −2s/3.
    {"LowRatioFreeForPositiveA", {-0.2, -0.4, -0.3}, 2, 0.2, 0.2, -1.48163644, -0.49387881, false},
    // The same ratio with A < 0: −0.8 · (−1) = 0.8 > 0.7408 wins; no gradient.
    {"LowSideClippedForNegativeA", {-0.2, -0.4, -0.3}, -1, 0.2, 0.2, 0.8, 0, true},
    // s = e^0.3 with A = −0.5: 0.5s = 0.6749 > 0.6 wins; gradient 0.5s / 3.
    {"HighRatioFreeForNegativeA", {0.6, 0.0, 0.3}, -0.5, 0.2, 0.2, 0.67492940, 0.22497647, false},
    // The paper's ranges [1 − 3e-4, 1 + 4e-4]: a drift of 1e-3 on one of two tokens, s =
    // e^0.0005 = 1.000500125, is already clipped for A > 0 and not for A < 0.
    {"PaperRangeClipsASmallDrift", {0.001, 0.0}, 1, 3e-4, 4e-4, -1.0004, 0, true},
    {"PaperRangeLetsNegativeAFlow", {0.001, 0.0}, -1, 3e-4, 4e-4, 1.00050013, 0.50025006, false},
    // A tie (s = 1 = clip(s) with ε = 0) goes to the unclipped term: gradient −A / n.
    {"TieGoesToTheUnclippedTerm", {0.0, 0.0}, 2, 0, 0, -2, -1, false},
    {"ZeroAdvantage", {0.5, 0.5}, 0, 0.2, 0.2, 0, 0, false},
};

void PrintTo(const SequenceCase& c, std::ostream* os) { *os << c.name; }

class SequenceCaseTest : public ::testing::TestWithParam<SequenceCase> {};

TEST_P(SequenceCaseTest, LossAndGradientMatchHandComputed) {
  const SequenceCase& c = GetParam();
  const int64_t n = static_cast<int64_t>(c.log_ratios.size());
  // The completion sits after a prompt token (mask 0, garbage values) in a row of n + 2.
  std::vector<float> logp = {9}, old = {-9}, adv = {100}, mask = {0};
  for (double d : c.log_ratios) {
    old.push_back(-1.25f);
    logp.push_back(static_cast<float>(-1.25 + d));
    adv.push_back(static_cast<float>(c.advantage));
    mask.push_back(1);
  }
  logp.push_back(3);
  old.push_back(7);
  adv.push_back(-100);
  mask.push_back(0);
  PolicyLossInputs in;
  in.logp = Tensor::from_f32(logp, {1, n + 2});
  in.old_logp = Tensor::from_f32(old, {1, n + 2});
  in.advantages = Tensor::from_f32(adv, {1, n + 2});
  in.mask = Tensor::from_f32(mask, {1, n + 2});
  Tensor dlogp = Tensor::from_f32(std::vector<float>(n + 2, 42.0f), {1, n + 2});
  const PolicyLossStats stats =
      sequence_policy_loss(dlogp, in, {.clip_low = c.clip_low, .clip_high = c.clip_high});
  EXPECT_NEAR(stats.loss, c.loss, 1e-6);
  EXPECT_NEAR(stats.policy_loss, c.loss, 1e-6);
  std::vector<double> expected(n + 2, c.dlogp);
  expected.front() = expected.back() = 0;
  EXPECT_TRUE(all_close(dlogp, expected, 1e-5, 1e-7));
  if (c.clipped)
    for (int64_t t = 0; t < n + 2; ++t) EXPECT_EQ(dlogp.data<float>()[t], 0.0f) << t;
  EXPECT_EQ(stats.clip_fraction, c.clipped ? 1.0 : 0.0);
  EXPECT_EQ(stats.dual_clip_fraction, 0);
}

INSTANTIATE_TEST_SUITE_P(Cases, SequenceCaseTest, ::testing::ValuesIn(kSequenceCases),
                         [](const auto& info) { return info.param.name; });

// Five rows of unequal lengths in a [5, 4] batch, ε 0.2 (garbage under mask 0):
//   row 0: n 2, d {0.1, −0.3},          s = e^−0.1,  A  2    → L −2s = −1.8096748361 (free)
//   row 1: n 4, d {0.5, 0.3, 0.2, 0.2}, s = e^0.3,   A  1.5  → L −1.8 (clipped)
//   row 2: n 3, d {−0.2, −0.4, −0.3},   s = e^−0.3,  A −1    → L 0.8 (clipped)
//   row 3: n 3, d {0.6, 0, 0.3},        s = e^0.3,   A −0.5  → L 0.6749294038 (free)
//   row 4: no response tokens: not one of the S = 4 sequences
// loss = (−1.8096748361 − 1.8 + 0.8 + 0.6749294038) / 4 = −0.5336863581; dlogp_t = −A s /
// (4 n): row 0 −0.2262093545, row 3 0.0562441170, 0 elsewhere; tokens of clipped rows 7 / 12.
// With TIS weights {0.5, 2, 1, 1.5} per row: loss = (0.5 · −1.8096748361 + 2 · −1.8 + 0.8 +
// 1.5 · 0.6749294038) / 4 = −0.6731108282, and the two free rows' gradients scale alike.
TEST(SequencePolicyLossTest, UnequalLengthsAndEmptyRowMatchHandComputed) {
  const std::vector<float> mask = {1, 1, 0, 0,  //
                                   1, 1, 1, 1,  //
                                   0, 1, 1, 1,  //
                                   1, 1, 1, 0,  //
                                   0, 0, 0, 0};
  const std::vector<float> d = {0.1f, -0.3f, 5,     5,      //
                                0.5f, 0.3f,  0.2f,  0.2f,   //
                                5,    -0.2f, -0.4f, -0.3f,  //
                                0.6f, 0,     0.3f,  5,      //
                                5,    5,     5,     5};
  const std::vector<float> adv = {2,  2,  9,     9,     1.5f,  1.5f, 1.5f, 1.5f, 9, -1,
                                  -1, -1, -0.5f, -0.5f, -0.5f, 9,    9,    9,    9, 9};
  std::vector<float> old(20), logp(20);
  for (int i = 0; i < 20; ++i) {
    old[i] = -0.5f - 0.125f * static_cast<float>(i % 7);
    logp[i] = old[i] + d[i];
  }
  PolicyLossInputs in;
  in.logp = Tensor::from_f32(logp, {5, 4});
  in.old_logp = Tensor::from_f32(old, {5, 4});
  in.advantages = Tensor::from_f32(adv, {5, 4});
  in.mask = Tensor::from_f32(mask, {5, 4});
  Tensor dlogp = Tensor::empty({5, 4});
  PolicyLossStats stats = sequence_policy_loss(dlogp, in, {});
  EXPECT_NEAR(stats.loss, -0.5336863581, 1e-6);
  EXPECT_NEAR(stats.clip_fraction, 7.0 / 12, 1e-12);
  const double g0 = -0.2262093545, g3 = 0.0562441170;
  EXPECT_TRUE(all_close(dlogp, {g0, g0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, g3, g3, g3, 0, 0, 0, 0, 0},
                        1e-5, 1e-8));

  const float row_w[5] = {0.5f, 2, 1, 1.5f, 7};
  std::vector<float> weights(20);
  for (int i = 0; i < 20; ++i) weights[i] = mask[i] * row_w[i / 4];
  in.is_weights = Tensor::from_f32(weights, {5, 4});
  stats = sequence_policy_loss(dlogp, in, {});
  EXPECT_NEAR(stats.loss, -0.6731108282, 1e-6);
  EXPECT_TRUE(all_close(dlogp, {0.5 * g0, 0.5 * g0, 0,        0,        0,        0, 0, 0, 0, 0,
                                0,        0,        1.5 * g3, 1.5 * g3, 1.5 * g3, 0, 0, 0, 0, 0},
                        1e-5, 1e-8));
}

// The KL term weighs each completion the same (1/(S n_b)) and is not reweighted by TIS. Two
// rows at ratio 1 (s = 1, unclipped), A {1, −1}, k1 with logp − ref_logp = {0.4} and
// {0.2, −0.6}, β 0.5:
//   policy: (−1 + 1) / 2 = 0; dlogp row 0: −1/2, row 1: 1/(2 · 2) = 0.25 each
//   KL: 0.4 / 2 + (0.2 − 0.6) / 4 = 0.1; dKL/dlogp row 0: 1/2, row 1: 1/4
//   loss 0.05; dlogp {−0.5 + 0.25, 0.25 + 0.125, 0.25 + 0.125}
// TIS weights {2, 0.5}: policy (−2 + 0.5) / 2 = −0.75, loss −0.7, dlogp {−1 + 0.25,
// 0.125 + 0.125, 0.125 + 0.125}.
TEST(SequencePolicyLossTest, KlIsSeqMeanTokenMeanAndNotReweighted) {
  PolicyLossInputs in;
  in.logp = Tensor::from_f32({-1, 0, -2, -0.5f}, {2, 2});
  in.old_logp = in.logp.clone();
  in.advantages = Tensor::from_f32({1, 0, -1, -1}, {2, 2});
  in.mask = Tensor::from_f32({1, 0, 1, 1}, {2, 2});
  in.ref_logp = Tensor::from_f32({-1.4f, 0, -2.2f, 0.1f}, {2, 2});
  const PolicyLossOptions options{.kl_coef = 0.5, .kl_estimator = KlEstimator::kK1};
  Tensor dlogp = Tensor::empty({2, 2});
  PolicyLossStats stats = sequence_policy_loss(dlogp, in, options);
  EXPECT_NEAR(stats.policy_loss, 0, 1e-7);
  EXPECT_NEAR(stats.kl, 0.1, 1e-6);
  EXPECT_NEAR(stats.loss, 0.05, 1e-6);
  EXPECT_TRUE(all_close(dlogp, {-0.25, 0, 0.375, 0.375}, 1e-6, 1e-7));
  in.is_weights = Tensor::from_f32({2, 0, 0.5f, 0.5f}, {2, 2});
  stats = sequence_policy_loss(dlogp, in, options);
  EXPECT_NEAR(stats.policy_loss, -0.75, 1e-6);
  EXPECT_NEAR(stats.loss, -0.7, 1e-6);
  EXPECT_TRUE(all_close(dlogp, {-0.75, 0, 0.25, 0.25}, 1e-6, 1e-7));
}

TEST(SequencePolicyLossDeathTest, AdvantagesAndWeightsArePerCompletion) {
  PolicyLossInputs in;
  in.logp = Tensor::from_f32({-1, -1}, {1, 2});
  in.old_logp = in.logp.clone();
  in.advantages = Tensor::from_f32({1, 2}, {1, 2});
  in.mask = Tensor::from_f32({1, 1}, {1, 2});
  EXPECT_DEATH(sequence_policy_loss(Tensor(), in, {}), "a completion has one");
  in.advantages = Tensor::from_f32({1, 1}, {1, 2});
  in.is_weights = Tensor::from_f32({1, 2}, {1, 2});
  EXPECT_DEATH(sequence_policy_loss(Tensor(), in, {}), "a completion has one");
  in.is_weights = Tensor();
  EXPECT_DEATH(sequence_policy_loss(Tensor(), in, {.dual_clip = 3}), "takes no dual_clip");
}

// Random [5, 7] batches of ragged rows, one advantage and one TIS weight per row, k3 KL in the
// loss; sequence ratios kept 0.01 away from the kinks 1 − ε_low and 1 + ε_high (a step of 1e-3
// in one log-prob moves s by less than that).
TEST(SequencePolicyLossTest, GradientMatchesFiniteDifferences) {
  const PolicyLossOptions options{
      .clip_low = 0.05, .clip_high = 0.08, .kl_coef = 0.1, .kl_estimator = KlEstimator::kK3};
  auto rng = rng_for_test();
  std::normal_distribution<double> normal(0, 1);
  const int batch = 5, seq_len = 7;
  std::vector<float> logp, old, adv, ref, mask, weights;
  for (int b = 0; b < batch; ++b) {
    const int start = b % 3, length = 1 + b;  // 1 to 5 response tokens
    std::vector<double> d(seq_len);
    double s;
    do {
      double mean = 0;
      for (int t = 0; t < seq_len; ++t) {
        d[t] = 0.15 * normal(rng);
        if (t >= start && t < start + length) mean += d[t] / length;
      }
      s = std::exp(mean);
    } while (std::fabs(s - 0.95) < 0.01 || std::fabs(s - 1.08) < 0.01);
    const float a = static_cast<float>(normal(rng));
    const float w = static_cast<float>(0.5 + std::fabs(normal(rng)));
    for (int t = 0; t < seq_len; ++t) {
      const bool in_row = t >= start && t < start + length;
      const double o = -1.5 + 0.5 * normal(rng);
      old.push_back(static_cast<float>(o));
      logp.push_back(static_cast<float>(o + d[t]));
      ref.push_back(static_cast<float>(o + 0.3 * normal(rng)));
      adv.push_back(a);
      mask.push_back(in_row ? 1.0f : 0.0f);
      weights.push_back(in_row ? w : 0.0f);
    }
  }
  PolicyLossInputs in;
  in.logp = Tensor::from_f32(logp, {batch, seq_len});
  in.old_logp = Tensor::from_f32(old, {batch, seq_len});
  in.advantages = Tensor::from_f32(adv, {batch, seq_len});
  in.mask = Tensor::from_f32(mask, {batch, seq_len});
  in.ref_logp = Tensor::from_f32(ref, {batch, seq_len});
  in.is_weights = Tensor::from_f32(weights, {batch, seq_len});
  Tensor dlogp = Tensor::empty({batch, seq_len});
  const PolicyLossStats stats = sequence_policy_loss(dlogp, in, options);
  EXPECT_GT(stats.clip_fraction, 0) << "some rows clipped";
  EXPECT_LT(stats.clip_fraction, 1) << "and some not";
  auto loss = [&] { return sequence_policy_loss(Tensor(), in, options).loss; };
  EXPECT_TRUE(grad_check(loss, in.logp, dlogp, rng,
                         GradCheckOptions{.eps = 1e-3, .rtol = 1e-3, .atol = 1e-6}));
}

// --- value loss ------------------------------------------------------------------------------

// c = 0.2, token mean over 5 tokens (a sixth is masked):
//   V 1.0, V_old 0.9, R 1.5: |V − V_old| ≤ c, both terms (−0.5)²  → ℓ 0.125, dℓ/dV −0.5
//   V 1.5, V_old 1.0, R 0.0: clip to 1.2, (1.5)² > (1.2)²        → ℓ 1.125, dℓ/dV 1.5
//   V 1.5, V_old 1.0, R 2.0: clip to 1.2, (−0.8)² > (−0.5)²      → ℓ 0.32,  dℓ/dV 0 (clipped)
//   V 0.2, V_old 1.0, R 1.0: clip to 0.8, (−0.8)² > (−0.2)²      → ℓ 0.32,  dℓ/dV −0.8
//   V 0.2, V_old 1.0, R 0.0: clip to 0.8, (0.8)² > (0.2)²        → ℓ 0.32,  dℓ/dV 0 (clipped)
// loss = 2.21 / 5 = 0.442; gradient = dℓ/dV / 5; clip fraction 2/5.
TEST(ValueLossTest, BothBranchesMatchHandComputed) {
  Tensor mask = Tensor::from_f32({1, 1, 1, 0, 1, 1}, {2, 3});
  Tensor values = Tensor::from_f32({1.0f, 1.5f, 1.5f, 7, 0.2f, 0.2f}, {2, 3});
  Tensor old_values = Tensor::from_f32({0.9f, 1.0f, 1.0f, -7, 1.0f, 1.0f}, {2, 3});
  Tensor returns = Tensor::from_f32({1.5f, 0.0f, 2.0f, 0, 1.0f, 0.0f}, {2, 3});
  Tensor dvalues = Tensor::empty({2, 3});
  ValueLossStats stats = value_loss(dvalues, values, old_values, returns, mask, {.clip = 0.2});
  EXPECT_NEAR(stats.loss, 0.442, 1e-6);
  EXPECT_DOUBLE_EQ(stats.clip_fraction, 0.4);
  EXPECT_TRUE(all_close(dvalues, {-0.1, 0.3, 0, 0, -0.16, 0}, 1e-6, 1e-7));
}

TEST(ValueLossTest, InfiniteClipIsPlainSquaredError) {
  Tensor mask = Tensor::from_f32({1, 1}, {1, 2});
  Tensor values = Tensor::from_f32({1.5f, 0.2f}, {1, 2});
  Tensor old_values = Tensor::from_f32({1.0f, 1.0f}, {1, 2});
  Tensor returns = Tensor::from_f32({2.0f, 0.0f}, {1, 2});
  Tensor dvalues = Tensor::empty({1, 2});
  ValueLossStats stats = value_loss(dvalues, values, old_values, returns, mask,
                                    {.clip = std::numeric_limits<double>::infinity()});
  // ½ (0.25 + 0.04) / 2 = 0.0725; gradient (V − R) / 2 = {−0.25, 0.1}.
  EXPECT_NEAR(stats.loss, 0.0725, 1e-7);
  EXPECT_EQ(stats.clip_fraction, 0);
  EXPECT_TRUE(all_close(dvalues, {-0.25, 0.1}, 1e-6, 1e-8));
}

TEST(ValueLossTest, MatchesFiniteDifferences) {
  auto rng = rng_for_test();
  std::normal_distribution<double> normal(0, 1);
  const double clip = 0.2;
  std::vector<float> v, v_old, ret, mask;
  for (int i = 0; i < 24; ++i) {
    double value, old, target;
    // Away from the kinks: |V − V_old| = c, and the tie between the two squared terms.
    do {
      value = normal(rng);
      old = value + 0.4 * normal(rng);
      target = value + normal(rng);
    } while (std::fabs(std::fabs(value - old) - clip) < 0.02 ||
             std::fabs(std::fabs(old + std::clamp(value - old, -clip, clip) - target) -
                       std::fabs(value - target)) < 0.02);
    v.push_back(static_cast<float>(value));
    v_old.push_back(static_cast<float>(old));
    ret.push_back(static_cast<float>(target));
    mask.push_back(i % 5 == 4 ? 0.0f : 1.0f);
  }
  Tensor values = Tensor::from_f32(v, {4, 6}), old_values = Tensor::from_f32(v_old, {4, 6});
  Tensor returns = Tensor::from_f32(ret, {4, 6}), m = Tensor::from_f32(mask, {4, 6});
  for (AggregationMode mode : {AggregationMode::kTokenMean, AggregationMode::kSeqMeanTokenMean,
                               AggregationMode::kSeqMeanTokenSumNorm}) {
    const ValueLossOptions options{.clip = clip, .aggregation = {mode}};
    Tensor dvalues = Tensor::empty({4, 6});
    ValueLossStats stats = value_loss(dvalues, values, old_values, returns, m, options);
    EXPECT_GT(stats.clip_fraction, 0);
    auto loss = [&] { return value_loss(Tensor(), values, old_values, returns, m, options).loss; };
    EXPECT_TRUE(grad_check(loss, values, dvalues, rng,
                           GradCheckOptions{.eps = 1e-3, .rtol = 1e-3, .atol = 1e-6}))
        << aggregation_mode_name(mode);
  }
}

}  // namespace
}  // namespace sy::rl
