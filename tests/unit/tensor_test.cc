#include "kernels/tensor.h"

#include <cmath>
#include <cstring>

#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

TEST(Tensor, ShapeNumelAndDtypeSizes) {
  Tensor t = Tensor::zeros({3, 0, 5}, DType::kBF16);
  EXPECT_EQ(t.numel(), 0);
  EXPECT_EQ(Tensor::empty({2, 3}, DType::kI64).nbytes(), 48u);
  EXPECT_EQ(Tensor::empty({7}, DType::kBF16).nbytes(), 14u);
  EXPECT_EQ(Tensor::empty({2, 3, 4}).dim(-1), 4);
}

TEST(Tensor, RowsAndViewShareStorage) {
  auto rng = testing::rng_for_test();
  Tensor t = testing::random_normal({6, 4}, rng);
  Tensor r = t.rows(2, 5);
  EXPECT_EQ(r.shape(), (Shape{3, 4}));
  EXPECT_EQ(r.data<float>(), t.data<float>() + 8);
  r.data<float>()[0] = 42.0f;
  EXPECT_EQ(t.data<float>()[8], 42.0f);
  Tensor v = t.view({24});
  EXPECT_EQ(v.data<float>(), t.data<float>());
  Tensor c = t.clone();
  c.data<float>()[0] = -1.0f;
  EXPECT_NE(t.data<float>()[0], -1.0f);
  EXPECT_EQ(t.rows(6, 6).numel(), 0);
}

TEST(Tensor, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 is exactly halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to even (1).
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd mantissa) and 1 + 2^-6: goes up.
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  EXPECT_TRUE(std::isinf(bf16_to_f32(f32_to_bf16(INFINITY))));
  auto rng = testing::rng_for_test();
  Tensor x = testing::random_normal({257}, rng, 3.0f);
  Tensor y = x.to(DType::kBF16).to(DType::kF32);
  for (int i = 0; i < 257; ++i) {
    float a = x.data<float>()[i], b = y.data<float>()[i];
    EXPECT_LE(std::fabs(a - b), std::fabs(a) * std::ldexp(1.0f, -8)) << i;
  }
}

// On the CPU a HostReadback copies at once: later writes to the source do not reach it.
TEST(Tensor, HostReadbackOfACpuTensorIsACopy) {
  Tensor t = Tensor::empty({2, 3});
  t.fill_(1.5f);
  HostReadback read(t);
  t.fill_(-2.0f);
  const Tensor got = read.wait();
  EXPECT_EQ(got.shape(), (Shape{2, 3}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(got.data<float>()[i], 1.5f);
  EXPECT_NE(got.raw(), t.raw());
}

TEST(TensorDeathTest, HostReadbackCollectedOnce) {
  HostReadback read(Tensor::zeros({4}));
  read.wait();
  EXPECT_DEATH(read.wait(), "HostReadback collected twice");
  HostReadback never;
  EXPECT_DEATH(never.wait(), "HostReadback collected twice \\(or never queued\\)");
}

TEST(TensorDeathTest, MisuseAbortsWithAMessage) {
  Tensor t = Tensor::empty({2, 3});
  EXPECT_DEATH(t.data<int32_t>(), "tensor is f32, asked for i32");
  EXPECT_DEATH(t.rows(1, 3), "rows \\[1, 3\\) of shape \\[2, 3\\]");
  EXPECT_DEATH(t.view({4, 2}), "view \\[4, 2\\] of shape \\[2, 3\\]");
}

}  // namespace
}  // namespace sy
