#include "rl/kl.h"

#include <cmath>
#include <ostream>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy::rl {
namespace {

using sy::testing::all_close;

// Three response tokens with d = logp − ref_logp = 0.5, −0.75, −0.25 (all exact in f32).
constexpr double kLogp[] = {-1.0, -2.0, -0.5};
constexpr double kRef[] = {-1.5, -1.25, -0.25};

struct EstimatorCase {
  KlEstimator estimator;
  double value[3];  // at d = 0.5, −0.75, −0.25
  double dlogp[3];
};

// k1 = d, 1; k2 = d²/2, d; k3 = e^−d + d − 1, 1 − e^−d (e^−0.5 = 0.6065306597126334,
// e^0.75 = 2.117000016612675, e^0.25 = 1.2840254166877414).
const EstimatorCase kCases[] = {
    {KlEstimator::kK1, {0.5, -0.75, -0.25}, {1, 1, 1}},
    {KlEstimator::kK2, {0.125, 0.28125, 0.03125}, {0.5, -0.75, -0.25}},
    {KlEstimator::kK3,
     {0.10653065971263342, 0.3670000166126748, 0.034025416687741394},
     {0.3934693402873666, -1.1170000166126748, -0.2840254166877414}},
};

void PrintTo(const EstimatorCase& c, std::ostream* os) { *os << kl_estimator_name(c.estimator); }

class KlEstimatorTest : public ::testing::TestWithParam<EstimatorCase> {};

TEST_P(KlEstimatorTest, ValueAndDerivativeMatchHandComputed) {
  const EstimatorCase& c = GetParam();
  for (int i = 0; i < 3; ++i) {
    KlTerm term = kl_term(c.estimator, kLogp[i], kRef[i]);
    EXPECT_NEAR(term.value, c.value[i], 1e-15) << kl_estimator_name(c.estimator) << " token " << i;
    EXPECT_NEAR(term.dlogp, c.dlogp[i], 1e-15) << kl_estimator_name(c.estimator) << " token " << i;
  }
}

TEST_P(KlEstimatorTest, DerivativeMatchesFiniteDifferences) {
  const KlEstimator estimator = GetParam().estimator;
  const double h = 1e-5;
  for (double ref : {-3.0, -0.7}) {
    for (double logp : {-4.0, -2.5, -0.7, -0.69, -0.1}) {
      const double numeric =
          (kl_term(estimator, logp + h, ref).value - kl_term(estimator, logp - h, ref).value) /
          (2 * h);
      EXPECT_NEAR(kl_term(estimator, logp, ref).dlogp, numeric, 1e-8 * (1 + std::fabs(numeric)))
          << kl_estimator_name(estimator) << " logp " << logp << " ref " << ref;
    }
  }
}

TEST_P(KlEstimatorTest, ZeroWhereThePoliciesAgree) {
  KlTerm term = kl_term(GetParam().estimator, -1.3, -1.3);
  EXPECT_EQ(term.value, 0);
  if (GetParam().estimator != KlEstimator::kK1) EXPECT_EQ(term.dlogp, 0);
}

// Reward placement: rewards[b, t] −= β · KL where mask is 1, nothing else changes. The batch
// is [[prompt, d=0.5, d=−0.75], [d=−0.25, pad, pad]] with task rewards 1 and 0.5 at each
// row's last response token; masked entries hold values that must be ignored.
TEST_P(KlEstimatorTest, RewardPenaltySubtractsBetaTimesKlOnResponseTokens) {
  const EstimatorCase& c = GetParam();
  const double beta = 0.1;
  Tensor mask = Tensor::from_f32({0, 1, 1, 1, 0, 0}, {2, 3});
  Tensor logp = Tensor::from_f32({5, -1.0f, -2.0f, -0.5f, 9, 9}, {2, 3});
  Tensor ref = Tensor::from_f32({-5, -1.5f, -1.25f, -0.25f, -9, -9}, {2, 3});
  Tensor rewards = Tensor::from_f32({7, 0, 1, 0.5f, 3, 4}, {2, 3});
  KlStats stats = apply_kl_penalty(rewards, logp, ref, mask, c.estimator, beta);

  std::vector<double> expected = {
      7, 0 - beta * c.value[0], 1 - beta * c.value[1], 0.5 - beta * c.value[2], 3, 4};
  EXPECT_TRUE(all_close(rewards, expected, 1e-7, 1e-7));
  EXPECT_NEAR(stats.token_mean, (c.value[0] + c.value[1] + c.value[2]) / 3, 1e-12);
  EXPECT_NEAR(stats.sequence_mean, ((c.value[0] + c.value[1]) + c.value[2]) / 2, 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Estimators, KlEstimatorTest, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return kl_estimator_name(info.param.estimator); });

TEST(KlPenaltyTest, K3PenaltyInNumbers) {
  // The same batch as above with k3 and β = 0.1, written out: −0.1 · 0.10653065971263342,
  // 1 − 0.1 · 0.3670000166126748, 0.5 − 0.1 · 0.034025416687741394.
  Tensor mask = Tensor::from_f32({0, 1, 1, 1, 0, 0}, {2, 3});
  Tensor logp = Tensor::from_f32({5, -1.0f, -2.0f, -0.5f, 9, 9}, {2, 3});
  Tensor ref = Tensor::from_f32({-5, -1.5f, -1.25f, -0.25f, -9, -9}, {2, 3});
  Tensor rewards = Tensor::from_f32({7, 0, 1, 0.5f, 3, 4}, {2, 3});
  KlStats stats = apply_kl_penalty(rewards, logp, ref, mask, KlEstimator::kK3, 0.1);
  EXPECT_TRUE(all_close(rewards,
                        {7, -0.010653065971263344, 0.9632999983387325, 0.49659745833122587, 3, 4},
                        1e-7, 1e-8));
  EXPECT_NEAR(stats.token_mean, 0.1691853643376832, 1e-12);
  EXPECT_NEAR(stats.sequence_mean, 0.2537780465065248, 1e-12);
}

TEST(KlPenaltyTest, ZeroBetaLeavesRewardsAlone) {
  Tensor mask = Tensor::from_f32({1, 1}, {1, 2});
  Tensor logp = Tensor::from_f32({-1, -2}, {1, 2});
  Tensor ref = Tensor::from_f32({-2, -1}, {1, 2});
  Tensor rewards = Tensor::from_f32({0, 1}, {1, 2});
  KlStats stats = apply_kl_penalty(rewards, logp, ref, mask, KlEstimator::kK2, 0);
  EXPECT_TRUE(all_close(rewards, {0, 1}, 0, 0));
  EXPECT_DOUBLE_EQ(stats.token_mean, 0.5);
}

// Adaptive: β ← β (1 + clip(KL/target − 1, ±0.2) · n/horizon). With β = 0.1, target 6,
// horizon 1000 and n = 100 (n/horizon = 0.1):
//   KL 9   → error  0.5 clipped to  0.2 → β = 0.1 · 1.02  = 0.102
//   KL 6.6 → error  0.1                 → β = 0.1 · 1.01  = 0.101
//   KL 6   → error  0                   → β = 0.1
//   KL 5.4 → error −0.1                 → β = 0.1 · 0.99  = 0.099
//   KL 3   → error −0.5 clipped to −0.2 → β = 0.1 · 0.98  = 0.098
TEST(KlControllerTest, AdaptiveRisesAboveTargetFallsBelowAndClipsAtTwentyPercent) {
  const std::pair<double, double> cases[] = {{9, 0.102}, {6.6, 0.101},  {6, 0.1},  {5.4, 0.099},
                                             {3, 0.098}, {1000, 0.102}, {0, 0.098}};
  for (auto [kl, expected] : cases) {
    KlController controller = KlController::adaptive(0.1, 6, 1000);
    EXPECT_TRUE(controller.is_adaptive());
    controller.update(kl, 100);
    EXPECT_NEAR(controller.coef(), expected, 1e-15) << "KL " << kl;
  }
}

TEST(KlControllerTest, AdaptiveCompoundsOverSteps) {
  KlController controller = KlController::adaptive(0.1, 6, 1000);
  controller.update(9, 100);
  controller.update(9, 100);
  controller.update(3, 50);  // error −0.2, n/horizon 0.05 → × 0.99
  EXPECT_NEAR(controller.coef(), 0.1 * 1.02 * 1.02 * 0.99, 1e-15);
}

TEST(KlControllerTest, FixedNeverChanges) {
  KlController controller = KlController::fixed(0.05);
  EXPECT_FALSE(controller.is_adaptive());
  controller.update(100, 1000);
  controller.update(0, 1000);
  EXPECT_EQ(controller.coef(), 0.05);
}

}  // namespace
}  // namespace sy::rl
