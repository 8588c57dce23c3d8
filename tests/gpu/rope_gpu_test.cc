// Rotary embedding on CUDA against the CPU op on the same random inputs and positions (up
// to 8192, where an f32 angle would already be visibly off), for the smallest head, odd
// head counts and lengths, f32 and bf16, out-of-place and in place (out aliasing x), forward
// and backward, with the op's own angles and with a table from rope_table (the same bits).
// The shapes reach both paths of kernels/cuda/rope.cu: the vector kernels
// (hd/2 a whole number of 16-byte vectors: 8 bf16 or 4 f32; heads 64 and 128, one vector
// of pairs a thread (hd 16 bf16, 8 f32), head counts that are and are not multiples of the
// 4 heads a thread rotates, 4096 tokens of one sequence) and the scalar kernel (other head
// sizes, and x or out starting off a 16-byte boundary). Skips without a GPU.
//
// Tolerances. f32: both sides form angles, cosines and sines in double and rotate in fp32
// (the GPU may fuse a multiply-add): rtol 1e-5, atol 1e-5 on O(1) values. bf16: outputs are
// rounded to bf16 (relative step 2^-8): rtol 1e-2, atol 1e-2.
#include <cstring>
#include <string>
#include <limits>
#include <tuple>

#include "gtest/gtest.h"
#include "kernels/rope.h"
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
using testing::random_ints;
using testing::random_normal;
using testing::rng_for_test;

// Forward and backward, out of place and in place, against the CPU; with shift_x / shift_out
// the input / output starts one element into its buffer (in place: the one tensor does).
void expect_matches_cpu(const Shape& shape, DType dt, bool shift_x, bool shift_out) {
  const bool bf16 = dt == DType::kBF16;
  const double rtol = bf16 ? 1e-2 : 1e-5, atol = bf16 ? 1e-2 : 1e-5;
  constexpr float kTheta = 10000.0f;
  auto rng = rng_for_test();
  Tensor x = rounded(random_normal(shape, rng), dt);
  Tensor positions = random_ints({shape[0], shape[1]}, 0, 8192, rng);
  Tensor gpos = positions.to(kGpu);

  for (bool backward : {false, true}) {
    Tensor expected = Tensor::empty(shape);
    if (backward) {
      rope_backward(expected, x, positions, kTheta);
    } else {
      rope_forward(expected, x, positions, kTheta);
    }
    Tensor out = on_gpu_shifted(filled(shape, kNaN), dt, shift_out);
    Tensor in_place = on_gpu_shifted(x, dt, shift_x || shift_out);
    if (backward) {
      rope_backward(out, on_gpu_shifted(x, dt, shift_x), gpos, kTheta);
      rope_backward(in_place, in_place, gpos, kTheta);
    } else {
      rope_forward(out, on_gpu_shifted(x, dt, shift_x), gpos, kTheta);
      rope_forward(in_place, in_place, gpos, kTheta);
    }
    EXPECT_TRUE(all_close(out, rounded(expected, dt), rtol, atol)) << "backward " << backward;
    EXPECT_TRUE(all_close(in_place, rounded(expected, dt), rtol, atol))
        << "in place, backward " << backward;

    // With a table built once (rope_table): the op's own results, bit for bit.
    const Tensor table = rope_table(gpos, shape[3], kTheta);
    Tensor with_table = on_gpu_shifted(filled(shape, kNaN), dt, shift_out);
    Tensor table_in_place = on_gpu_shifted(x, dt, shift_x || shift_out);
    if (backward) {
      rope_backward(with_table, on_gpu_shifted(x, dt, shift_x), table);
      rope_backward(table_in_place, table_in_place, table);
    } else {
      rope_forward(with_table, on_gpu_shifted(x, dt, shift_x), table);
      rope_forward(table_in_place, table_in_place, table);
    }
    EXPECT_TRUE(all_close(with_table, out, 0, 0)) << "table, backward " << backward;
    EXPECT_TRUE(all_close(table_in_place, in_place, 0, 0))
        << "table in place, backward " << backward;
  }
  // The table itself against the CPU's: both round double cosines and sines once; the two
  // libraries' double results may differ in their last bit, so allow one float ulp.
  EXPECT_TRUE(all_close(rope_table(gpos, shape[3], kTheta), rope_table(positions, shape[3], kTheta),
                        0, 1.2e-7));
}

