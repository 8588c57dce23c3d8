// cross_entropy: losses and lse against a double reference, dlogits against finite
// differences (ignored rows included), in-place backward, ignore_index, and logits near 1000;
// the fused forward + backward against the two ops, in place and not.
#include "kernels/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::all_close;
using testing::grad_check;
using testing::random_ints;
using testing::random_normal;
using testing::rng_for_test;
using testing::weighted_sum;

constexpr int kIgnore = -100;

// Random targets with every third row (from the second) ignored.
Tensor make_targets(int n, int vocab, std::mt19937_64& rng) {
  std::vector<int32_t> t = random_ints({n}, 0, vocab, rng).to_i32_vector();
  for (int i = 1; i < n; i += 3) t[i] = kIgnore;
  return Tensor::from_i32(t, {n});
}

struct Expected {
  std::vector<double> losses, lse;
};

Expected reference(const Tensor& logits, const Tensor& targets) {
  const int64_t n = logits.dim(0), vocab = logits.dim(1);
  std::vector<float> x = logits.to_f32_vector();
  std::vector<int32_t> t = targets.to_i32_vector();
  Expected e{std::vector<double>(n), std::vector<double>(n)};
  for (int64_t row = 0; row < n; ++row) {
    const float* xr = x.data() + row * vocab;
    const double max = *std::max_element(xr, xr + vocab);
    double sum = 0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(xr[j] - max);
    e.lse[row] = max + std::log(sum);
    e.losses[row] = t[row] == kIgnore ? 0.0 : e.lse[row] - xr[t[row]];
  }
  return e;
}

class CrossEntropyTest : public ::testing::TestWithParam<std::tuple<int, int>> {};

// lse is ~ max + log V (a few units): its f32 rounding (~5e-7) sets atol 2e-6 for the loss,
// which is a difference of two such numbers.
TEST_P(CrossEntropyTest, ForwardMatchesDoubleReference) {
  auto [n, vocab] = GetParam();
  auto rng = rng_for_test();
  Tensor logits = random_normal({n, vocab}, rng, 2.0f), targets = make_targets(n, vocab, rng);
  Tensor losses = Tensor::empty({n}), lse = Tensor::empty({n});
  cross_entropy_forward(losses, lse, logits, targets, kIgnore);
  Expected e = reference(logits, targets);
  EXPECT_TRUE(all_close(losses, e.losses, 1e-5, 2e-6));
  EXPECT_TRUE(all_close(lse, e.lse, 1e-6, 1e-6));
}

TEST_P(CrossEntropyTest, BackwardMatchesFiniteDifferencesAndWorksInPlace) {
  auto [n, vocab] = GetParam();
  auto rng = rng_for_test();
  Tensor logits = random_normal({n, vocab}, rng, 2.0f), targets = make_targets(n, vocab, rng);
  Tensor losses = Tensor::empty({n}), lse = Tensor::empty({n});
  cross_entropy_forward(losses, lse, logits, targets, kIgnore);
  Tensor dlosses = random_normal({n}, rng);
  Tensor dlogits = Tensor::empty({n, vocab});
  dlogits.fill_(std::numeric_limits<float>::quiet_NaN());  // written, never read
  cross_entropy_backward(dlogits, dlosses, logits, lse, targets, kIgnore);

  // Ignored rows: zero loss, zero gradient.
  std::vector<int32_t> t = targets.to_i32_vector();
  std::vector<float> l = losses.to_f32_vector(), g = dlogits.to_f32_vector();
  for (int row = 0; row < n; ++row) {
    if (t[row] != kIgnore) continue;
    EXPECT_EQ(l[row], 0.0f) << "row " << row;
    for (int j = 0; j < vocab; ++j) ASSERT_EQ(g[row * vocab + j], 0.0f) << "row " << row;
  }

  Tensor scratch_lse = Tensor::empty({n});
  auto loss = [&] {
    cross_entropy_forward(losses, scratch_lse, logits, targets, kIgnore);
    return weighted_sum(losses, dlosses);
  };
  EXPECT_TRUE(grad_check(loss, logits, dlogits, rng));

  // dlogits aliasing logits overwrites them with exactly the out-of-place gradient.
  Tensor in_place = logits.clone();
  cross_entropy_backward(in_place, dlosses, in_place, lse, targets, kIgnore);
  EXPECT_TRUE(all_close(in_place, dlogits, 0, 0));
}

