// PPO learns, end to end through the binary, as the README runs it: the default run
// (configs/tiny.textproto, cut to 3000 steps), then `switchyard rl --config
// configs/ppo_arith.textproto` from it (critic initialised from the policy, KL to the reference in
// the reward). Held-out exact match must improve (tests/e2e/rl_learning.h says by how much) with a
// finite KL logged at every step. Label "e2e"; about 2.2 minutes on 2 cores (1.3 of them the
// 3000-step default run).
#include "gtest/gtest.h"
#include "tests/e2e/rl_learning.h"

namespace sy {
namespace {

TEST(RlLearning, PpoRaisesHeldOutAccuracy) {
  testing::expect_learned(testing::pretrain_then_rl("switchyard_rl_ppo", "ppo_arith.textproto"));
}

}  // namespace
}  // namespace sy
