// matmul on CUDA (cuBLASLt) against the CPU op on the same random inputs: all four
// transpose combinations, odd shapes and single rows, alpha/beta (beta 0 over NaN), f32 and
// bf16 inputs with f32 or bf16 output, unaligned views, k == 0, and matmul_backward (which
// composes matmul calls) with written and accumulated gradients. Skips without a GPU.
//
// Tolerances. f32 and bf16-in/f32-out: products of the (rounded) inputs are exact in fp32,
// so GPU and CPU differ only in summation order: rtol 1e-5, atol 1e-5 sqrt(k) (entries are
// sums of k N(0,1) products, of size ~sqrt(k)). bf16 out: the result is rounded to bf16
// (relative step 2^-8): rtol 1e-2, atol 1e-2.
#include <cmath>
#include <limits>
#include <tuple>

#include "gtest/gtest.h"
#include "kernels/matmul.h"
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
using testing::random_normal;
using testing::rng_for_test;

struct Case {
  int64_t m, k, n;
  bool trans_a, trans_b;
  Shape a_shape() const { return trans_a ? Shape{k, m} : Shape{m, k}; }
  Shape b_shape() const { return trans_b ? Shape{n, k} : Shape{k, n}; }
};

using Shape3 = std::tuple<int, int, int>;  // (m, k, n)
using Dtypes = std::pair<DType, DType>;    // (A and B, C): f32 inputs give an f32 C only
using Param = std::tuple<Shape3, bool, bool, Dtypes>;

Case make_case(const Param& param) {
  auto [mkn, ta, tb, dtypes] = param;
  auto [m, k, n] = mkn;
  return {m, k, n, ta, tb};
}

// (rtol, atol) for a product with inner dimension k written in `out` (see the top).
std::pair<double, double> tolerances(DType out, int64_t k) {
  if (out == DType::kBF16) return {1e-2, 1e-2};
  return {1e-5, 1e-5 * std::sqrt(static_cast<double>(k))};
}

class MatmulGpuTest : public ::testing::TestWithParam<Param> {};

TEST_P(MatmulGpuTest, ForwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const Case cs = make_case(GetParam());
  const auto [in_dtype, out_dtype] = std::get<3>(GetParam());
  const auto [rtol, atol] = tolerances(out_dtype, cs.k);
  auto rng = rng_for_test();
  Tensor a = rounded(random_normal(cs.a_shape(), rng), in_dtype);
  Tensor b = rounded(random_normal(cs.b_shape(), rng), in_dtype);
  Tensor c0 = rounded(random_normal({cs.m, cs.n}, rng), out_dtype);
  Tensor ga = on_gpu(a, in_dtype), gb = on_gpu(b, in_dtype);

  for (auto [alpha, beta] : {std::pair{1.0f, 0.0f}, {0.7f, 1.0f}, {1.3f, 0.5f}}) {
    Tensor expected = c0.clone();
    cpu::matmul(expected, a, b, cs.trans_a, cs.trans_b, alpha, beta);
    // beta == 0 must not read C: start the GPU output from NaN then.
    Tensor out = on_gpu(beta == 0.0f ? filled(c0.shape(), kNaN) : c0, out_dtype);
    matmul(out, ga, gb, cs.trans_a, cs.trans_b, alpha, beta);
    EXPECT_TRUE(all_close(out, rounded(expected, out_dtype), rtol, atol))
        << "alpha " << alpha << " beta " << beta;
  }
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  auto [mkn, ta, tb, dtypes] = info.param;
  auto [m, k, n] = mkn;
  return std::to_string(m) + "x" + std::to_string(k) + "x" + std::to_string(n) +
         (ta ? "_At" : "_A") + (tb ? "_Bt" : "_B") + "_" + dtype_name(dtypes.first) + "_to_" +
         dtype_name(dtypes.second);
}

const auto kShapes =
    ::testing::Values(Shape3{1, 1, 1}, Shape3{1, 37, 5}, Shape3{7, 13, 9}, Shape3{64, 128, 32},
                      Shape3{129, 67, 255}, Shape3{256, 1024, 384});

