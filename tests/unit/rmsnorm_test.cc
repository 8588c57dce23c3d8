// rmsnorm: forward against a double reference, backward (dx written, dweight accumulated)
// against finite differences, over shapes with one or more leading dimensions.
#include "kernels/rmsnorm.h"

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

constexpr float kEps = 1e-5f;

class RmsnormTest : public ::testing::TestWithParam<Shape> {
 protected:
  int64_t d() const { return GetParam().back(); }
  int64_t rows() const {
    int64_t n = 1;
    for (int64_t s : GetParam()) n *= s;
    return n / d();
  }
  // Fresh x and weight (drawn in that order) and the forward's y and rstd on them.
  struct Forwarded {
    Tensor x, weight, y, rstd;
  };
  Forwarded forward(std::mt19937_64& rng) const {
    Forwarded f{random_normal(GetParam(), rng), random_normal({d()}, rng),
                Tensor::empty(GetParam()), Tensor::empty({rows()})};
    rmsnorm_forward(f.y, f.rstd, f.x, f.weight, kEps);
    return f;
  }
};

// Rows of up to 64 elements: f32 against double stays within rtol 1e-5 / atol 1e-6.
TEST_P(RmsnormTest, ForwardMatchesDoubleReference) {
  auto rng = rng_for_test();
  const int64_t n = rows(), d = this->d();
  auto [x, weight, y, rstd] = forward(rng);

  std::vector<float> vx = x.to_f32_vector(), w = weight.to_f32_vector();
  std::vector<double> expected_y(n * d), expected_rstd(n);
  for (int64_t row = 0; row < n; ++row) {
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(vx[row * d + j]) * vx[row * d + j];
    const double r = 1 / std::sqrt(ss / d + kEps);
    expected_rstd[row] = r;
    for (int64_t j = 0; j < d; ++j) expected_y[row * d + j] = vx[row * d + j] * r * w[j];
  }
  EXPECT_TRUE(all_close(y, expected_y, 1e-5, 1e-6));
  EXPECT_TRUE(all_close(rstd, expected_rstd, 1e-6, 0));
}

TEST_P(RmsnormTest, BackwardMatchesFiniteDifferences) {
  auto rng = rng_for_test();
  const int64_t n = rows(), d = this->d();
  auto [x, weight, y, rstd] = forward(rng);

  Tensor dy = random_normal(GetParam(), rng);
  Tensor dx = Tensor::empty(GetParam());
  dx.fill_(std::numeric_limits<float>::quiet_NaN());  // written, never read
  Tensor start = random_normal({d}, rng), dweight = start.clone();
  rmsnorm_backward(dx, dweight, dy, x, weight, rstd);
  std::vector<float> inc = dweight.to_f32_vector(), s = start.to_f32_vector();
  for (int64_t j = 0; j < d; ++j) inc[j] -= s[j];

  Tensor scratch_rstd = Tensor::empty({n});
  auto loss = [&] {
    rmsnorm_forward(y, scratch_rstd, x, weight, kEps);
    return weighted_sum(y, dy);
  };
  EXPECT_TRUE(grad_check(loss, x, dx, rng));
  EXPECT_TRUE(grad_check(loss, weight, Tensor::from_f32(inc, {d}), rng));
}

// With a residual, dx is the plain backward's plus the residual, bit for bit in f32, also when
// the residual is dx itself; dweight is the same.
TEST_P(RmsnormTest, BackwardAddsTheResidual) {
  auto rng = rng_for_test();
  const int64_t n = rows(), d = this->d();
  auto [x, weight, y, rstd] = forward(rng);
  Tensor dy = random_normal(GetParam(), rng), residual = random_normal(GetParam(), rng);

  Tensor plain = Tensor::empty(GetParam()), dw_plain = Tensor::zeros({d});
  rmsnorm_backward(plain, dw_plain, dy, x, weight, rstd);
  std::vector<float> want = plain.to_f32_vector();
  const std::vector<float> r = residual.to_f32_vector();
  for (size_t i = 0; i < want.size(); ++i) want[i] += r[i];

  Tensor fused = Tensor::empty(GetParam()), dw_fused = Tensor::zeros({d});
  rmsnorm_backward(fused, dw_fused, dy, x, weight, rstd, residual);
  EXPECT_TRUE(all_close(fused, Tensor::from_f32(want, GetParam()), 0, 0));
  EXPECT_TRUE(all_close(dw_fused, dw_plain, 0, 0));
  Tensor in_place = residual.clone(), dw_in_place = Tensor::zeros({d});
  rmsnorm_backward(in_place, dw_in_place, dy, x, weight, rstd, in_place);
  EXPECT_TRUE(all_close(in_place, fused, 0, 0));
}

// With a residual, the forward normalizes x + residual and writes that sum: the same bits as
// adding first, also when the sum is written over x.
TEST_P(RmsnormTest, ForwardAddsTheResidualFirst) {
  auto rng = rng_for_test();
  const int64_t n = rows(), d = this->d();
  Tensor x = random_normal(GetParam(), rng), residual = random_normal(GetParam(), rng);
  Tensor weight = random_normal({d}, rng);
  std::vector<float> h = x.to_f32_vector();
  const std::vector<float> r = residual.to_f32_vector();
  for (size_t i = 0; i < h.size(); ++i) h[i] += r[i];
  const Tensor want_sum = Tensor::from_f32(h, GetParam());
  Tensor want = Tensor::empty(GetParam()), want_rstd = Tensor::empty({n});
  rmsnorm_forward(want, want_rstd, want_sum, weight, kEps);

  Tensor y = Tensor::empty(GetParam()), rstd = Tensor::empty({n}), sum = Tensor::empty(GetParam());
  rmsnorm_forward(y, rstd, x, weight, kEps, residual, sum);
  EXPECT_TRUE(all_close(sum, want_sum, 0, 0));
  EXPECT_TRUE(all_close(y, want, 0, 0));
  EXPECT_TRUE(all_close(rstd, want_rstd, 0, 0));
  Tensor over_x = x.clone();
  rmsnorm_forward(y, rstd, over_x, weight, kEps, residual, over_x);
  EXPECT_TRUE(all_close(over_x, want_sum, 0, 0));
  EXPECT_TRUE(all_close(y, want, 0, 0));
}

TEST(RmsnormDeathTest, ResidualMustMatchDx) {
  const Tensor x = Tensor::zeros({2, 8}), w = Tensor::zeros({8}), rstd = Tensor::zeros({2});
  const Tensor dx = Tensor::zeros({2, 8}), dw = Tensor::zeros({8});
  EXPECT_DEATH(rmsnorm_backward(dx, dw, x, x, w, rstd, Tensor::zeros({2, 7})),
               "rmsnorm residual");
  EXPECT_DEATH(rmsnorm_forward(dx, rstd, x, w, kEps, x, Tensor()),
               "a residual needs a sum to write x \\+ residual to");
  EXPECT_DEATH(rmsnorm_forward(dx, rstd, x, w, kEps, x, Tensor::zeros({2, 8}, DType::kI32)),
               "rmsnorm sum");
}

INSTANTIATE_TEST_SUITE_P(Shapes, RmsnormTest,
                         ::testing::Values(Shape{1, 8}, Shape{3, 7}, Shape{2, 5, 16},
                                           Shape{2, 3, 1, 33}, Shape{17, 64}));

}  // namespace
}  // namespace sy
