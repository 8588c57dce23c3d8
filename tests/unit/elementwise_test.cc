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

}  // namespace
}  // namespace sy
