// rope: forward against a double reference at positions up to 8k (where an f32 angle would
// drift), backward against finite differences, and the rotation's properties: norms kept,
// position 0 is the identity, backward undoes forward, in-place equals out-of-place.
#include "kernels/rope.h"

#include <cmath>

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

constexpr float kTheta = 10000.0f;

class RopeTest : public ::testing::TestWithParam<std::tuple<int, int, int, int>> {
 protected:
  Shape shape() const {
    auto [b, t, h, hd] = GetParam();
    return {b, t, h, hd};
  }
  Tensor positions(std::mt19937_64& rng) const {
    auto [b, t, h, hd] = GetParam();
    return random_ints({b, t}, 0, 8192, rng);
  }
};

// A handful of f32 products per element: rtol 1e-5 / atol 1e-6 against double.
TEST_P(RopeTest, ForwardMatchesDoubleReference) {
  auto [b, t, h, hd] = GetParam();
  auto rng = rng_for_test();
  Tensor x = random_normal(shape(), rng), pos = positions(rng);
  Tensor out = Tensor::empty(shape());
  rope_forward(out, x, pos, kTheta);

  std::vector<float> vx = x.to_f32_vector();
  std::vector<int32_t> vp = pos.to_i32_vector();
  std::vector<double> expected(vx.size());
  const int half = hd / 2;
  for (int r = 0; r < b * t; ++r) {
    for (int head = 0; head < h; ++head) {
      const int base = (r * h + head) * hd;
      for (int i = 0; i < half; ++i) {
        const double angle = vp[r] * std::pow(double{kTheta}, -2.0 * i / hd);
        const double x0 = vx[base + i], x1 = vx[base + i + half];
        expected[base + i] = x0 * std::cos(angle) - x1 * std::sin(angle);
        expected[base + i + half] = x0 * std::sin(angle) + x1 * std::cos(angle);
      }
    }
  }
  EXPECT_TRUE(all_close(out, expected, 1e-5, 1e-6));
}

TEST_P(RopeTest, BackwardMatchesFiniteDifferences) {
  auto rng = rng_for_test();
  Tensor x = random_normal(shape(), rng), pos = positions(rng);
  Tensor dout = random_normal(shape(), rng), dx = Tensor::empty(shape());
  rope_backward(dx, dout, pos, kTheta);
  Tensor out = Tensor::empty(shape());
  auto loss = [&] {
    rope_forward(out, x, pos, kTheta);
    return weighted_sum(out, dout);
  };
  EXPECT_TRUE(grad_check(loss, x, dx, rng));
}

TEST_P(RopeTest, RotationProperties) {
  auto [b, t, h, hd] = GetParam();
  auto rng = rng_for_test();
  Tensor x = random_normal(shape(), rng), pos = positions(rng);
  Tensor out = Tensor::empty(shape());
  rope_forward(out, x, pos, kTheta);

  // Every head vector keeps its length.
  std::vector<float> vx = x.to_f32_vector(), vo = out.to_f32_vector();
  std::vector<double> norm_x;
  std::vector<float> norm_out;
  for (size_t v = 0; v < vx.size(); v += hd) {
    double sx = 0, so = 0;
    for (int i = 0; i < hd; ++i) {
      sx += double{vx[v + i]} * vx[v + i];
      so += double{vo[v + i]} * vo[v + i];
    }
    norm_x.push_back(std::sqrt(sx));
    norm_out.push_back(static_cast<float>(std::sqrt(so)));
  }
  EXPECT_TRUE(all_close(norm_out, norm_x, 1e-5, 1e-6));

  // Backward is the inverse rotation: applied to the output it gives back x.
  Tensor back = Tensor::empty(shape());
  rope_backward(back, out, pos, kTheta);
  EXPECT_TRUE(all_close(back, x, 1e-5, 1e-6));

  // In place (out aliases x, dx aliases dout) gives the out-of-place results bit for bit.
  Tensor in_place = x.clone();
  rope_forward(in_place, in_place, pos, kTheta);
  EXPECT_TRUE(all_close(in_place, out, 0, 0));
  rope_backward(in_place, in_place, pos, kTheta);
  EXPECT_TRUE(all_close(in_place, back, 0, 0));

  // Position 0 is the identity, exactly.
  Tensor zero_pos = Tensor::zeros({b, t}, DType::kI32);
  rope_forward(out, x, zero_pos, kTheta);
  EXPECT_TRUE(all_close(out, x, 0, 0));
}

