// GRPO learns, end to end through the binary, as the README runs it: the default run
// (configs/tiny.textproto, cut to 3000 steps), then `switchyard rl --config
// configs/grpo_arith.textproto` from it. Held-out exact match must improve (tests/e2e/rl_learning.h
// says by how much) with a finite KL to the reference logged at every step. Label "e2e"; about 2.7
// minutes on 2 cores (1.3 of them the 3000-step default run).
#include "tests/e2e/rl_learning.h"

#include "gtest/gtest.h"

namespace sy {
namespace {

TEST(RlLearning, GrpoRaisesHeldOutAccuracy) {
  testing::expect_learned(testing::pretrain_then_rl("switchyard_rl_grpo", "grpo_arith.textproto"));
}

}  // namespace
}  // namespace sy
