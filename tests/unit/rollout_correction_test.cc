// Truncated importance sampling of the rollout/train mismatch (rl/rollout_correction.h): the
// weights against hand computations at token and sequence level, truncation at the cap, and
// the units that have no finite weight.
#include "rl/rollout_correction.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy::rl {
namespace {

using sy::testing::all_close;

// old_logp − rollout_logp {0.1, −0.5, 1.0, 0, ln 1.5} with the fourth token masked, cap 2:
//   ratios e^0.1 = 1.1051709181, e^−0.5 = 0.6065306597, e^1 = 2.718 → 2 (truncated), 1.5
//   weight sum 1.1051709181 + 0.6065306597 + 2 + 1.5 = 5.2117015778 over 4 tokens
TEST(TisWeightsTest, TokenLevelMatchesHandComputed) {
  const std::vector<float> rollout = {-1.0f, -2.0f, -3.0f, 4.0f, -0.5f};
  std::vector<float> old = {-0.9f, -2.5f, -2.0f, -9.0f, 0};
  old[4] = rollout[4] + static_cast<float>(std::log(1.5));
  const Tensor mask = Tensor::from_f32({1, 1, 1, 0, 1}, {1, 5});
  Tensor weights = Tensor::from_f32(std::vector<float>(5, 42.0f), {1, 5});
  const TisSums sums = tis_weights(weights, Tensor::from_f32(old, {1, 5}),
                                   Tensor::from_f32(rollout, {1, 5}), mask, 2.0, TisLevel::kToken);
  EXPECT_TRUE(all_close(weights, {1.1051709181, 0.6065306597, 2, 0, 1.5}, 1e-6, 1e-7));
  EXPECT_NEAR(sums.weight, 5.2117015778, 1e-6);
  EXPECT_EQ(sums.units, 4);
  EXPECT_EQ(sums.truncated, 1);
  EXPECT_EQ(sums.non_finite, 0);
}

// Rows of a [3, 3] batch, cap 2 (masked entries hold garbage):
//   row 0: mask {1, 1, 0}, old − rollout {0.2, 0.4}:    w = e^0.3 = 1.3498588076
//   row 1: mask {1, 1, 1}, old − rollout {1, 1, 0.7}:    e^0.9 = 2.4596 → 2 (truncated)
//   row 2: no response tokens: weight 0, not a unit
// Each row's weight is on every one of its response tokens; the sums count completions.
TEST(TisWeightsTest, SequenceLevelIsTheGeometricMeanOfItsRatios) {
  const Tensor rollout = Tensor::from_f32({-1, -2, 3, -1, -1, -1, 5, 5, 5}, {3, 3});
  const Tensor old = Tensor::from_f32({-0.8f, -1.6f, -7, 0, 0, -0.3f, 1, 1, 1}, {3, 3});
  const Tensor mask = Tensor::from_f32({1, 1, 0, 1, 1, 1, 0, 0, 0}, {3, 3});
  Tensor weights = Tensor::empty({3, 3});
  const TisSums sums = tis_weights(weights, old, rollout, mask, 2.0, TisLevel::kSequence);
  const double w0 = 1.3498588076;
  EXPECT_TRUE(all_close(weights, {w0, w0, 0, 2, 2, 2, 0, 0, 0}, 1e-6, 1e-7));
  EXPECT_NEAR(sums.weight, w0 + 2, 1e-6);
  EXPECT_EQ(sums.units, 2);
  EXPECT_EQ(sums.truncated, 1);
}

// A ratio exactly at the cap is kept, not counted as truncated (cap 1, equal log-probs);
// a rollout log-prob of −inf (a ratio of +inf) is truncated to the cap; NaN has no weight.
TEST(TisWeightsTest, CapBoundaryInfinityAndNan) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor mask = Tensor::from_f32({1, 1, 1, 1}, {1, 4});
  const Tensor old = Tensor::from_f32({-1, -1, -2, -inf}, {1, 4});
  const Tensor rollout = Tensor::from_f32({-1, -inf, nan, -0.5f}, {1, 4});
  Tensor weights = Tensor::empty({1, 4});
  const TisSums sums = tis_weights(weights, old, rollout, mask, 1.0, TisLevel::kToken);
  const std::vector<float> w = weights.to_f32_vector();
  EXPECT_EQ(w[0], 1.0f);
  EXPECT_EQ(w[1], 1.0f);
  EXPECT_TRUE(std::isnan(w[2]));
  EXPECT_EQ(w[3], 0.0f) << "old log-prob −inf: the update cannot move it, weight 0";
  EXPECT_EQ(sums.units, 4);
  EXPECT_EQ(sums.truncated, 1);
  EXPECT_EQ(sums.non_finite, 1);
  EXPECT_EQ(sums.weight, 2.0);
}

TEST(TisWeightsDeathTest, CapBelowOneIsAProgrammingError) {
  const Tensor t = Tensor::from_f32({-1}, {1, 1});
  const Tensor mask = Tensor::from_f32({1}, {1, 1});
  EXPECT_DEATH(tis_weights(Tensor::empty({1, 1}), t, t, mask, 0.5, TisLevel::kToken),
               "tis cap must be finite and >= 1");
}

}  // namespace
}  // namespace sy::rl
