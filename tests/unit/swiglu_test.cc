// swiglu: forward against a double reference, backward (dh written) against finite
// differences, on the fused [N, 2F] layout.
#include "kernels/swiglu.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::all_close;
using testing::grad_check;
using testing::random_normal;
using testing::rng_for_test;
using testing::weighted_sum;

class SwigluTest : public ::testing::TestWithParam<std::tuple<int, int>> {};

// Elementwise: f32 against double within rtol 1e-5 / atol 1e-6.
TEST_P(SwigluTest, ForwardMatchesDoubleReference) {
  auto [n, f] = GetParam();
  auto rng = rng_for_test();
  Tensor h = random_normal({n, 2 * f}, rng, 2.0f);
  Tensor out = Tensor::empty({n, f});
  swiglu_forward(out, h);

  std::vector<float> vh = h.to_f32_vector();
  std::vector<double> expected(n * f);
  for (int row = 0; row < n; ++row) {
    for (int j = 0; j < f; ++j) {
      const double g = vh[row * 2 * f + j], u = vh[row * 2 * f + f + j];
      expected[row * f + j] = g / (1 + std::exp(-g)) * u;
    }
  }
  EXPECT_TRUE(all_close(out, expected, 1e-5, 1e-6));
}

TEST_P(SwigluTest, BackwardMatchesFiniteDifferences) {
  auto [n, f] = GetParam();
  auto rng = rng_for_test();
  Tensor h = random_normal({n, 2 * f}, rng, 2.0f);
  Tensor dout = random_normal({n, f}, rng);
  Tensor dh = Tensor::empty({n, 2 * f});
  dh.fill_(std::numeric_limits<float>::quiet_NaN());  // written, never read
  swiglu_backward(dh, dout, h);

  Tensor out = Tensor::empty({n, f});
  auto loss = [&] {
    swiglu_forward(out, h);
    return weighted_sum(out, dout);
  };
  EXPECT_TRUE(grad_check(loss, h, dh, rng));
}

INSTANTIATE_TEST_SUITE_P(Shapes, SwigluTest,
                         ::testing::Values(std::make_tuple(1, 1), std::make_tuple(1, 8),
                                           std::make_tuple(3, 7), std::make_tuple(16, 33)));

}  // namespace
}  // namespace sy
