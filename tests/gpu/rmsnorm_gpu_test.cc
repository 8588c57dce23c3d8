// RMSNorm on CUDA against the CPU op on the same random inputs: single rows, odd widths,
// widths past one block of threads, more rows than the backward has blocks (so its
// per-block weight-gradient partial sums hold several rows), 3-D inputs, f32 and bf16.
// dx is checked to be written (the GPU buffer starts as NaN), dweight to accumulate onto a
// non-zero start. Skips without a GPU.
//
// Tolerances. f32: the GPU sums in fp32 in a different order from the CPU's double sums:
// rtol 1e-5, atol 1e-5 (values are O(1); dweight sums N rows: atol 1e-5 sqrt(N)). bf16: y
// and dx are rounded to bf16 (relative step 2^-8): rtol 1e-2, atol 1e-2; rstd and dweight
// stay f32 from the same (rounded) inputs, so keep the f32 bounds.
#include <cmath>
#include <limits>
#include <tuple>

#include "gtest/gtest.h"
#include "kernels/rmsnorm.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::kGpu;
using testing::kNaN;
using testing::rounded;
using testing::on_gpu;
using testing::filled;

using testing::all_close;
using testing::random_normal;
using testing::rng_for_test;

using Param = std::tuple<Shape, DType>;

class RmsnormGpuTest : public ::testing::TestWithParam<Param> {};

TEST_P(RmsnormGpuTest, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  auto [shape, dt] = GetParam();
  const bool bf16 = dt == DType::kBF16;
  const double act_rtol = bf16 ? 1e-2 : 1e-5, act_atol = bf16 ? 1e-2 : 1e-5;
  const int64_t d = shape.back(), n = d ? Tensor::empty(shape).numel() / d : 0;
  constexpr float kEps = 1e-5f;
  auto rng = rng_for_test();
  Tensor x = rounded(random_normal(shape, rng, 2.0f), dt);
  Tensor weight = random_normal({d}, rng);
  Tensor dy = rounded(random_normal(shape, rng), dt);
  Tensor dweight_start = random_normal({d}, rng);

  Tensor y = Tensor::empty(shape), rstd = Tensor::empty({n});
  rmsnorm_forward(y, rstd, x, weight, kEps);
  Tensor dx = Tensor::empty(shape), dweight = dweight_start.clone();
  rmsnorm_backward(dx, dweight, dy, x, weight, rstd);

  Tensor gx = on_gpu(x, dt), gw = weight.to(kGpu);
  Tensor gy = on_gpu(filled(shape, kNaN), dt), grstd = filled({n}, kNaN).to(kGpu);
  rmsnorm_forward(gy, grstd, gx, gw, kEps);
  EXPECT_TRUE(all_close(gy, rounded(y, dt), act_rtol, act_atol));
  EXPECT_TRUE(all_close(grstd, rstd, 1e-5, 1e-6));

  // The backward from the CPU's rstd, so that it is checked on its own.
  Tensor gdx = on_gpu(filled(shape, kNaN), dt), gdw = dweight_start.to(kGpu);
  rmsnorm_backward(gdx, gdw, on_gpu(dy, dt), gx, gw, rstd.to(kGpu));
  EXPECT_TRUE(all_close(gdx, rounded(dx, dt), act_rtol, act_atol));
  EXPECT_TRUE(all_close(gdw, dweight, 1e-5, 1e-5 * std::sqrt(static_cast<double>(n)) + 1e-5));
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  auto [shape, dt] = info.param;
  std::string name;
  for (int64_t s : shape) name += std::to_string(s) + "x";
  name.pop_back();
  return name + "_" + dtype_name(dt);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RmsnormGpuTest,
    ::testing::Combine(::testing::Values(Shape{1, 1}, Shape{1, 7}, Shape{3, 64}, Shape{129, 1000},
                                         Shape{5, 4096}, Shape{2, 3000}, Shape{1100, 33},
                                         Shape{2, 5, 96}, Shape{4099, 256}),
                       ::testing::Values(DType::kF32, DType::kBF16)),
    param_name);

}  // namespace
}  // namespace sy
