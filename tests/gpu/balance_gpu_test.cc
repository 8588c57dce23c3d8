// GPU parity of the balancing terms' per-token work (kernels/balance.h) against the CPU op on
// the same random inputs: routing_stats (counts exact; score and lse^2 sums in double on both
// sides, in another order, then rounded to f32: 1e-6 relative), balance_backward and
// z_loss_backward (double inside, one f32 rounding of the increment: 1e-6 relative plus
// 1e-7 of the tensor's peak), for softmax-like and sigmoid-like scores, several B x T
// layouts (a single token, odd T) and E up to 160; and two GPU runs bit for bit.
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/balance.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::close_to;
using testing::kGpu;

struct Case {
  int64_t batch, seq;
  int experts, k;
};

class BalanceGpuTest : public ::testing::TestWithParam<Case> {};

TEST_P(BalanceGpuTest, MatchesCpu) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  const int64_t n = c.batch * c.seq;
  auto rng = testing::rng_for_test();
  Tensor logits = testing::random_normal({n, c.experts}, rng, 2.0f);
  Tensor scores = Tensor::empty({n, c.experts});
  for (int64_t i = 0; i < scores.numel(); ++i)  // positive, like sigmoid or softmax scores
    scores.data<float>()[i] = 1.0f / (1.0f + std::exp(-logits.data<float>()[i]));
  Tensor indices = testing::random_ints({n, c.k}, 0, c.experts, rng);

  Tensor stats = Tensor::empty({c.batch, 2 * c.experts + 1});
  routing_stats(stats, indices, scores, logits);
  Tensor gstats = Tensor::empty(stats.shape(), DType::kF32, kGpu);
  routing_stats(gstats, indices.to(kGpu), scores.to(kGpu), logits.to(kGpu));
  EXPECT_TRUE(close_to(gstats, stats, 1e-6, 0));
  // Counts add up to every slot.
  double slots = 0;
  const std::vector<float> st = gstats.to_f32_vector();
  for (int64_t b = 0; b < c.batch; ++b)
    for (int e = 0; e < c.experts; ++e) slots += st[b * (2 * c.experts + 1) + e];
  EXPECT_EQ(slots, static_cast<double>(n * c.k));

  Tensor dp = testing::random_normal({c.batch, c.experts}, rng);
  Tensor start = testing::random_normal({n, c.experts}, rng);
  Tensor ds = start.clone(), gds = start.to(kGpu);
  balance_backward(ds, scores, dp);
  balance_backward(gds, scores.to(kGpu), dp.to(kGpu));
  EXPECT_TRUE(close_to(gds, ds, 1e-6, 1e-7));

  Tensor dl = start.clone(), gdl = start.to(kGpu);
  z_loss_backward(dl, logits, 0.37f);
  z_loss_backward(gdl, logits.to(kGpu), 0.37f);
  EXPECT_TRUE(close_to(gdl, dl, 1e-6, 1e-7));

  // Deterministic: a second run gives the same bits.
  Tensor again = Tensor::empty(stats.shape(), DType::kF32, kGpu);
  routing_stats(again, indices.to(kGpu), scores.to(kGpu), logits.to(kGpu));
  EXPECT_EQ(again.to_f32_vector(), gstats.to_f32_vector());
}

INSTANTIATE_TEST_SUITE_P(Layouts, BalanceGpuTest,
                         ::testing::Values(Case{1, 1, 4, 1}, Case{3, 17, 8, 2}, Case{2, 300, 16, 2},
                                           Case{8, 2048, 16, 2}, Case{2, 129, 160, 6}));

TEST(BalanceOps, RefuseMismatchedShapes) {
  Tensor scores = Tensor::zeros({6, 4}), logits = Tensor::zeros({6, 4});
  Tensor indices = Tensor::empty({6, 2}, DType::kI32);
  EXPECT_DEATH(routing_stats(Tensor::empty({4, 9}), indices, scores, logits), "B dividing 6");
  EXPECT_DEATH(routing_stats(Tensor::empty({2, 8}), indices, scores, logits), "2E \\+ 1");
  EXPECT_DEATH(balance_backward(Tensor::zeros({6, 4}), scores, Tensor::zeros({2, 5})),
               "dp must be");
  EXPECT_DEATH(z_loss_backward(Tensor::zeros({6, 3}), logits, 1.0f), "dlogits");
}

}  // namespace
}  // namespace sy
