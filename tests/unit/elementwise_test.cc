#include "kernels/elementwise.h"

#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::all_close;
using testing::random_normal;

TEST(Elementwise, AddScaleAndSumSquaresMatchDoubleReference) {
  auto rng = testing::rng_for_test();
  for (int n : {1, 7, 1000}) {
    Tensor a = random_normal({n}, rng), b = random_normal({n}, rng);
    Tensor out = Tensor::empty({n});
    add(out, a, b);
    std::vector<double> sum(n), scaled(n);
    double sq = 0;
    for (int i = 0; i < n; ++i) {
      sum[i] = double(a.data<float>()[i]) + b.data<float>()[i];
      scaled[i] = double(a.data<float>()[i]) * -2.5;
      sq += double(a.data<float>()[i]) * a.data<float>()[i];
    }
    EXPECT_TRUE(all_close(out, sum, 1e-7, 0));
    EXPECT_NEAR(sum_squares(a), sq, 1e-9 * sq);
    add_(a, b);  // accumulates in place
    EXPECT_TRUE(all_close(a, sum, 1e-7, 0));
    Tensor c = out.clone();
    scale_(c, -2.5f);
    for (int i = 0; i < n; ++i) scaled[i] = sum[i] * -2.5;
    EXPECT_TRUE(all_close(c, scaled, 1e-6, 1e-7));
  }
}

TEST(Elementwise, ConcatThenSplitRoundTrips) {
  auto rng = testing::rng_for_test();
  Tensor a = random_normal({5, 3}, rng), b = random_normal({5, 4}, rng);
  Tensor cat = Tensor::empty({5, 7});
  concat_cols(cat, a, b);
  EXPECT_EQ(cat.data<float>()[7 + 3], b.data<float>()[4]);  // row 1, first column of b
  Tensor a2 = Tensor::empty({5, 3}), b2 = Tensor::empty({5, 4});
  split_cols(a2, b2, cat);
  EXPECT_TRUE(all_close(a2, a, 0, 0));
  EXPECT_TRUE(all_close(b2, b, 0, 0));
}

// cast rounds f32 to bf16 to nearest, ties to even (checked on hand-picked bit patterns),
// widens bf16 exactly, and refuses other dtypes and mismatched shapes.
TEST(Elementwise, CastRoundsToNearestEvenAndRefusesBadInput) {
  // 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: ties to even -> 1.
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even -> 1 + 2^-6.
  // 1 + 2^-8 + 2^-20 is above halfway: up to 1 + 2^-7.
  const std::vector<float> in = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-20f,
                                 -2.5f, 0.0f};
  const std::vector<float> want = {1.0f, 1.0f + 0x1p-6f, 1.0f + 0x1p-7f, -2.5f, 0.0f};
  Tensor x = Tensor::from_f32(in, {5});
  Tensor down = Tensor::empty({5}, DType::kBF16);
  cast(down, x);
  Tensor up = Tensor::empty({5});
  cast(up, down);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(up.data<float>()[i], want[i]) << "element " << i;
  // as_dtype: the same tensor when nothing is to change, a rounded copy otherwise.
  EXPECT_EQ(as_dtype(x, DType::kF32).raw(), x.raw());
  EXPECT_TRUE(testing::all_close(as_dtype(down, DType::kF32), up, 0, 0));
  EXPECT_DEATH(cast(Tensor::empty({5}, DType::kI32), x), "f32 or bf16");
  EXPECT_DEATH(cast(Tensor::empty({4}, DType::kBF16), x), "cast out");
}

}  // namespace
}  // namespace sy