using Param = std::tuple<Shape, DType>;  // [B, T, H, hd], dtype

class RopeGpuTest : public ::testing::TestWithParam<Param> {};

TEST_P(RopeGpuTest, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  auto [shape, dt] = GetParam();
  expect_matches_cpu(shape, dt, false, false);
}

// x, out, or the one tensor in place, off a 16-byte boundary on a shape that would otherwise
// take the vector kernel: the op must see it and take the scalar one.
class RopeMisalignedGpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(RopeMisalignedGpuTest, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  expect_matches_cpu({2, 9, 3, 64}, GetParam(), true, false);
  expect_matches_cpu({2, 9, 3, 64}, GetParam(), false, true);
}

INSTANTIATE_TEST_SUITE_P(Views, RopeMisalignedGpuTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(dtype_name(info.param));
                         });

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  auto [shape, dt] = info.param;
  std::string name;
  for (int64_t s : shape) name += std::to_string(s) + "x";
  name.pop_back();
  return name + "_" + dtype_name(dt);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RopeGpuTest,
    ::testing::Combine(::testing::Values(Shape{1, 1, 1, 2}, Shape{2, 7, 3, 8}, Shape{1, 33, 4, 64},
                                         Shape{2, 5, 2, 6}, Shape{3, 129, 5, 128},
                                         Shape{3, 11, 9, 16}, Shape{2, 33, 8, 64},
                                         Shape{1, 19, 17, 128}, Shape{2, 5, 1, 4},
                                         Shape{1, 4096, 3, 128}, Shape{2, 2048, 16, 64},
                                         // hd over 4096: angles without shared memory (f32:
                                         // the vector rotation; bf16: the scalar one).
                                         Shape{1, 3, 2, 8200}),
                       ::testing::Values(DType::kF32, DType::kBF16)),
    param_name);

// An attention's q and k rotated together (rope_forward_qk / rope_backward_qk: one launch of
// the vector kernel where both can take it) give the bits of rotating each alone, for MHA and
// GQA head counts (k's threads start where q's end, mid-block), head counts that are not
// multiples of 4, and a head size that takes the scalar kernel (two launches then).
TEST(RopeGpu, QAndKTogetherEqualEachAlone) {
  SKIP_WITHOUT_GPU();
  constexpr float kTheta = 10000.0f;
  struct QkCase {
    int64_t b, t, heads, kv_heads, hd;
  };
  for (const QkCase& c : {QkCase{2, 2048, 16, 16, 64}, QkCase{3, 37, 8, 2, 64},
                          QkCase{1, 19, 17, 5, 128}, QkCase{2, 9, 3, 1, 16},
                          QkCase{2, 5, 4, 2, 6}}) {
    for (DType dt : {DType::kF32, DType::kBF16}) {
      auto rng = rng_for_test();
      const Tensor q = on_gpu(random_normal({c.b, c.t, c.heads, c.hd}, rng), dt);
      const Tensor k = on_gpu(random_normal({c.b, c.t, c.kv_heads, c.hd}, rng), dt);
      const Tensor table =
          rope_table(random_ints({c.b, c.t}, 0, 8192, rng).to(kGpu), c.hd, kTheta);
      for (bool backward : {false, true}) {
        const Tensor q1 = q.clone(), k1 = k.clone(), q2 = q.clone(), k2 = k.clone();
        if (backward) {
          rope_backward(q1, q1, table);
          rope_backward(k1, k1, table);
          rope_backward_qk(q2, k2, table);
        } else {
          rope_forward(q1, q1, table);
          rope_forward(k1, k1, table);
          rope_forward_qk(q2, k2, table);
        }
        const std::string what = std::string(dtype_name(dt)) + " H" + std::to_string(c.heads) +
                                 " Hkv" + std::to_string(c.kv_heads) + " hd" +
                                 std::to_string(c.hd) + " backward " + std::to_string(backward);
        EXPECT_TRUE(all_close(q2, q1, 0, 0)) << "q, " << what;
        EXPECT_TRUE(all_close(k2, k1, 0, 0)) << "k, " << what;
        EXPECT_FALSE(all_close(q2, q, 0, 0)) << "q was not rotated, " << what;
      }
    }
  }
}

}  // namespace
}  // namespace sy
