// Elementwise glue on CUDA against the CPU ops on the same random inputs, f32 and bf16:
// add (also in place, as add_), scale_, fill_, concat_cols / split_cols with odd widths, and
// sum_squares (double on both sides), plus one tensor of more than 2^31 elements to prove
// the grid-stride launches cover it. add takes 16-byte vectors when out, a and b are
// 16-byte aligned: sizes with and without a tail of fewer than 8 (bf16) or 4 (f32)
// elements, sizes under one vector, out aliasing a or b, and operands that start off a
// 16-byte boundary (so the scalar kernel runs) are each checked. Skips without a GPU.
//
// Tolerances. add, scale_, concat, split: one fp32 operation (or a copy) per element, then
// the same rounding to the dtype: exact (0). sum_squares: double sums in a different order:
// rtol 1e-10 (positive terms; the bound on N of them is N 2^-53).
//
// sum_squares_each, many tensors in one call (two launches for all): f32 and bf16 mixed, sizes
// around its chunks (65536 elements) and vector widths, empty tensors, views that start off 16
// bytes. Against the CPU's double sums: rtol 1e-9 (each side off by at most N 2^-53 relative,
// 1.2e-10 for the largest N, 2^20). Bit for bit: a second run, the same values at aligned
// addresses, each tensor alone (sum_squares), and the sums left in device memory.
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/elementwise.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::filled;
using testing::kGpu;
using testing::kNaN;
using testing::on_gpu;
using testing::on_gpu_shifted;
using testing::rounded;

using testing::all_close;
using testing::random_normal;
using testing::rng_for_test;

using Param = std::tuple<std::pair<int, int>, DType>;  // (rows, cols), dtype

class ElementwiseGpuTest : public ::testing::TestWithParam<Param> {
 protected:
  int64_t rows() const { return std::get<0>(GetParam()).first; }
  int64_t cols() const { return std::get<0>(GetParam()).second; }
  DType dt() const { return std::get<1>(GetParam()); }
};

TEST_P(ElementwiseGpuTest, AddAndScaleMatchCpu) {
  SKIP_WITHOUT_GPU();
  auto rng = rng_for_test();
  const Shape shape{rows(), cols()};
  Tensor a = rounded(random_normal(shape, rng), dt()), b = rounded(random_normal(shape, rng), dt());
  Tensor sum = Tensor::empty(shape);
  add(sum, a, b);
  Tensor ga = on_gpu(a, dt()), gb = on_gpu(b, dt()), gsum = on_gpu(filled(shape, kNaN), dt());
  add(gsum, ga, gb);
  EXPECT_TRUE(all_close(gsum, rounded(sum, dt()), 0, 0));

  add_(ga, gb);  // in place: out aliases a
  EXPECT_TRUE(all_close(ga, rounded(sum, dt()), 0, 0));

  Tensor scaled = rounded(sum, dt()).clone();
  scale_(scaled, -0.37f);
  scale_(ga, -0.37f);
  EXPECT_TRUE(all_close(ga, rounded(scaled, dt()), 0, 0));

  Tensor filled_cpu = scaled.clone();
  fill_(filled_cpu, 0.3f);
  fill_(ga, 0.3f);
  EXPECT_TRUE(all_close(ga, rounded(filled_cpu, dt()), 0, 0));
  EXPECT_EQ(filled_cpu.to_f32_vector().back(), 0.3f);
}

TEST_P(ElementwiseGpuTest, ConcatAndSplitMatchCpu) {
  SKIP_WITHOUT_GPU();
  auto rng = rng_for_test();
  const int64_t n = rows(), ca = cols(), cb = cols() / 2 + 3;
  Tensor a = rounded(random_normal({n, ca}, rng), dt());
  Tensor b = rounded(random_normal({n, cb}, rng), dt());
  Tensor cat = Tensor::empty({n, ca + cb});
  concat_cols(cat, a, b);
  Tensor gcat = on_gpu(filled({n, ca + cb}, kNaN), dt());
  concat_cols(gcat, on_gpu(a, dt()), on_gpu(b, dt()));
  EXPECT_TRUE(all_close(gcat, cat, 0, 0));

  Tensor d = rounded(random_normal({n, ca + cb}, rng), dt());
  Tensor da = Tensor::empty({n, ca}), db = Tensor::empty({n, cb});
  split_cols(da, db, d);
  Tensor gda = on_gpu(filled({n, ca}, kNaN), dt()), gdb = on_gpu(filled({n, cb}, kNaN), dt());
  split_cols(gda, gdb, on_gpu(d, dt()));
  EXPECT_TRUE(all_close(gda, da, 0, 0));
  EXPECT_TRUE(all_close(gdb, db, 0, 0));
}

