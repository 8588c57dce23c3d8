// PPO learns, end to end through the binary, exactly as the README runs it: the default run
// (configs/tiny.textproto), then `switchyard rl --config configs/ppo_arith.textproto` from it
// (critic initialised from the policy, KL to the reference in the reward). Held-out exact
// match must improve (tests/e2e/rl_learning.h says by how much) with a finite KL logged at
// every step. Label "e2e"; about 3.7 minutes on 2 cores.
#include "gtest/gtest.h"
#include "tests/e2e/rl_learning.h"

namespace sy {
namespace {

TEST(RlLearning, PpoRaisesHeldOutAccuracy) {
  testing::expect_learned(testing::pretrain_then_rl("switchyard_rl_ppo", "ppo_arith.textproto"));
}

}  // namespace
}  // namespace sy
