#include "rl/advantages.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy::rl {
namespace {

using sy::testing::all_close;

// Three prompts, G = 4:
//   group 0: {1, 0, 0, 1}  mean 0.5, sample std sqrt((4 · 0.25) / 3) = sqrt(1/3)
//   group 1: {0.1, 0.1, 0.1, 0.1}  all equal: no signal
//   group 2: {0, 1, 2, 3}  mean 1.5, sample std sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3)
const std::vector<float> kRewards = {1, 0, 0, 1, 0.1f, 0.1f, 0.1f, 0.1f, 0, 1, 2, 3};

TEST(GroupAdvantagesTest, NormalisedBySampleStdPlusEps) {
  const double eps = 1e-6;
  const double s0 = std::sqrt(1.0 / 3.0) + eps, s2 = std::sqrt(5.0 / 3.0) + eps;
  std::vector<float> a = group_advantages(kRewards, 4);
  EXPECT_TRUE(all_close(a,
                        {0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0, 0, 0, 0, 0, -1.5 / s2, -0.5 / s2,
                         0.5 / s2, 1.5 / s2},
                        1e-6, 0));
  // 0.5 / sqrt(1/3) = 0.8660254...: the GRPO scale, not the population one (1.0).
  EXPECT_NEAR(a[0], 0.8660254037844386, 1e-5);
}

TEST(GroupAdvantagesTest, EqualRewardsGiveExactlyZero) {
  std::vector<float> a = group_advantages(kRewards, 4);
  for (int i = 4; i < 8; ++i) EXPECT_EQ(a[i], 0.0f) << i;
  a = group_advantages(kRewards, 4, {.normalize_std = false});
  for (int i = 4; i < 8; ++i) EXPECT_EQ(a[i], 0.0f) << i;
}

TEST(GroupAdvantagesTest, NoStdVariantOnlySubtractsTheMean) {
  std::vector<float> a = group_advantages(kRewards, 4, {.normalize_std = false});
  EXPECT_TRUE(all_close(a, {0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -1.5, -0.5, 0.5, 1.5}, 0, 1e-7));
}

TEST(GroupAdvantagesTest, FilterReportsEqualRewardGroups) {
  GroupFilter filter = filter_equal_reward_groups(kRewards, 4);
  EXPECT_EQ(filter.kept, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(filter.dropped, (std::vector<int64_t>{1}));
  filter = filter_equal_reward_groups(std::vector<float>{1, 1, 0, 0}, 2);
  EXPECT_EQ(filter.kept, (std::vector<int64_t>{}));
  EXPECT_EQ(filter.dropped, (std::vector<int64_t>{0, 1}));
}

TEST(GroupAdvantagesTest, WrongGroupSizeIsAProgrammingError) {
  EXPECT_DEATH(group_advantages(kRewards, 5), "do not split into groups of 5");
  EXPECT_DEATH(group_advantages(kRewards, 1), "at least 2 completions");
}

TEST(TokenPlacementTest, BroadcastAndLastToken) {
  Tensor mask = Tensor::from_f32({0, 1, 1, 0, 1, 0, 0, 0, 0}, {3, 3});
  Tensor tokens = Tensor::from_f32(std::vector<float>(9, 5.0f), {3, 3});
  broadcast_to_tokens(tokens, std::vector<float>{2, -1, 4}, mask);
  EXPECT_TRUE(all_close(tokens, {0, 2, 2, 0, -1, 0, 0, 0, 0}, 0, 0));

  Tensor rewards = Tensor::from_f32({9, -0.5f, -0.25f, 0, 0, 0, 0, 0, 0}, {3, 3});
  add_at_last_token(rewards, std::vector<float>{1, 2, 3}, mask);
  EXPECT_TRUE(all_close(rewards, {9, -0.5, 0.75, 0, 2, 0, 0, 0, 0}, 0, 0));
}

// γ = 0.9, λ = 0.8 (γλ = 0.72), rewards {0, 0, −0.1, 1}, values {0.5, 0.6, 0.7, 0.8}:
//   δ3 = 1    + 0.9 · 0   − 0.8 =  0.2       A3 = 0.2
//   δ2 = −0.1 + 0.9 · 0.8 − 0.7 = −0.08      A2 = −0.08 + 0.72 · 0.2     = 0.064
//   δ1 = 0    + 0.9 · 0.7 − 0.6 =  0.03      A1 =  0.03 + 0.72 · 0.064   = 0.07608
//   δ0 = 0    + 0.9 · 0.6 − 0.5 =  0.04      A0 =  0.04 + 0.72 · 0.07608 = 0.0947776
//   returns = A + V = {0.5947776, 0.67608, 0.764, 1.0}
TEST(GaeTest, OneSequenceMatchesHandComputed) {
  std::vector<float> rewards = {0, 0, -0.1f, 1}, values = {0.5f, 0.6f, 0.7f, 0.8f};
  std::vector<float> advantages(4), returns(4);
  gae(advantages, returns, rewards, values, 0.9, 0.8);
  EXPECT_TRUE(all_close(advantages, {0.0947776, 0.07608, 0.064, 0.2}, 1e-6, 1e-7));
  EXPECT_TRUE(all_close(returns, {0.5947776, 0.67608, 0.764, 1.0}, 1e-6, 1e-7));
}

TEST(GaeTest, GammaAndLambdaOneGiveRewardToGoMinusValue) {
  std::vector<float> rewards = {1, 2, 3}, values = {0.5f, 0.25f, 2};
  std::vector<float> advantages(3), returns(3);
  gae(advantages, returns, rewards, values, 1, 1);
  EXPECT_TRUE(all_close(advantages, {5.5, 4.75, 1}, 0, 1e-6));
  EXPECT_TRUE(all_close(returns, {6, 5, 3}, 0, 1e-6));
}

// Row 0: prompt, the 4-token sequence above, padding. Row 1: prompt, prompt, a 2-token
// sequence with rewards {0.3, −0.2} and values {0.1, 0.4}, padding:
//   δ1 = −0.2 − 0.4 = −0.6                 A1 = −0.6
//   δ0 = 0.3 + 0.9 · 0.4 − 0.1 = 0.56      A0 = 0.56 + 0.72 · (−0.6) = 0.128
//   returns {0.228, −0.2}
TEST(GaeTest, BatchRunsOverEachRowsResponseTokens) {
  Tensor mask = Tensor::from_f32({0, 1, 1, 1, 1, 0,  //
                                  0, 0, 1, 1, 0, 0},
                                 {2, 6});
  Tensor rewards = Tensor::from_f32({5, 0, 0, -0.1f, 1, 5,  //
                                     5, 5, 0.3f, -0.2f, 5, 5},
                                    {2, 6});
  Tensor values = Tensor::from_f32({9, 0.5f, 0.6f, 0.7f, 0.8f, 9,  //
                                    9, 9, 0.1f, 0.4f, 9, 9},
                                   {2, 6});
  Tensor advantages = Tensor::empty({2, 6}), returns = Tensor::empty({2, 6});
  gae(advantages, returns, rewards, values, mask, 0.9, 0.8);
  EXPECT_TRUE(all_close(advantages,
                        {0, 0.0947776, 0.07608, 0.064, 0.2, 0,  //
                         0, 0, 0.128, -0.6, 0, 0},
                        1e-6, 1e-7));
  EXPECT_TRUE(all_close(returns,
                        {0, 0.5947776, 0.67608, 0.764, 1.0, 0,  //
                         0, 0, 0.228, -0.2, 0, 0},
                        1e-6, 1e-7));
}

// Response tokens {1, 2, 3, 6}: mean 3, deviations {−2, −1, 0, 3}, sum of squares 14, sample
// variance 14/3.
TEST(WhitenTest, MeanZeroSampleStdOneOverResponseTokens) {
  Tensor mask = Tensor::from_f32({1, 1, 0, 0, 1, 1}, {2, 3});
  Tensor a = Tensor::from_f32({1, 2, 100, -100, 3, 6}, {2, 3});
  whiten_advantages(a, mask);
  const double s = std::sqrt(14.0 / 3.0 + 1e-8);
  EXPECT_TRUE(all_close(a, {-2 / s, -1 / s, 0, 0, 0, 3 / s}, 1e-6, 1e-7));
}

TEST(WhitenTest, KeepMeanOnlyRescales) {
  Tensor mask = Tensor::from_f32({1, 1, 0, 0, 1, 1}, {2, 3});
  Tensor a = Tensor::from_f32({1, 2, 100, -100, 3, 6}, {2, 3});
  whiten_advantages(a, mask, /*keep_mean=*/true);
  const double s = std::sqrt(14.0 / 3.0 + 1e-8);
  EXPECT_TRUE(all_close(a, {3 - 2 / s, 3 - 1 / s, 0, 0, 3, 3 + 3 / s}, 1e-6, 1e-7));
}

}  // namespace
}  // namespace sy::rl
