// Fused softmax cross-entropy on CUDA against the CPU op on the same random logits: a
// single row, one-element and odd vocabularies (rows then start unaligned, the scalar path)
// and vocabularies of 16-byte multiples (the packed path), large logits, ignored rows, f32
// and bf16; the backward both into a separate buffer (NaN-filled, so it must be written)
// and in place over the logits. Skips without a GPU.
//
// Tolerances. f32: the GPU sums exp() in fp32 in a running (max, sum) form, the CPU in
// double: lse and losses rtol 1e-5, atol 1e-5 (lse is ~log V); dlogits rtol 1e-5, atol 1e-7
// (probabilities are ~1/V). bf16 logits: lse and losses are f32 from the same rounded
// logits, so the f32 bounds hold; dlogits are rounded to bf16 (relative step 2^-8): rtol
// 1e-2, atol 1e-6.
#include <limits>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cross_entropy.h"
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

constexpr int kIgnore = -100;

// (N, V, logit scale), dtype
using Param = std::tuple<std::tuple<int, int, float>, DType>;

class CrossEntropyGpuTest : public ::testing::TestWithParam<Param> {};

TEST_P(CrossEntropyGpuTest, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  auto [size, dt] = GetParam();
  auto [n, vocab, scale] = size;
  const bool bf16 = dt == DType::kBF16;
  auto rng = rng_for_test();
  Tensor logits = rounded(random_normal({n, vocab}, rng, scale), dt);
  Tensor targets = random_ints({n}, 0, vocab, rng);
  if (n > 2) targets.data<int32_t>()[1] = kIgnore;  // one ignored row
  Tensor dlosses = random_normal({n}, rng);

  Tensor losses = Tensor::empty({n}), lse = Tensor::empty({n});
  cross_entropy_forward(losses, lse, logits, targets, kIgnore);
  Tensor dlogits = Tensor::empty({n, vocab});
  cross_entropy_backward(dlogits, dlosses, logits, lse, targets, kIgnore);

  Tensor glogits = on_gpu(logits, dt), gtargets = targets.to(kGpu);
  Tensor glosses = filled({n}, kNaN).to(kGpu), glse = filled({n}, kNaN).to(kGpu);
  cross_entropy_forward(glosses, glse, glogits, gtargets, kIgnore);
  EXPECT_TRUE(all_close(glse, lse, 1e-5, 1e-5));
  EXPECT_TRUE(all_close(glosses, losses, 1e-5, 1e-5));

  // Backward from the CPU's lse, so it is checked on its own; then in place.
  const double rtol = bf16 ? 1e-2 : 1e-5, atol = bf16 ? 1e-6 : 1e-7;
  Tensor gdlogits = on_gpu(filled({n, vocab}, kNaN), dt), gdlosses = dlosses.to(kGpu);
  cross_entropy_backward(gdlogits, gdlosses, glogits, lse.to(kGpu), gtargets, kIgnore);
  EXPECT_TRUE(all_close(gdlogits, rounded(dlogits, dt), rtol, atol));
  cross_entropy_backward(glogits, gdlosses, glogits, lse.to(kGpu), gtargets, kIgnore);
  EXPECT_TRUE(all_close(glogits, rounded(dlogits, dt), rtol, atol)) << "in place";
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  auto [size, dt] = info.param;
  auto [n, vocab, scale] = size;
  return absl::StrCat("N", n, "_V", vocab, "_scale", static_cast<int>(scale), "_", dtype_name(dt));
}

using Size = std::tuple<int, int, float>;
INSTANTIATE_TEST_SUITE_P(
    Shapes, CrossEntropyGpuTest,
    ::testing::Combine(::testing::Values(Size{1, 1, 1.0f}, Size{1, 7, 1.0f}, Size{5, 33, 3.0f},
                                         Size{64, 1000, 1.0f}, Size{3, 1001, 30.0f},
                                         Size{16, 32768, 2.0f}, Size{7, 50257, 3.0f}),
                       ::testing::Values(DType::kF32, DType::kBF16)),
    param_name);

TEST(CrossEntropyGpuEdgeTest, AllRowsIgnoredGiveZeroLossAndGradient) {
  SKIP_WITHOUT_GPU();
  auto rng = rng_for_test();
  Tensor logits = random_normal({4, 40}, rng).to(kGpu);
  Tensor targets = Tensor::from_i32({kIgnore, kIgnore, kIgnore, kIgnore}, {4}).to(kGpu);
  Tensor losses = filled({4}, kNaN).to(kGpu), lse = Tensor::empty({4}, DType::kF32, kGpu);
  cross_entropy_forward(losses, lse, logits, targets, kIgnore);
  EXPECT_TRUE(all_close(losses, std::vector<double>(4, 0.0), 0, 0));
  Tensor dlogits = filled({4, 40}, kNaN).to(kGpu);
  cross_entropy_backward(dlogits, random_normal({4}, rng).to(kGpu), logits, lse, targets, kIgnore);
  EXPECT_TRUE(all_close(dlogits, std::vector<double>(160, 0.0), 0, 0));
}

}  // namespace
}  // namespace sy
