// Fused softmax cross-entropy on CUDA against the CPU op on the same random logits: a
// single row, one-element and odd vocabularies (rows then start unaligned, the scalar path)
// and vocabularies of 16-byte multiples (the packed path), large logits, ignored rows, f32
// and bf16; the backward both into a separate buffer (NaN-filled, so it must be written)
// and in place over the logits. Skips without a GPU.
// The fused forward + backward against the CPU forward then backward: in place and into a
// separate buffer, from aligned logits and from logits one element off a 16-byte boundary
// (every row then starts unaligned; into an aligned buffer the op takes the two kernels),
// rows too long for its shared memory (on an H200 bf16 V 131072 and f32 from V 32768: the
// two kernels again), dlosses differing per row, and the same bits on a repeat.
//
// Tolerances. f32: the GPU sums exp() in fp32 in a running (max, sum) form, the CPU in
// double: lse and losses rtol 1e-5, atol 1e-5 (lse is ~log V); dlogits rtol 1e-5, atol 1e-7
// (probabilities are ~1/V). bf16 logits: lse and losses are f32 from the same rounded
// logits, so the f32 bounds hold; dlogits are rounded to bf16 (relative step 2^-8): rtol
// 1e-2, atol 1e-6. The fused op's dlogits come from its own lse (f32), which moves them by
// well under those bounds.
#include <cstring>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

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
using testing::on_gpu_shifted;
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

::testing::AssertionResult same_bits(const Tensor& a, const Tensor& b) {
  const Tensor ha = a.to(Device::cpu()), hb = b.to(Device::cpu());
  if (ha.dtype() != hb.dtype() || ha.shape() != hb.shape() ||
      std::memcmp(ha.raw(), hb.raw(), ha.nbytes()) != 0) {
    return ::testing::AssertionFailure() << "not the same bits";
  }
  return ::testing::AssertionSuccess();
}

class CrossEntropyForwardBackwardGpuTest : public ::testing::TestWithParam<Param> {};

TEST_P(CrossEntropyForwardBackwardGpuTest, MatchesCpuForwardThenBackward) {
  SKIP_WITHOUT_GPU();
  auto [size, dt] = GetParam();
  auto [n, vocab, scale] = size;
  const bool bf16 = dt == DType::kBF16;
  auto rng = rng_for_test();
  Tensor logits = rounded(random_normal({n, vocab}, rng, scale), dt);
  std::vector<int32_t> t = random_ints({n}, 0, vocab, rng).to_i32_vector();
  for (int i = 1; i < n; i += 3) t[i] = kIgnore;
  Tensor targets = Tensor::from_i32(t, {n});
  Tensor dlosses = random_normal({n}, rng);

  Tensor losses = Tensor::empty({n}), lse = Tensor::empty({n});
  Tensor dlogits = Tensor::empty({n, vocab});
  cross_entropy_forward(losses, lse, logits, targets, kIgnore);
  cross_entropy_backward(dlogits, dlosses, logits, lse, targets, kIgnore);
  const Tensor expected = rounded(dlogits, dt);
  const double rtol = bf16 ? 1e-2 : 1e-5, atol = bf16 ? 1e-6 : 1e-7;

  const Tensor gtargets = targets.to(kGpu), gdlosses = dlosses.to(kGpu);
  // losses and lse (NaN-filled, so they must be written) of one run into `gdlogits`.
  auto run = [&](const Tensor& gdlogits, const Tensor& glogits) {
    Tensor glosses = filled({n}, kNaN).to(kGpu), glse = filled({n}, kNaN).to(kGpu);
    cross_entropy_forward_backward(glosses, glse, gdlogits, gdlosses, glogits, gtargets, kIgnore);
    return std::pair{glosses, glse};
  };
  for (int shift : {0, 1}) {
    SCOPED_TRACE(absl::StrCat("logits shifted by ", shift));
    Tensor glogits = on_gpu_shifted(logits, dt, shift);
    auto [glosses, glse] = run(glogits, glogits);
    EXPECT_TRUE(all_close(glse, lse, 1e-5, 1e-5));
    EXPECT_TRUE(all_close(glosses, losses, 1e-5, 1e-5));
    EXPECT_TRUE(all_close(glogits, expected, rtol, atol)) << "in place";

    Tensor again = on_gpu_shifted(logits, dt, shift);
    auto [losses_again, lse_again] = run(again, again);
    EXPECT_TRUE(same_bits(losses_again, glosses)) << "losses on a repeat";
    EXPECT_TRUE(same_bits(lse_again, glse)) << "lse on a repeat";
    EXPECT_TRUE(same_bits(again, glogits)) << "dlogits on a repeat";

    Tensor source = on_gpu_shifted(logits, dt, shift);
    Tensor gdlogits = on_gpu(filled({n, vocab}, kNaN), dt);
    auto [sep_losses, sep_lse] = run(gdlogits, source);
    EXPECT_TRUE(all_close(sep_lse, lse, 1e-5, 1e-5));
    EXPECT_TRUE(all_close(sep_losses, losses, 1e-5, 1e-5));
    EXPECT_TRUE(all_close(gdlogits, expected, rtol, atol)) << "into a separate buffer";
    EXPECT_TRUE(all_close(source, logits, 0, 0)) << "the logits are left as they were";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CrossEntropyForwardBackwardGpuTest,
    ::testing::Combine(::testing::Values(Size{1, 1, 1.0f}, Size{4, 5, 1.0f}, Size{9, 7, 1.0f},
                                         Size{6, 129, 2.0f}, Size{5, 33, 3.0f},
                                         Size{64, 1000, 1.0f}, Size{3, 1001, 30.0f},
                                         Size{16, 32768, 2.0f}, Size{7, 50257, 3.0f},
                                         Size{2, 131072, 2.0f}),
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

  losses = filled({4}, kNaN).to(kGpu);
  cross_entropy_forward_backward(losses, lse, logits, random_normal({4}, rng).to(kGpu), logits,
                                 targets, kIgnore);
  EXPECT_TRUE(all_close(losses, std::vector<double>(4, 0.0), 0, 0)) << "fused";
  EXPECT_TRUE(all_close(logits, std::vector<double>(160, 0.0), 0, 0)) << "fused, in place";
}

}  // namespace
}  // namespace sy