TEST_P(ElementwiseGpuTest, SumSquaresMatchesCpu) {
  SKIP_WITHOUT_GPU();
  auto rng = rng_for_test();
  Tensor x = rounded(random_normal({rows(), cols()}, rng, 3.0f), dt());
  const double expected = sum_squares(x);
  const double got = sum_squares(on_gpu(x, dt()));
  EXPECT_NEAR(got, expected, 1e-10 * expected);
  EXPECT_EQ(got, sum_squares(on_gpu(x, dt()))) << "two runs differ";
}

TEST(SumSquaresEachGpuTest, ManyTensorsMatchCpuBitForBitAcrossRunsAlignmentAndCalls) {
  SKIP_WITHOUT_GPU();
  auto rng = rng_for_test();
  struct Spec {
    int64_t n;
    DType dtype;
    int64_t shift;  // elements into a longer buffer: 4 or 2 bytes each, off 16 unless 0
  };
  constexpr DType kF32 = DType::kF32, kBF16 = DType::kBF16;
  // Empty tensors among the others and last.
  std::vector<Spec> specs = {{1, kF32, 0},
                             {0, kF32, 0},
                             {3, kBF16, 0},
                             {7, kF32, 1},
                             {0, kBF16, 0},
                             {1000, kBF16, 1},
                             {65535, kF32, 0},
                             {65536, kBF16, 0},
                             {65537, kF32, 3},
                             {65537, kBF16, 5},
                             {300001, kF32, 1},
                             {(1 << 20) + 7, kBF16, 0},
                             {(1 << 20) + 5, kF32, 2},
                             {0, kF32, 0}};
  // Many small tensors, as a model's norms: many table entries of one partial chunk each.
  for (int64_t i = 0; i < 40; ++i) specs.push_back({2 * i + 1, i % 2 ? kBF16 : kF32, i % 3});
  std::vector<Tensor> shifted, aligned;
  std::vector<double> expected;
  for (const Spec& s : specs) {
    const Tensor x = rounded(random_normal({s.n}, rng, 3.0f), s.dtype);
    expected.push_back(sum_squares(x));  // the CPU: double, in index order
    shifted.push_back(on_gpu_shifted(x, s.dtype, s.shift));
    aligned.push_back(on_gpu(x, s.dtype));
  }
  const std::vector<double> got = sum_squares_each(shifted);
  ASSERT_EQ(got.size(), specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const std::string where = "tensor " + std::to_string(i) + ": " + std::to_string(specs[i].n) +
                              " " + dtype_name(specs[i].dtype) + " shifted by " +
                              std::to_string(specs[i].shift);
    EXPECT_NEAR(got[i], expected[i], 1e-9 * expected[i]) << where;
    if (specs[i].n == 0) {
      EXPECT_EQ(got[i], 0.0) << where;
    }
    EXPECT_EQ(sum_squares(shifted[i]), got[i]) << "alone, " << where;
  }
  EXPECT_EQ(sum_squares_each(shifted), got) << "a second run differs";
  EXPECT_EQ(sum_squares_each(aligned), got) << "the sums depend on alignment";
#ifdef SWITCHYARD_HAVE_CUDA
  // 8-byte slots on the GPU, read back as doubles.
  const Tensor out = Tensor::empty({static_cast<int64_t>(specs.size())}, DType::kI64, kGpu);
  cuda::sum_squares_each(shifted, static_cast<double*>(out.raw()));
  const Tensor host = out.to(Device::cpu());
  std::vector<double> left_on_gpu(specs.size());
  std::memcpy(left_on_gpu.data(), host.raw(), specs.size() * sizeof(double));
  EXPECT_EQ(left_on_gpu, got) << "the device-memory form differs";
#endif
}

// cast: f32 -> bf16 must round exactly as the CPU does (nearest even), bf16 -> f32 is exact.
TEST_P(ElementwiseGpuTest, CastMatchesCpu) {
  SKIP_WITHOUT_GPU();
  auto rng = rng_for_test();
  const Shape shape{rows(), cols()};
  Tensor x = random_normal(shape, rng, 5.0f);
  Tensor down = Tensor::empty(shape, DType::kBF16);
  cast(down, x);
  Tensor gdown = Tensor::empty(shape, DType::kBF16, kGpu);
  cast(gdown, on_gpu(x, DType::kF32));
  EXPECT_TRUE(all_close(gdown, down, 0, 0));
  Tensor gup = on_gpu(filled(shape, kNaN), DType::kF32);
  cast(gup, gdown);
  EXPECT_TRUE(all_close(gup, x.to(DType::kBF16).to(DType::kF32), 0, 0));
  Tensor gsame = on_gpu(filled(shape, kNaN), dt());
  cast(gsame, on_gpu(x, dt()));
  EXPECT_TRUE(all_close(gsame, rounded(x, dt()), 0, 0));
}