// The table holds each angle's (cos, sin) rounded once from double, and rotating with it
// gives the positions path's results bit for bit, forward, backward and in place.
TEST_P(RopeTest, TableMatchesTheAnglesAndTheRotations) {
  auto [b, t, h, hd] = GetParam();
  auto rng = rng_for_test();
  Tensor x = random_normal(shape(), rng), pos = positions(rng);
  const Tensor table = rope_table(pos, hd, kTheta);
  ASSERT_EQ(table.shape(), (Shape{b * t, hd / 2, 2}));
  const std::vector<float> cs = table.to_f32_vector();
  const std::vector<int32_t> vp = pos.to_i32_vector();
  for (int r = 0; r < b * t; ++r) {
    for (int i = 0; i < hd / 2; ++i) {
      const double angle = vp[r] * std::pow(double{kTheta}, -2.0 * i / hd);
      ASSERT_EQ(cs[(r * hd / 2 + i) * 2], static_cast<float>(std::cos(angle))) << r << ", " << i;
      ASSERT_EQ(cs[(r * hd / 2 + i) * 2 + 1], static_cast<float>(std::sin(angle)))
          << r << ", " << i;
    }
  }
  for (bool backward : {false, true}) {
    Tensor want = Tensor::empty(shape()), got = Tensor::empty(shape()), in_place = x.clone();
    if (backward) {
      rope_backward(want, x, pos, kTheta);
      rope_backward(got, x, table);
      rope_backward(in_place, in_place, table);
    } else {
      rope_forward(want, x, pos, kTheta);
      rope_forward(got, x, table);
      rope_forward(in_place, in_place, table);
    }
    EXPECT_TRUE(all_close(got, want, 0, 0)) << "backward " << backward;
    EXPECT_TRUE(all_close(in_place, want, 0, 0)) << "in place, backward " << backward;
  }
}

TEST(RopeDeathTest, TableChecksNameWhatToFix) {
  const Tensor pos = Tensor::zeros({2, 3}, DType::kI32);
  const Tensor x = Tensor::zeros({2, 3, 4, 8}), out = Tensor::zeros({2, 3, 4, 8});
  EXPECT_DEATH(rope_table(pos, 7, kTheta), "head_dim 7; rotary pairs need an even");
  EXPECT_DEATH(rope_table(Tensor::zeros({6}, DType::kI32), 8, kTheta),
               "positions have shape \\[6\\], expected \\[B, T\\]");
  EXPECT_DEATH(rope_forward(out, x, rope_table(pos, 6, kTheta)), "rope table");
  const Tensor odd = Tensor::zeros({2, 3, 4, 7});
  EXPECT_DEATH(rope_forward(odd, odd, rope_table(pos, 6, kTheta)), "head_dim 7 is odd");
  EXPECT_DEATH(rope_backward(out, x, Tensor()), "the table is undefined \\(build it with rope_table\\)");
}

// q and k together: each rotated as alone (GQA: k has fewer heads); what must match is named.
TEST(RopeQk, EqualsEachAloneAndChecksItsInputs) {
  auto rng = rng_for_test();
  const Tensor pos = random_ints({2, 5}, 0, 4096, rng);
  const Tensor table = rope_table(pos, 8, kTheta);
  const Tensor q = random_normal({2, 5, 4, 8}, rng), k = random_normal({2, 5, 2, 8}, rng);
  for (bool backward : {false, true}) {
    const Tensor q1 = q.clone(), k1 = k.clone(), q2 = q.clone(), k2 = k.clone();
    if (backward) {
      rope_backward(q1, q1, pos, kTheta);
      rope_backward(k1, k1, pos, kTheta);
      rope_backward_qk(q2, k2, table);
    } else {
      rope_forward(q1, q1, pos, kTheta);
      rope_forward(k1, k1, pos, kTheta);
      rope_forward_qk(q2, k2, table);
    }
    EXPECT_TRUE(all_close(q2, q1, 0, 0)) << "backward " << backward;
    EXPECT_TRUE(all_close(k2, k1, 0, 0)) << "backward " << backward;
  }
  EXPECT_DEATH(rope_forward_qk(q, Tensor::zeros({2, 5, 2, 6}), table), "rope table");
  EXPECT_DEATH(rope_forward_qk(q, Tensor::zeros({2, 5, 2}), table),
               "expected \\[B, T, H, head_dim\\]");
  EXPECT_DEATH(rope_backward_qk(q, Tensor::zeros({2, 5, 2, 8}, DType::kBF16), table), "is bf16");
}

INSTANTIATE_TEST_SUITE_P(Shapes, RopeTest,
                         ::testing::Values(std::make_tuple(1, 1, 1, 2), std::make_tuple(2, 3, 4, 8),
                                           std::make_tuple(1, 5, 3, 6),
                                           std::make_tuple(3, 7, 2, 64)));

}  // namespace
}  // namespace sy
