// RMSNorm on CUDA against the CPU op on the same random inputs, f32 and bf16: single rows,
// odd widths, 3-D inputs, more rows than the backward has blocks (so its per-block weight-
// gradient partial sums hold several rows) and fewer rows than a block of the vector
// kernels holds. The widths reach every path of kernels/cuda/rmsnorm.cu: the vector kernels
// with one warp per row (every vectors-per-thread count from 1 to 8, rows that end part way
// through a thread's last vector) and with 2, 4 and 8 warps per row, and the generic kernels
// (widths that are no whole number of 16-byte vectors, rows too wide for the vector
// kernels, and inputs, outputs or weights that start off a 16-byte boundary). dx is checked
// to be written (the GPU buffer starts as NaN), dweight to accumulate onto a non-zero
// start, and the weight gradient to be bit-identical across two runs. The backward with a
// residual added (in place, as the model uses it) is checked on every case. Skips without a
// GPU.
//
// Tolerances. f32: the GPU sums in fp32 in a different order from the CPU's double sums:
// rtol 1e-5, atol 1e-5 (values are O(1); dweight sums N rows: atol 1e-5 sqrt(N)). bf16: y
// and dx are rounded to bf16 (relative step 2^-8): rtol 1e-2, atol 1e-2; rstd and dweight
// stay f32 from the same (rounded) inputs, so keep the f32 bounds.
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>

#include "gtest/gtest.h"
#include "kernels/rmsnorm.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::filled;
using testing::kGpu;
using testing::kNaN;
using testing::on_gpu;
using testing::on_gpu_shifted;
using testing::rounded;

using testing::all_close;
using testing::random_normal;
using testing::rng_for_test;

// Which tensor of a case starts one element into its buffer, so that its data is off a
// 16-byte boundary and the op must take its generic kernels.
enum class Misaligned { kNone, kX, kOut, kDy, kWeight };

// Forward and backward of one case on the GPU against the CPU.
void expect_matches_cpu(const Shape& shape, DType dt, Misaligned misaligned) {
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

  Tensor gx = on_gpu_shifted(x, dt, misaligned == Misaligned::kX);
  Tensor gw = on_gpu_shifted(weight, DType::kF32, misaligned == Misaligned::kWeight);
  const bool shift_out = misaligned == Misaligned::kOut;
  Tensor gy = on_gpu_shifted(filled(shape, kNaN), dt, shift_out);
  Tensor grstd = filled({n}, kNaN).to(kGpu);
  rmsnorm_forward(gy, grstd, gx, gw, kEps);
  EXPECT_TRUE(all_close(gy, rounded(y, dt), act_rtol, act_atol));
  EXPECT_TRUE(all_close(grstd, rstd, 1e-5, 1e-6));

  // The forward of x + residual, the sum written in the same pass: against the CPU on the
  // sum rounded as the GPU stores it (the sum itself to within its one rounding).
  {
    const Tensor a = rounded(random_normal(shape, rng), dt);
    std::vector<float> hv = x.to_f32_vector();
    const std::vector<float> av = a.to_f32_vector();
    for (size_t i = 0; i < hv.size(); ++i) hv[i] += av[i];
    const Tensor h = rounded(Tensor::from_f32(hv, shape), dt);
    Tensor hy = Tensor::empty(shape), hrstd = Tensor::empty({n});
    rmsnorm_forward(hy, hrstd, h, weight, kEps);
    Tensor gsum = on_gpu_shifted(filled(shape, kNaN), dt, shift_out);
    Tensor gy2 = on_gpu_shifted(filled(shape, kNaN), dt, shift_out);
    Tensor grstd2 = filled({n}, kNaN).to(kGpu);
    rmsnorm_forward(gy2, grstd2, gx, gw, kEps, on_gpu(a, dt), gsum);
    EXPECT_TRUE(all_close(gsum, h, 0, 0)) << "sum";
    EXPECT_TRUE(all_close(gy2, rounded(hy, dt), act_rtol, act_atol)) << "y of the sum";
    EXPECT_TRUE(all_close(grstd2, hrstd, 1e-5, 1e-6)) << "rstd of the sum";
  }

  // The backward from the CPU's rstd, so that it is checked on its own.
  Tensor gdx = on_gpu_shifted(filled(shape, kNaN), dt, shift_out), gdw = dweight_start.to(kGpu);
  Tensor gdy = on_gpu_shifted(dy, dt, misaligned == Misaligned::kDy);
  rmsnorm_backward(gdx, gdw, gdy, gx, gw, rstd.to(kGpu));
  EXPECT_TRUE(all_close(gdx, rounded(dx, dt), act_rtol, act_atol));
  EXPECT_TRUE(all_close(gdw, dweight, 1e-5, 1e-5 * std::sqrt(static_cast<double>(n)) + 1e-5));

  // With a residual (as the output's buffer, so also in place): dx + residual, rounded once.
  Tensor residual = rounded(random_normal(shape, rng), dt);
  Tensor with_residual = dx.clone(), cpu_dw = dweight_start.clone();
  rmsnorm_backward(with_residual, cpu_dw, dy, x, weight, rstd, residual);
  Tensor gres = on_gpu_shifted(residual, dt, shift_out), gdw2 = dweight_start.to(kGpu);
  rmsnorm_backward(gres, gdw2, gdy, gx, gw, rstd.to(kGpu), gres);
  EXPECT_TRUE(all_close(gres, rounded(with_residual, dt), act_rtol, act_atol)) << "residual";
  EXPECT_TRUE(all_close(gdw2, gdw, 0, 0)) << "residual: dweight as without";
}

using Param = std::tuple<Shape, DType>;