TEST_P(CrossEntropyTest, ForwardBackwardEqualsForwardThenBackward) {
  auto [n, vocab] = GetParam();
  auto rng = rng_for_test();
  Tensor logits = random_normal({n, vocab}, rng, 2.0f), targets = make_targets(n, vocab, rng);
  Tensor dlosses = random_normal({n}, rng);
  Tensor losses = Tensor::empty({n}), lse = Tensor::empty({n}), dlogits = Tensor::empty({n, vocab});
  cross_entropy_forward(losses, lse, logits, targets, kIgnore);
  cross_entropy_backward(dlogits, dlosses, logits, lse, targets, kIgnore);

  auto nan = [](const Shape& shape) {  // outputs start as NaN, so they must be written
    Tensor t = Tensor::empty(shape);
    t.fill_(std::numeric_limits<float>::quiet_NaN());
    return t;
  };
  Tensor fused_losses = nan({n}), fused_lse = nan({n}), fused_dlogits = nan({n, vocab});
  cross_entropy_forward_backward(fused_losses, fused_lse, fused_dlogits, dlosses, logits, targets,
                                 kIgnore);
  EXPECT_TRUE(all_close(fused_losses, losses, 0, 0));
  EXPECT_TRUE(all_close(fused_lse, lse, 0, 0));
  EXPECT_TRUE(all_close(fused_dlogits, dlogits, 0, 0));

  Tensor in_place = logits.clone();
  fused_losses = nan({n});
  fused_lse = nan({n});
  cross_entropy_forward_backward(fused_losses, fused_lse, in_place, dlosses, in_place, targets,
                                 kIgnore);
  EXPECT_TRUE(all_close(fused_losses, losses, 0, 0)) << "in place";
  EXPECT_TRUE(all_close(fused_lse, lse, 0, 0)) << "in place";
  EXPECT_TRUE(all_close(in_place, dlogits, 0, 0)) << "in place";
}

INSTANTIATE_TEST_SUITE_P(Shapes, CrossEntropyTest,
                         ::testing::Values(std::make_tuple(1, 5), std::make_tuple(3, 7),
                                           std::make_tuple(8, 50), std::make_tuple(17, 257)));

TEST(CrossEntropyEdgeTest, LargeLogitsStayFinite) {
  auto rng = rng_for_test();
  const int n = 4, vocab = 33;
  std::vector<float> x = random_normal({n, vocab}, rng).to_f32_vector();
  for (float& v : x) v += 1000.0f;  // exp(1000) overflows f32 and double alike
  x[2 * vocab + 5] = -1000.0f;      // and a huge spread inside one row
  Tensor logits = Tensor::from_f32(x, {n, vocab});
  Tensor targets = Tensor::from_i32({0, 7, 5, 32}, {n});
  Tensor losses = Tensor::empty({n}), lse = Tensor::empty({n});
  cross_entropy_forward(losses, lse, logits, targets, kIgnore);
  Expected e = reference(logits, targets);
  EXPECT_TRUE(all_close(lse, e.lse, 1e-6, 0));
  EXPECT_TRUE(all_close(losses, e.losses, 1e-5, 2e-6));

  Tensor dlogits = Tensor::empty({n, vocab});
  cross_entropy_backward(dlogits, Tensor::from_f32({1, 1, 1, 1}, {n}), logits, lse, targets,
                         kIgnore);
  std::vector<float> g = dlogits.to_f32_vector();
  for (int row = 0; row < n; ++row) {
    double sum = 0;
    for (int j = 0; j < vocab; ++j) {
      ASSERT_TRUE(std::isfinite(g[row * vocab + j])) << "row " << row << " col " << j;
      sum += g[row * vocab + j];
    }
    EXPECT_NEAR(sum, 0.0, 1e-3) << "softmax - onehot sums to zero, row " << row;
  }
}

TEST(CrossEntropyEdgeTest, AllRowsIgnored) {
  auto rng = rng_for_test();
  Tensor logits = random_normal({3, 4}, rng);
  Tensor targets = Tensor::from_i32({kIgnore, kIgnore, kIgnore}, {3});
  Tensor losses = Tensor::empty({3}), lse = Tensor::empty({3});
  cross_entropy_forward(losses, lse, logits, targets, kIgnore);
  EXPECT_TRUE(all_close(losses, std::vector<double>(3, 0.0), 0, 0));
  cross_entropy_backward(logits, random_normal({3}, rng), logits, lse, targets, kIgnore);
  EXPECT_TRUE(all_close(logits, std::vector<double>(12, 0.0), 0, 0));
}

}  // namespace
}  // namespace sy
