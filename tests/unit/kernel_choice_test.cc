// The CUDA kernel choices that are process-wide settings (kernels/kv_cache.h's decode
// attention kernel, kernels/grouped_matmul.h's tiling): their defaults are the kernels measured
// on a GPU (scalar decode attention, wide tiling), a setter changes what the getter reports,
// and a bad SWITCHYARD_* value is refused naming the values it takes (kernels/env.h's
// env_choice, which every such knob reads through).
#include <cstdlib>

#include "gtest/gtest.h"
#include "kernels/env.h"
#include "kernels/grouped_matmul.h"
#include "kernels/kv_cache.h"

namespace sy {
namespace {

TEST(KernelChoice, DefaultsAreTheMeasuredKernelsAndSettersStick) {
  if (std::getenv("SWITCHYARD_DECODE_ATTENTION") == nullptr) {
    EXPECT_EQ(decode_attention_kernel(), DecodeAttentionKernel::kScalar);
  }
  if (std::getenv("SWITCHYARD_GROUPED_MATMUL") == nullptr) {
    EXPECT_EQ(grouped_matmul_tiling(), GroupedTiling::kWide);
  }
  const DecodeAttentionKernel attention = decode_attention_kernel();
  const GroupedTiling tiling = grouped_matmul_tiling();
  set_decode_attention_kernel(DecodeAttentionKernel::kVector);
  set_grouped_matmul_tiling(GroupedTiling::kAdaptive);
  EXPECT_EQ(decode_attention_kernel(), DecodeAttentionKernel::kVector);
  EXPECT_EQ(grouped_matmul_tiling(), GroupedTiling::kAdaptive);
  set_decode_attention_kernel(attention);
  set_grouped_matmul_tiling(tiling);
  EXPECT_EQ(decode_attention_kernel(), attention);
  EXPECT_EQ(grouped_matmul_tiling(), tiling);
}

TEST(KernelChoice, EnvChoiceGivesTheValuesIndexAndZeroWhenUnset) {
  unsetenv("SY_TEST_CHOICE");
  EXPECT_EQ(env_choice("SY_TEST_CHOICE", {"a", "b", "c"}), 0);
  setenv("SY_TEST_CHOICE", "", 1);
  EXPECT_EQ(env_choice("SY_TEST_CHOICE", {"a", "b", "c"}), 0);
  setenv("SY_TEST_CHOICE", "c", 1);
  EXPECT_EQ(env_choice("SY_TEST_CHOICE", {"a", "b", "c"}), 2);
  setenv("SY_TEST_CHOICE", "a", 1);
  EXPECT_EQ(env_choice("SY_TEST_CHOICE", {"a", "b", "c"}), 0);
  unsetenv("SY_TEST_CHOICE");
}

TEST(KernelChoiceDeathTest, BadEnvironmentValuesAreRefused) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        setenv("SWITCHYARD_DECODE_ATTENTION", "fast", 1);
        (void)decode_attention_kernel();
      },
      "SWITCHYARD_DECODE_ATTENTION=fast: use scalar or vector");
  EXPECT_DEATH(
      {
        setenv("SWITCHYARD_GROUPED_MATMUL", "narrow", 1);
        (void)grouped_matmul_tiling();
      },
      "SWITCHYARD_GROUPED_MATMUL=narrow: use wide or auto");
  EXPECT_DEATH(
      {
        setenv("SY_TEST_CHOICE", "d", 1);
        (void)env_choice("SY_TEST_CHOICE", {"a", "b", "c"});
      },
      "SY_TEST_CHOICE=d: use a, b or c");
}

}  // namespace
}  // namespace sy
