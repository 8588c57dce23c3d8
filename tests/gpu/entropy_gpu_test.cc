// Softmax entropy on CUDA against the CPU op on the same random logits and their lse (from
// the cross-entropy op): one row, odd and 16-byte-multiple vocabularies, large logits, f32
// and bf16 logits, and an output filled with NaN first (every row must be written). The CPU
// sums in double, the GPU in fp32 from the same (rounded) logits: rtol 1e-4, atol 1e-4 (the
// entropy is at most log V ~ 11). Skips without a GPU.
#include <tuple>

#include "gtest/gtest.h"
#include "kernels/cross_entropy.h"
#include "kernels/entropy.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::filled;
using testing::kGpu;
using testing::kNaN;
using testing::on_gpu;
using testing::rounded;

// (N, V, logit scale), dtype
using Param = std::tuple<std::tuple<int, int, float>, DType>;

class EntropyGpuTest : public ::testing::TestWithParam<Param> {};

TEST_P(EntropyGpuTest, MatchesCpu) {
  SKIP_WITHOUT_GPU();
  auto [size, dt] = GetParam();
  auto [n, vocab, scale] = size;
  auto rng = testing::rng_for_test();
  const Tensor logits = rounded(testing::random_normal({n, vocab}, rng, scale), dt);
  const Tensor targets = testing::random_ints({n}, 0, vocab, rng);
  Tensor losses = Tensor::empty({n}), lse = Tensor::empty({n}), want = filled({n}, kNaN);
  cross_entropy_forward(losses, lse, logits, targets, -100);
  softmax_entropy(want, logits, lse);

  const Tensor got = filled({n}, kNaN).to(kGpu);
  softmax_entropy(got, on_gpu(logits, dt), lse.to(kGpu));
  EXPECT_TRUE(testing::all_close(got.to(Device::cpu()), want, 1e-4, 1e-4));
  for (float h : got.to_f32_vector()) {
    EXPECT_GE(h, -1e-4f);
    EXPECT_LE(h, std::log(static_cast<float>(vocab)) + 1e-4f);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, EntropyGpuTest,
                         ::testing::Combine(::testing::Values(std::make_tuple(1, 97, 1.0f),
                                                              std::make_tuple(37, 1001, 2.0f),
                                                              std::make_tuple(64, 4096, 1.0f),
                                                              std::make_tuple(5, 50257, 8.0f)),
                                            ::testing::Values(DType::kF32, DType::kBF16)));

}  // namespace
}  // namespace sy
