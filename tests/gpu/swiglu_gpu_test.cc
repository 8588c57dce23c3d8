// SwiGLU on CUDA against the CPU op on the same random inputs: a single row, odd widths,
// f32 and bf16, forward and backward (dh written over a NaN-filled buffer). Widths that are
// a multiple of 8 take the 16-byte vector kernels, the others the scalar ones; a view that
// starts one row in (rows(1, N)) takes the scalar ones when that leaves it misaligned.
// Skips without a GPU.
//
// Tolerances. f32: same formula, fp32 on both sides (expf vs std::exp, fused multiply-adds
// on the GPU): rtol 1e-5, atol 1e-5 on O(1) values. bf16: outputs are rounded to bf16
// (relative step 2^-8): rtol 1e-2, atol 1e-2.
#include <limits>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/swiglu.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::kNaN;
using testing::rounded;
using testing::on_gpu;
using testing::filled;

using testing::all_close;
using testing::random_normal;
using testing::rng_for_test;

using Param = std::tuple<std::pair<int, int>, DType>;  // (N, F), dtype

class SwigluGpuTest : public ::testing::TestWithParam<Param> {};

TEST_P(SwigluGpuTest, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  auto [size, dt] = GetParam();
  auto [n, f] = size;
  const bool bf16 = dt == DType::kBF16;
  const double rtol = bf16 ? 1e-2 : 1e-5, atol = bf16 ? 1e-2 : 1e-5;
  auto rng = rng_for_test();
  Tensor h = rounded(random_normal({n, 2 * f}, rng, 2.0f), dt);
  Tensor dout = rounded(random_normal({n, f}, rng), dt);
  Tensor out = Tensor::empty({n, f}), dh = Tensor::empty({n, 2 * f});
  swiglu_forward(out, h);
  swiglu_backward(dh, dout, h);

  Tensor gh = on_gpu(h, dt);
  Tensor gout = on_gpu(filled({n, f}, kNaN), dt), gdh = on_gpu(filled({n, 2 * f}, kNaN), dt);
  swiglu_forward(gout, gh);
  swiglu_backward(gdh, on_gpu(dout, dt), gh);
  EXPECT_TRUE(all_close(gout, rounded(out, dt), rtol, atol));
  EXPECT_TRUE(all_close(gdh, rounded(dh, dt), rtol, atol));
}

// rows(1, N) of [N, 2F] with 2F * size not a multiple of 16: a misaligned start, so the
// scalar path, which must agree with the CPU too; with F = 8 the view stays aligned.
TEST(SwigluGpuViews, OffsetViewsMatchCpu) {
  SKIP_WITHOUT_GPU();
  auto rng = rng_for_test();
  for (int f : {9, 8}) {
    const int n = 33;
    Tensor h = rounded(random_normal({n, 2 * f}, rng, 2.0f), DType::kBF16);
    Tensor dout = rounded(random_normal({n, f}, rng), DType::kBF16);
    Tensor out = Tensor::empty({n - 1, f}), dh = Tensor::empty({n - 1, 2 * f});
    swiglu_forward(out, h.rows(1, n));
    swiglu_backward(dh, dout.rows(1, n), h.rows(1, n));
    Tensor gh = on_gpu(h, DType::kBF16), gdout = on_gpu(dout, DType::kBF16);
    Tensor gout = on_gpu(filled({n, f}, kNaN), DType::kBF16);
    Tensor gdh = on_gpu(filled({n, 2 * f}, kNaN), DType::kBF16);
    swiglu_forward(gout.rows(1, n), gh.rows(1, n));
    swiglu_backward(gdh.rows(1, n), gdout.rows(1, n), gh.rows(1, n));
    EXPECT_TRUE(all_close(gout.rows(1, n), rounded(out, DType::kBF16), 1e-2, 1e-2)) << "F " << f;
    EXPECT_TRUE(all_close(gdh.rows(1, n), rounded(dh, DType::kBF16), 1e-2, 1e-2)) << "F " << f;
  }
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  auto [size, dt] = info.param;
  return absl::StrCat("N", size.first, "_F", size.second, "_", dtype_name(dt));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SwigluGpuTest,
    ::testing::Combine(::testing::Values(std::pair{1, 1}, std::pair{1, 5}, std::pair{7, 128},
                                         std::pair{300, 1001}, std::pair{64, 2816},
                                         std::pair{1000, 24}),
                       ::testing::Values(DType::kF32, DType::kBF16)),
    param_name);

}  // namespace
}  // namespace sy
