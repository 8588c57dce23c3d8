// Rotary embedding on CUDA against the CPU op on the same random inputs and positions (up
// to 8192, where an f32 angle would already be visibly off), for the smallest head, odd
// head counts and lengths, f32 and bf16, out-of-place and in place (out aliasing x), forward
// and backward. Skips without a GPU.
//
// Tolerances. f32: both sides form angles, cosines and sines in double and rotate in fp32
// (the GPU may fuse a multiply-add): rtol 1e-5, atol 1e-5 on O(1) values. bf16: outputs are
// rounded to bf16 (relative step 2^-8): rtol 1e-2, atol 1e-2.
#include <limits>
#include <tuple>

#include "gtest/gtest.h"
#include "kernels/rope.h"
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
using testing::random_ints;
using testing::random_normal;
using testing::rng_for_test;

using Param = std::tuple<Shape, DType>;  // [B, T, H, hd], dtype

class RopeGpuTest : public ::testing::TestWithParam<Param> {};

TEST_P(RopeGpuTest, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  auto [shape, dt] = GetParam();
  const bool bf16 = dt == DType::kBF16;
  const double rtol = bf16 ? 1e-2 : 1e-5, atol = bf16 ? 1e-2 : 1e-5;
  constexpr float kTheta = 10000.0f;
  auto rng = rng_for_test();
  Tensor x = rounded(random_normal(shape, rng), dt);
  Tensor positions = random_ints({shape[0], shape[1]}, 0, 8192, rng);
  Tensor gpos = positions.to(kGpu);

  for (bool backward : {false, true}) {
    Tensor expected = Tensor::empty(shape);
    if (backward) {
      rope_backward(expected, x, positions, kTheta);
    } else {
      rope_forward(expected, x, positions, kTheta);
    }
    Tensor out = on_gpu(filled(shape, kNaN), dt), in_place = on_gpu(x, dt);
    if (backward) {
      rope_backward(out, on_gpu(x, dt), gpos, kTheta);
      rope_backward(in_place, in_place, gpos, kTheta);
    } else {
      rope_forward(out, on_gpu(x, dt), gpos, kTheta);
      rope_forward(in_place, in_place, gpos, kTheta);
    }
    EXPECT_TRUE(all_close(out, rounded(expected, dt), rtol, atol)) << "backward " << backward;
    EXPECT_TRUE(all_close(in_place, rounded(expected, dt), rtol, atol))
        << "in place, backward " << backward;
  }
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  auto [shape, dt] = info.param;
  std::string name;
  for (int64_t s : shape) name += std::to_string(s) + "x";
  name.pop_back();
  return name + "_" + dtype_name(dt);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RopeGpuTest,
    ::testing::Combine(::testing::Values(Shape{1, 1, 1, 2}, Shape{2, 7, 3, 8}, Shape{1, 33, 4, 64},
                                         Shape{2, 5, 2, 6}, Shape{3, 129, 5, 128}),
                       ::testing::Values(DType::kF32, DType::kBF16)),
    param_name);

}  // namespace
}  // namespace sy