std::string shape_name(const Shape& shape) {
  std::string name;
  for (int64_t s : shape) name += std::to_string(s) + "x";
  name.pop_back();
  return name;
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  auto [shape, dt] = info.param;
  return shape_name(shape) + "_" + dtype_name(dt);
}

class RmsnormGpuTest : public ::testing::TestWithParam<Param> {};

TEST_P(RmsnormGpuTest, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  auto [shape, dt] = GetParam();
  expect_matches_cpu(shape, dt, Misaligned::kNone);
}

// Paths, as bf16 | f32 (a vector is 8 bf16 or 4 f32; G warps per row, V vectors a thread):
//   generic: 1, 7, 33, 1003, 1026 (no whole vectors); 20000, and 16384 in f32 (too wide).
//   G = 1: 64, 96 (V 1 | 1, lanes left idle), 200 (1 | 2), 256 (1 | 2), 384 (2 | 3),
//          768 (3 | 6), 1000 (4 | 8, the row ending part way through the last vectors),
//          1024 (4 | 8), 1280 (5 | -), 1536 (6 | -), 1792 (7 | -), 2048 (8 | -).
//   G > 1 (V = 8, vectors past the row's end skipped): 1280, 1536, 1792 in f32 (G 2),
//          2048 (- | 2), 3000 (2 | 4), 4096 (2 | 4), 7168 (4 | 8), 16384 (8 | -).
INSTANTIATE_TEST_SUITE_P(
    Shapes, RmsnormGpuTest,
    ::testing::Combine(::testing::Values(Shape{1, 1}, Shape{1, 7}, Shape{3, 64}, Shape{129, 1000},
                                         Shape{5, 4096}, Shape{2, 3000}, Shape{1100, 33},
                                         Shape{2, 5, 96}, Shape{4099, 256}, Shape{9, 200},
                                         Shape{3, 1003}, Shape{5, 1026}, Shape{4, 384},
                                         Shape{11, 768}, Shape{4099, 1024}, Shape{3, 1024},
                                         Shape{33, 1280}, Shape{5, 1536}, Shape{7, 1792},
                                         Shape{4099, 2048}, Shape{2, 2048}, Shape{1031, 4096},
                                         Shape{3, 4096}, Shape{515, 7168}, Shape{2, 7168},
                                         Shape{6, 16384}, Shape{2, 20000}),
                       ::testing::Values(DType::kF32, DType::kBF16)),
    param_name);

// Each of x, y / dx, dy and weight in turn off a 16-byte boundary, on a width that would
// otherwise take the vector kernels: the op must see it and take the generic ones.
using MisalignedParam = std::tuple<Misaligned, DType>;

class RmsnormMisalignedGpuTest : public ::testing::TestWithParam<MisalignedParam> {};

TEST_P(RmsnormMisalignedGpuTest, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  auto [misaligned, dt] = GetParam();
  expect_matches_cpu({37, 1024}, dt, misaligned);
}

std::string misaligned_name(const ::testing::TestParamInfo<MisalignedParam>& info) {
  static const char* const kNames[] = {"none", "x", "out", "dy", "weight"};
  auto [misaligned, dt] = info.param;
  return std::string(kNames[static_cast<int>(misaligned)]) + "_" + dtype_name(dt);
}

INSTANTIATE_TEST_SUITE_P(Views, RmsnormMisalignedGpuTest,
                         ::testing::Combine(::testing::Values(Misaligned::kX, Misaligned::kOut,
                                                              Misaligned::kDy, Misaligned::kWeight),
                                            ::testing::Values(DType::kF32, DType::kBF16)),
                         misaligned_name);

// The weight gradient has no atomics: two backward runs from the same inputs give the same
// bits (and so does dx), on the vector kernels and the generic ones alike.
class RmsnormDeterminismGpuTest : public ::testing::TestWithParam<Param> {};

bool same_bits(const Tensor& a, const Tensor& b) {
  const std::vector<float> va = a.to_f32_vector(), vb = b.to_f32_vector();
  return va.size() == vb.size() && std::memcmp(va.data(), vb.data(), va.size() * 4) == 0;
}

TEST_P(RmsnormDeterminismGpuTest, BackwardIsBitIdenticalAcrossRuns) {
  SKIP_WITHOUT_GPU();
  auto [shape, dt] = GetParam();
  const int64_t d = shape.back(), n = Tensor::empty(shape).numel() / d;
  auto rng = rng_for_test();
  Tensor gx = on_gpu(random_normal(shape, rng, 2.0f), dt);
  Tensor gdy = on_gpu(random_normal(shape, rng), dt);
  Tensor gw = random_normal({d}, rng).to(kGpu);
  Tensor dweight_start = random_normal({d}, rng);
  Tensor grstd = Tensor::empty({n}, DType::kF32, kGpu);
  rmsnorm_forward(on_gpu(filled(shape, kNaN), dt), grstd, gx, gw, 1e-5f);

  Tensor dx[2], dweight[2];
  for (int run = 0; run < 2; ++run) {
    dx[run] = on_gpu(filled(shape, kNaN), dt);
    dweight[run] = dweight_start.to(kGpu);
    rmsnorm_backward(dx[run], dweight[run], gdy, gx, gw, grstd);
  }
  EXPECT_TRUE(same_bits(dweight[0], dweight[1])) << "dweight differs between two runs";
  EXPECT_TRUE(same_bits(dx[0], dx[1])) << "dx differs between two runs";
}

INSTANTIATE_TEST_SUITE_P(Shapes, RmsnormDeterminismGpuTest,
                         ::testing::Combine(::testing::Values(Shape{4099, 1024}, Shape{2053, 4096},
                                                              Shape{1100, 1003}),
                                            ::testing::Values(DType::kF32, DType::kBF16)),
                         param_name);

}  // namespace
}  // namespace sy