INSTANTIATE_TEST_SUITE_P(Shapes, MatmulGpuTest,
                         ::testing::Combine(kShapes, ::testing::Bool(), ::testing::Bool(),
                                            ::testing::Values(Dtypes{DType::kF32, DType::kF32},
                                                              Dtypes{DType::kBF16, DType::kF32},
                                                              Dtypes{DType::kBF16, DType::kBF16})),
                         param_name);

// matmul_batched (one cuBLASLt strided-batch call) against the CPU's per-matrix products:
// every transpose combination, bf16 in with bf16 and f32 out and f32, shapes whose matrix
// strides are odd numbers of elements (so the stride, not the base, bounds the alignment)
// and the expert blocks' shape; beta 0 over NaN, and beta 1 accumulating.
class MatmulBatchedGpuTest : public ::testing::TestWithParam<Param> {};

TEST_P(MatmulBatchedGpuTest, EachMatrixMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const Case cs = make_case(GetParam());
  const auto [in_dtype, out_dtype] = std::get<3>(GetParam());
  const auto [rtol, atol] = tolerances(out_dtype, cs.k);
  const int64_t batch = 5;
  auto batched = [&](const Shape& s) { return Shape{batch, s[0], s[1]}; };
  auto rng = rng_for_test();
  Tensor a = rounded(random_normal(batched(cs.a_shape()), rng), in_dtype);
  Tensor b = rounded(random_normal(batched(cs.b_shape()), rng), in_dtype);
  Tensor c0 = rounded(random_normal({batch, cs.m, cs.n}, rng), out_dtype);
  for (auto [alpha, beta] : {std::pair{1.0f, 0.0f}, {0.7f, 1.0f}}) {
    Tensor expected = c0.clone();
    matmul_batched(expected, a, b, cs.trans_a, cs.trans_b, alpha, beta);
    Tensor out = on_gpu(beta == 0.0f ? filled(c0.shape(), kNaN) : c0, out_dtype);
    matmul_batched(out, on_gpu(a, in_dtype), on_gpu(b, in_dtype), cs.trans_a, cs.trans_b, alpha,
                   beta);
    EXPECT_TRUE(all_close(out, rounded(expected, out_dtype), rtol, atol))
        << "alpha " << alpha << " beta " << beta;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MatmulBatchedGpuTest,
    ::testing::Combine(::testing::Values(Shape3{1, 1, 1}, Shape3{7, 13, 9}, Shape3{129, 67, 255},
                                         Shape3{192, 256, 352}),
                       ::testing::Bool(), ::testing::Bool(),
                       ::testing::Values(Dtypes{DType::kF32, DType::kF32},
                                         Dtypes{DType::kBF16, DType::kF32},
                                         Dtypes{DType::kBF16, DType::kBF16})),
    param_name);

// matmul_backward is two matmul calls on the same dispatch; run it on the GPU with dA an
// activation gradient (the activation dtype, written over NaN, beta 0) and dB a parameter
// gradient (f32, accumulated onto a non-zero start, beta 1).
class MatmulBackwardGpuTest : public ::testing::TestWithParam<Param> {};

TEST_P(MatmulBackwardGpuTest, BackwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const Case cs = make_case(GetParam());
  const DType dt = std::get<3>(GetParam()).first;
  auto rng = rng_for_test();
  Tensor a = rounded(random_normal(cs.a_shape(), rng), dt);
  Tensor b = rounded(random_normal(cs.b_shape(), rng), dt);
  Tensor dc = rounded(random_normal({cs.m, cs.n}, rng), dt);
  Tensor db_start = random_normal(b.shape(), rng);
  Tensor da = filled(a.shape(), kNaN), db = db_start.clone();
  matmul_backward(da, db, dc, a, b, cs.trans_a, cs.trans_b, 0.0f, 1.0f);

  Tensor gda = on_gpu(filled(a.shape(), kNaN), dt), gdb = db_start.to(kGpu);
  matmul_backward(gda, gdb, on_gpu(dc, dt), on_gpu(a, dt), on_gpu(b, dt), cs.trans_a, cs.trans_b,
                  0.0f, 1.0f);
  // dA sums over n terms and is rounded to dt; dB sums over m terms and stays f32.
  const bool bf16 = dt == DType::kBF16;
  EXPECT_TRUE(all_close(gda, rounded(da, dt), bf16 ? 1e-2 : 1e-5,
                        bf16 ? 1e-2 : 1e-5 * std::sqrt(static_cast<double>(cs.n))));
  EXPECT_TRUE(all_close(gdb, db, 1e-5, 1e-5 * std::sqrt(static_cast<double>(cs.m)) + 1e-5));
}

INSTANTIATE_TEST_SUITE_P(Shapes, MatmulBackwardGpuTest,
                         ::testing::Combine(kShapes, ::testing::Bool(), ::testing::Bool(),
                                            ::testing::Values(Dtypes{DType::kF32, DType::kF32},
                                                              Dtypes{DType::kBF16, DType::kBF16})),
                         param_name);

TEST(MatmulGpuEdgeTest, UnalignedViewsMatchCpu) {
  SKIP_WITHOUT_GPU();
  auto rng = rng_for_test();
  // Rows of 13 floats: the view starting at row 1 is 52 bytes past a 256-byte boundary.
  Tensor a_base = random_normal({41, 13}, rng), b_base = random_normal({14, 29}, rng);
  Tensor a = a_base.rows(1, 41), b = b_base.rows(1, 14);
  Tensor expected = Tensor::empty({40, 29});
  cpu::matmul(expected, a, b, false, false, 1.0f, 0.0f);
  Tensor c_base = Tensor::zeros({41, 29}, DType::kF32, kGpu);
  Tensor out = c_base.rows(1, 41);
  matmul(out, a_base.to(kGpu).rows(1, 41), b_base.to(kGpu).rows(1, 14), false, false);
  EXPECT_TRUE(all_close(out, expected, 1e-5, 1e-4));
}

TEST(MatmulGpuEdgeTest, EmptyInnerDimensionAndZeroAlphaScaleC) {
  SKIP_WITHOUT_GPU();
  Tensor a = Tensor::empty({3, 0}, DType::kF32, kGpu), b = Tensor::empty({0, 2}, DType::kF32, kGpu);
  Tensor out = Tensor::from_f32({1, 2, 3, 4, 5, 6}, {3, 2}).to(kGpu);
  matmul(out, a, b, false, false, 1.0f, 0.5f);
  EXPECT_TRUE(all_close(out, std::vector<double>{0.5, 1, 1.5, 2, 2.5, 3}, 0, 0));
  out.copy_from(filled({3, 2}, kNaN));
  matmul(out, a, b, false, false);
  EXPECT_TRUE(all_close(out, std::vector<double>(6, 0.0), 0, 0));

  auto rng = rng_for_test();
  Tensor x = random_normal({3, 4}, rng).to(kGpu), y = random_normal({4, 2}, rng).to(kGpu);
  out.copy_from(Tensor::from_f32({1, 2, 3, 4, 5, 6}, {3, 2}));
  matmul(out, x, y, false, false, 0.0f, 2.0f);
  EXPECT_TRUE(all_close(out, std::vector<double>{2, 4, 6, 8, 10, 12}, 0, 0));
}

TEST(MatmulGpuEdgeTest, SameShapeTwiceUsesCachedAlgorithmAndStaysCorrect) {
  SKIP_WITHOUT_GPU();
  auto rng = rng_for_test();
  for (int rep = 0; rep < 3; ++rep) {
    Tensor a = random_normal({33, 17}, rng), b = random_normal({17, 5}, rng);
    Tensor expected = Tensor::empty({33, 5});
    cpu::matmul(expected, a, b, false, false, 1.0f, 0.0f);
    Tensor out = Tensor::empty({33, 5}, DType::kF32, kGpu);
    matmul(out, a.to(kGpu), b.to(kGpu), false, false);
    EXPECT_TRUE(all_close(out, expected, 1e-5, 1e-4)) << "repetition " << rep;
  }
}

}  // namespace
}  // namespace sy