// add on 1-D views: each of out, a and b either at the start of its buffer (16-byte
// aligned) or one element in (a bit of `shifted` each), and out either its own tensor or a
// or b itself.
constexpr int kShiftB = 1, kShiftA = 2, kShiftOut = 4;
enum class Out { kOwn, kA, kB };
using AddParam = std::tuple<int64_t, int, Out, DType>;  // n, shifted, out, dtype

class AddViewsGpuTest : public ::testing::TestWithParam<AddParam> {};

TEST_P(AddViewsGpuTest, MatchesCpu) {
  SKIP_WITHOUT_GPU();
  auto [n, shifted, out, dt] = GetParam();
  auto rng = rng_for_test();
  Tensor a = rounded(random_normal({n}, rng), dt), b = rounded(random_normal({n}, rng), dt);
  Tensor sum = Tensor::empty({n});
  add(sum, a, b);
  Tensor ga = on_gpu_shifted(a, dt, (shifted & kShiftA) ? 1 : 0);
  Tensor gb = on_gpu_shifted(b, dt, (shifted & kShiftB) ? 1 : 0);
  Tensor gout = out == Out::kA ? ga
                : out == Out::kB
                    ? gb
                    : on_gpu_shifted(filled({n}, kNaN), dt, (shifted & kShiftOut) ? 1 : 0);
  add(gout, ga, gb);
  EXPECT_TRUE(all_close(gout, rounded(sum, dt), 0, 0));
}

std::string add_param_name(const ::testing::TestParamInfo<AddParam>& info) {
  static const char* const kOut[] = {"own", "a", "b"};
  auto [n, shifted, out, dt] = info.param;
  return std::to_string(n) + "_shifted" + std::to_string(shifted) + "_out_" +
         kOut[static_cast<int>(out)] + "_" + dtype_name(dt);
}

// Sizes: under one vector (1, 3), whole vectors (8, 4096, 2^20 + 16), whole vectors and a
// tail (13, 1001, 2^20 + 7). Shifts: none (the vector kernel) and out, a or b alone off a
// 16-byte boundary (the scalar kernel); out aliasing a or b on both.
INSTANTIATE_TEST_SUITE_P(Views, AddViewsGpuTest,
                         ::testing::Combine(::testing::Values(int64_t{1}, int64_t{3}, int64_t{8},
                                                              int64_t{13}, int64_t{1001},
                                                              int64_t{4096}, (int64_t{1} << 20) + 7,
                                                              (int64_t{1} << 20) + 16),
                                            ::testing::Values(0, kShiftB, kShiftA, kShiftOut),
                                            ::testing::Values(Out::kOwn, Out::kA, Out::kB),
                                            ::testing::Values(DType::kF32, DType::kBF16)),
                         add_param_name);

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  auto [size, dt] = info.param;
  return std::to_string(size.first) + "x" + std::to_string(size.second) + "_" + dtype_name(dt);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ElementwiseGpuTest,
    ::testing::Combine(::testing::Values(std::pair{1, 1}, std::pair{1, 17}, std::pair{7, 33},
                                         std::pair{300, 1001}, std::pair{2048, 1024},
                                         std::pair{16384, 1024}, std::pair{4099, 1027}),
                       ::testing::Values(DType::kF32, DType::kBF16)),
    param_name);

// 2^31 + 17 bf16 elements (4 GiB): more than a 32-bit index and more than one pass of the
// capped grid. Every element is 1, scaled to 2; the sum of squares is then 4 n exactly.
TEST(ElementwiseGpuLargeTest, GridStrideCoversMoreThanTwoToThe31Elements) {
  SKIP_WITHOUT_GPU();
  const int64_t n = (int64_t{1} << 31) + 17;
  Tensor ones = Tensor::empty({n});
  ones.fill_(1.0f);
  Tensor x = ones.to(DType::kBF16).to(kGpu);
  ones = Tensor();
  scale_(x, 2.0f);
  EXPECT_EQ(sum_squares(x), 4.0 * static_cast<double>(n));
}

}  // namespace
}  // namespace sy
