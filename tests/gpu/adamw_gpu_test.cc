// AdamW on CUDA against the CPU op: several consecutive steps (so bias corrections change)
// on random parameters, gradients and non-zero moments, with and without weight decay,
// over sizes from one element to more than a grid-stride of the launch, with clipping folded
// in (grad_scale) and the bf16 compute copy written in the same pass. All f32; the
// arithmetic is the same expression in the same order, so only fused multiply-adds on the
// GPU separate the two: rtol 1e-5, atol 1e-6 (parameters O(1), moments O(1e-2..1)).
// Skips without a GPU.
#include <cmath>

#include "gtest/gtest.h"
#include "kernels/adamw.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::kGpu;

using testing::all_close;
using testing::random_normal;
using testing::rng_for_test;

class AdamwGpuTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(AdamwGpuTest, StepsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t n = GetParam();
  auto rng = rng_for_test();
  Tensor param = random_normal({n}, rng), m = random_normal({n}, rng, 0.1f);
  // v >= 0: the square of a random tensor.
  Tensor v = random_normal({n}, rng, 0.1f);
  for (int64_t i = 0; i < n; ++i) v.data<float>()[i] *= v.data<float>()[i];
  Tensor gparam = param.to(kGpu), gm = m.to(kGpu), gv = v.to(kGpu);

  AdamWParams p;
  p.lr = 3e-3f;
  Tensor gcopy = Tensor::empty({n}, DType::kBF16, kGpu);
  for (int64_t step = 1; step <= 5; ++step) {
    p.step = step;
    p.weight_decay = step % 2 ? 0.1f : 0.0f;
    p.grad_scale = step % 3 ? 1.0f : 0.3f;
    Tensor grad = random_normal({n}, rng);
    adamw_step(param, grad, m, v, p);
    adamw_step(gparam, grad.to(kGpu), gm, gv, p, gcopy);
    // The bf16 copy is exactly the GPU's updated parameter, rounded to nearest even.
    EXPECT_TRUE(all_close(gcopy.to(Device::cpu()).to(DType::kF32),
                          gparam.to(Device::cpu()).to(DType::kBF16).to(DType::kF32), 0, 0));
    EXPECT_TRUE(all_close(gm, m, 1e-5, 1e-6)) << "m after step " << step;
    EXPECT_TRUE(all_close(gv, v, 1e-5, 1e-6)) << "v after step " << step;
    EXPECT_TRUE(all_close(gparam, param, 1e-5, 1e-6)) << "param after step " << step;
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, AdamwGpuTest,
                         ::testing::Values(int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{100003},
                                           int64_t{(1 << 22) + 3}));

}  // namespace
}  // namespace sy
