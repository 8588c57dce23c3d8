// matmul: values against a double triple loop written here, gradients against finite
// differences for all four transpose combinations, and the CPU fast path (BLAS or threaded
// loops) against cpu::matmul_reference on larger, odd shapes.
#include "kernels/matmul.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::all_close;
using testing::grad_check;
using testing::random_normal;
using testing::rng_for_test;
using testing::weighted_sum;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Case {
  int64_t m, k, n;
  bool trans_a, trans_b;
  Shape a_shape() const { return trans_a ? Shape{k, m} : Shape{m, k}; }
  Shape b_shape() const { return trans_b ? Shape{n, k} : Shape{k, n}; }
};

using Param = std::tuple<std::tuple<int, int, int>, bool, bool>;  // (m, k, n), trans_a, trans_b

Case make_case(const Param& param) {
  auto [mkn, trans_a, trans_b] = param;
  auto [m, k, n] = mkn;
  return {m, k, n, trans_a, trans_b};
}

// alpha op(A) op(B) + beta C0 in double (C0 unread when beta == 0).
std::vector<double> naive_gemm(const Case& c, const Tensor& a, const Tensor& b, const Tensor& c0,
                               double alpha, double beta) {
  std::vector<float> va = a.to_f32_vector(), vb = b.to_f32_vector(), vc = c0.to_f32_vector();
  std::vector<double> out(c.m * c.n);
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < c.n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < c.k; ++p) {
        double aip = c.trans_a ? va[p * c.m + i] : va[i * c.k + p];
        double bpj = c.trans_b ? vb[j * c.k + p] : vb[p * c.n + j];
        s += aip * bpj;
      }
      out[i * c.n + j] = alpha * s + (beta != 0 ? beta * vc[i * c.n + j] : 0.0);
    }
  }
  return out;
}

Tensor filled(const Shape& shape, float value) {
  Tensor t = Tensor::empty(shape);
  t.fill_(value);
  return t;
}

// after - before, elementwise: what an accumulating gradient added.
Tensor increment(const Tensor& after, const Tensor& before) {
  std::vector<float> a = after.to_f32_vector(), b = before.to_f32_vector();
  for (size_t i = 0; i < a.size(); ++i) a[i] -= b[i];
  return Tensor::from_f32(a, after.shape());
}

class MatmulTest : public ::testing::TestWithParam<Param> {};

// Short dot products (k <= 33) of N(0, 1) values: rtol 1e-5 / atol 1e-5 (worst seen 2.5e-6).
TEST_P(MatmulTest, ForwardMatchesDoubleLoop) {
  Case c = make_case(GetParam());
  auto rng = rng_for_test();
  Tensor a = random_normal(c.a_shape(), rng), b = random_normal(c.b_shape(), rng);
  Tensor c0 = random_normal({c.m, c.n}, rng);

  Tensor out = c0.clone();
  matmul(out, a, b, c.trans_a, c.trans_b, 0.7f, 0.3f);
  EXPECT_TRUE(all_close(out, naive_gemm(c, a, b, c0, 0.7, 0.3), 1e-5, 1e-5));

  out = c0.clone();
  cpu::matmul_reference(out, a, b, c.trans_a, c.trans_b, 0.7f, 0.3f);
  EXPECT_TRUE(all_close(out, naive_gemm(c, a, b, c0, 0.7, 0.3), 1e-6, 1e-6));

  // beta == 0 writes C without reading it: NaN garbage must not leak through.
  out = filled({c.m, c.n}, kNaN);
  matmul(out, a, b, c.trans_a, c.trans_b);
  EXPECT_TRUE(all_close(out, naive_gemm(c, a, b, c0, 1, 0), 1e-5, 1e-5));
}

TEST_P(MatmulTest, BackwardMatchesFiniteDifferences) {
  Case c = make_case(GetParam());
  auto rng = rng_for_test();
  Tensor a = random_normal(c.a_shape(), rng), b = random_normal(c.b_shape(), rng);
  Tensor dc = random_normal({c.m, c.n}, rng);
  Tensor out = Tensor::empty({c.m, c.n});
  auto loss = [&] {
    matmul(out, a, b, c.trans_a, c.trans_b);
    return weighted_sum(out, dc);
  };

  // dA written over garbage (beta 0), dB accumulated onto a non-zero start (beta 1).
  Tensor da = filled(a.shape(), kNaN);
  Tensor db_start = random_normal(b.shape(), rng), db = db_start.clone();
  matmul_backward(da, db, dc, a, b, c.trans_a, c.trans_b, 0.0f, 1.0f);
  EXPECT_TRUE(grad_check(loss, a, da, rng));
  EXPECT_TRUE(grad_check(loss, b, increment(db, db_start), rng));

  // The other way round, with dB undefined (skipped): dA accumulates, dB is not touched.
  Tensor da_start = random_normal(a.shape(), rng), da_acc = da_start.clone();
  matmul_backward(da_acc, Tensor(), dc, a, b, c.trans_a, c.trans_b, 1.0f, 0.0f);
  EXPECT_TRUE(grad_check(loss, a, increment(da_acc, da_start), rng));
  Tensor db_only = filled(b.shape(), kNaN);
  matmul_backward(Tensor(), db_only, dc, a, b, c.trans_a, c.trans_b);
  EXPECT_TRUE(grad_check(loss, b, db_only, rng));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MatmulTest,
    ::testing::Combine(::testing::Values(std::make_tuple(1, 1, 1), std::make_tuple(1, 9, 4),
                                         std::make_tuple(3, 7, 5), std::make_tuple(5, 1, 3),
                                         std::make_tuple(16, 33, 8)),
                       ::testing::Bool(), ::testing::Bool()));

