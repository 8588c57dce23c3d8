// The rollout engine's row bookkeeping (kernels/rollout_rows.h) on the CPU against the rule
// written out row by row: active rows store their token and log-prob at their window column,
// advance, and stop at a stop token or their limit; idle rows are left alone; a column past
// the window is refused.
#include "kernels/rollout_rows.h"

#include "gtest/gtest.h"

namespace sy {
namespace {

TEST(RolloutRows, AdvancesActiveRowsAndStopsThemAtStopTokensAndLimits) {
  // Rows: 0 goes on, 1 emits stop token 7, 2 reaches its limit, 3 is idle, 4 emits the other
  // stop token 9 on its first (prefill) token.
  const int64_t width = 3;
  RolloutRows rows{.generated = Tensor::from_i32({2, 0, 4, 1, 0}, {5}),
                   .base = Tensor::from_i32({1, 0, 3, 0, 0}, {5}),
                   .length = Tensor::from_i32({6, 2, 9, 3, 4}, {5}),
                   .limit = Tensor::from_i32({10, 10, 5, 10, 10}, {5}),
                   .active = Tensor::from_i32({1, 1, 1, 0, 1}, {5}),
                   .attend = Tensor::from_i32({7, 0, 10, 0, 0}, {5}),
                   .out_token = Tensor::zeros({5, width}, DType::kI32),
                   .out_logprob = Tensor::zeros({5, width})};
  const Tensor token = Tensor::from_i32({4, 7, 2, 8, 9}, {5});
  const Tensor logprob = Tensor::from_f32({-0.5f, -1.5f, -2.5f, -3.5f, -4.5f}, {5});
  advance_rollout_rows(rows, token, logprob, Tensor::from_i32({7, 9}, {2}));
  EXPECT_EQ(rows.generated.to_i32_vector(), (std::vector<int32_t>{3, 1, 5, 1, 1}));
  EXPECT_EQ(rows.length.to_i32_vector(), (std::vector<int32_t>{7, 3, 10, 3, 5}));
  EXPECT_EQ(rows.active.to_i32_vector(), (std::vector<int32_t>{1, 0, 0, 0, 0}));
  EXPECT_EQ(rows.attend.to_i32_vector(), (std::vector<int32_t>{8, 0, 0, 0, 0}));
  EXPECT_EQ(rows.out_token.to_i32_vector(), (std::vector<int32_t>{0, 4, 0, /**/ 7, 0, 0, /**/ 0, 2,
                                                                  0, /**/ 0, 0, 0, /**/ 9, 0, 0}));
  const std::vector<float> lp = rows.out_logprob.to_f32_vector();
  EXPECT_EQ(lp[1], -0.5f);
  EXPECT_EQ(lp[3], -1.5f);
  EXPECT_EQ(lp[7], -2.5f);
  EXPECT_EQ(lp[9 + 0], 0.0f);  // the idle row wrote nothing
  EXPECT_EQ(lp[12], -4.5f);

  // Without stop tokens only the limit ends a row.
  advance_rollout_rows(rows, Tensor::from_i32({7, 7, 7, 7, 7}, {5}), logprob,
                       Tensor::from_i32({}, {0}));
  EXPECT_EQ(rows.active.to_i32_vector(), (std::vector<int32_t>{1, 0, 0, 0, 0}));
  EXPECT_EQ(rows.out_token.to_i32_vector()[2], 7);
}

TEST(RolloutRowsDeathTest, RefusesAColumnPastTheWindow) {
  RolloutRows rows{.generated = Tensor::from_i32({5}, {1}),
                   .base = Tensor::from_i32({1}, {1}),
                   .length = Tensor::from_i32({9}, {1}),
                   .limit = Tensor::from_i32({20}, {1}),
                   .active = Tensor::from_i32({1}, {1}),
                   .attend = Tensor::from_i32({10}, {1}),
                   .out_token = Tensor::zeros({1, 4}, DType::kI32),
                   .out_logprob = Tensor::zeros({1, 4})};
  EXPECT_DEATH(advance_rollout_rows(rows, Tensor::from_i32({1}, {1}), Tensor::from_f32({0}, {1}),
                                    Tensor::from_i32({}, {0})),
               "writes column 4 of a window of 4");
}

}  // namespace
}  // namespace sy