class MatmulReferenceTest : public ::testing::TestWithParam<Param> {};

// Dot products up to k = 257 accumulate in f32 on the fast path, the reference in double:
// rtol 1e-5 / atol 1e-4 (worst seen 5e-5 absolute on entries of size ~30, BLAS and loops).
TEST_P(MatmulReferenceTest, FastPathMatchesReference) {
  Case c = make_case(GetParam());
  auto rng = rng_for_test();
  Tensor a = random_normal(c.a_shape(), rng), b = random_normal(c.b_shape(), rng);
  Tensor c0 = random_normal({c.m, c.n}, rng);
  Tensor expected = c0.clone(), out = c0.clone();
  cpu::matmul_reference(expected, a, b, c.trans_a, c.trans_b, 1.3f, 0.5f);
  matmul(out, a, b, c.trans_a, c.trans_b, 1.3f, 0.5f);
  EXPECT_TRUE(all_close(out, expected, 1e-5, 1e-4));

  cpu::matmul_reference(expected, a, b, c.trans_a, c.trans_b, 1.0f, 0.0f);
  out.fill_(kNaN);
  matmul(out, a, b, c.trans_a, c.trans_b);
  EXPECT_TRUE(all_close(out, expected, 1e-5, 1e-4));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MatmulReferenceTest,
    ::testing::Combine(::testing::Values(std::make_tuple(130, 257, 65), std::make_tuple(64, 64, 64),
                                         std::make_tuple(1, 300, 1), std::make_tuple(257, 3, 129),
                                         std::make_tuple(2, 200, 301)),
                       ::testing::Bool(), ::testing::Bool()));

TEST(MatmulEdgeTest, EmptyInnerDimensionScalesC) {
  Tensor a = Tensor::empty({3, 0}), b = Tensor::empty({0, 2});
  Tensor out = Tensor::from_f32({1, 2, 3, 4, 5, 6}, {3, 2});
  matmul(out, a, b, false, false, 1.0f, 0.5f);
  EXPECT_TRUE(all_close(out, std::vector<double>{0.5, 1, 1.5, 2, 2.5, 3}, 0, 0));
  out.fill_(kNaN);
  matmul(out, a, b, false, false);
  EXPECT_TRUE(all_close(out, std::vector<double>(6, 0.0), 0, 0));
}

}  // namespace
}  // namespace sy

namespace sy {
namespace {

// matmul_batched is the 2-D op on each matrix of the batch: bit for bit on the CPU, for every
// transpose combination, written and accumulated; its backward likewise.
TEST(MatmulBatchedTest, EachMatrixIsTheTwoDimensionalProduct) {
  auto rng = testing::rng_for_test();
  const int64_t batch = 3, m = 5, k = 7, n = 4;
  auto matrix = [](const Tensor& t, int64_t i) {
    return t.rows(i, i + 1).view({t.dim(1), t.dim(2)});
  };
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      const Tensor a = testing::random_normal(ta ? Shape{batch, k, m} : Shape{batch, m, k}, rng);
      const Tensor b = testing::random_normal(tb ? Shape{batch, n, k} : Shape{batch, k, n}, rng);
      const Tensor c0 = testing::random_normal({batch, m, n}, rng);
      const Tensor c = c0.clone();
      matmul_batched(c, a, b, ta, tb, 0.5f, 1.0f);
      const Tensor dc = testing::random_normal({batch, m, n}, rng);
      const Tensor da = Tensor::zeros(a.shape()), db = testing::random_normal(b.shape(), rng);
      const Tensor db0 = db.clone();
      matmul_backward_batched(da, db, dc, a, b, ta, tb, 0.0f, 1.0f);
      for (int64_t i = 0; i < batch; ++i) {
        const Tensor want = matrix(c0, i).clone();
        matmul(want, matrix(a, i), matrix(b, i), ta, tb, 0.5f, 1.0f);
        EXPECT_TRUE(testing::all_close(matrix(c, i), want, 0, 0)) << ta << tb << " matrix " << i;
        const Tensor want_da = Tensor::empty({a.dim(1), a.dim(2)});
        const Tensor want_db = matrix(db0, i).clone();
        matmul_backward(want_da, want_db, matrix(dc, i), matrix(a, i), matrix(b, i), ta, tb, 0.0f,
                        1.0f);
        EXPECT_TRUE(testing::all_close(matrix(da, i), want_da, 0, 0)) << ta << tb << " dA " << i;
        EXPECT_TRUE(testing::all_close(matrix(db, i), want_db, 0, 0)) << ta << tb << " dB " << i;
      }
    }
  }
}

TEST(MatmulBatchedTest, ShapeMistakesAreNamed) {
  const Tensor a = Tensor::zeros({2, 3, 4}), b = Tensor::zeros({2, 4, 5});
  EXPECT_DEATH(matmul_batched(Tensor::zeros({3, 5}), a, b, false, false),
               "matmul_batched C must be \\[batch, m, n\\]");
  EXPECT_DEATH(matmul_batched(Tensor::zeros({3, 3, 5}), a, b, false, false),
               "matmul_batched A holds 2 matrices, expected 3");
  EXPECT_DEATH(matmul_batched(Tensor::zeros({2, 3, 5}), a, Tensor::zeros({2, 5, 5}), false, false),
               "op\\(A\\) is 3 x 4");
  EXPECT_DEATH(matmul_batched(Tensor::zeros({2, 3, 6}), a, b, false, false),
               "matmul_batched C\\[i\\]");
}

}  // namespace
}  // namespace sy
