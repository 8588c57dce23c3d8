// embedding on CUDA against the CPU op on the same random inputs, for table/out dtypes f32
// and bf16, odd widths, a single token, and ids that repeat many times (the backward's
// sorted, per-id summation). The forward is exact: it copies (and rounds to the output
// dtype as the CPU path's result is rounded here). The backward adds each id's rows in
// position order but in pieces of 32 sorted slots, then the pieces in order: f32 sums
// grouped differently from the CPU loop, so rtol 1e-5 with atol 1e-4 (sums of up to 5000
// unit normals: rounding ~ sqrt(n) * 2^-24 * |sum| << 1e-4); and bitwise equal run to run.
// Skips without a GPU.
#include <limits>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/embedding.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::filled;
using testing::kGpu;
using testing::kNaN;
using testing::on_gpu;
using testing::rounded;

using testing::all_close;
using testing::random_ints;
using testing::random_normal;
using testing::rng_for_test;

// tokens N, vocab V, width D
using Size = std::tuple<int, int, int>;
using Param = std::tuple<Size, DType, DType>;  // size, table (and dout) dtype, out dtype

class EmbeddingGpuTest : public ::testing::TestWithParam<Param> {};

TEST_P(EmbeddingGpuTest, ForwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  auto [size, table_dtype, out_dtype] = GetParam();
  auto [n, vocab, d] = size;
  auto rng = rng_for_test();
  Tensor ids = random_ints({n}, 0, vocab, rng);
  Tensor table = rounded(random_normal({vocab, d}, rng), table_dtype);
  Tensor expected = Tensor::empty({n, d});
  embedding_forward(expected, ids, table);
  Tensor out = on_gpu(filled({n, d}, kNaN), out_dtype);
  embedding_forward(out, ids.to(kGpu), on_gpu(table, table_dtype));
  EXPECT_TRUE(all_close(out, rounded(expected, out_dtype), 0, 0));
}

TEST_P(EmbeddingGpuTest, BackwardAccumulatesLikeCpu) {
  SKIP_WITHOUT_GPU();
  auto [size, dout_dtype, unused] = GetParam();
  auto [n, vocab, d] = size;
  auto rng = rng_for_test();
  Tensor ids = random_ints({n}, 0, vocab, rng);
  Tensor dout = rounded(random_normal({n, d}, rng), dout_dtype);
  Tensor start = random_normal({vocab, d}, rng);  // a parameter gradient accumulates
  Tensor expected = start.clone();
  embedding_backward(expected, dout, ids);
  Tensor dtable = start.to(kGpu);
  embedding_backward(dtable, on_gpu(dout, dout_dtype), ids.to(kGpu));
  EXPECT_TRUE(all_close(dtable, expected, 1e-5, 1e-4));
  Tensor again = start.to(kGpu);
  embedding_backward(again, on_gpu(dout, dout_dtype), ids.to(kGpu));
  EXPECT_TRUE(all_close(again, dtable, 0, 0)) << "two runs differ";
  // Twice: the second call adds on top of the first.
  embedding_backward(expected, dout, ids);
  embedding_backward(dtable, on_gpu(dout, dout_dtype), ids.to(kGpu));
  EXPECT_TRUE(all_close(dtable, expected, 1e-5, 1e-4));
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  auto [size, table_dtype, out_dtype] = info.param;
  auto [n, vocab, d] = size;
  return absl::StrCat("N", n, "_V", vocab, "_D", d, "_", dtype_name(table_dtype), "_",
                      dtype_name(out_dtype));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, EmbeddingGpuTest,
    ::testing::Combine(::testing::Values(Size{1, 1, 1}, Size{1, 50, 7}, Size{37, 50, 64},
                                         Size{300, 5, 129}, Size{2048, 1000, 96}, Size{4096, 3, 1}),
                       ::testing::Values(DType::kF32, DType::kBF16),
                       ::testing::Values(DType::kF32, DType::kBF16)),
    param_name);

TEST(EmbeddingGpuEdgeTest, AllTokensTheSameId) {
  SKIP_WITHOUT_GPU();
  auto rng = rng_for_test();
  Tensor ids = Tensor::from_i32(std::vector<int32_t>(5000, 2), {5000});
  Tensor dout = random_normal({5000, 33}, rng);
  Tensor start = random_normal({4, 33}, rng), expected = start.clone();
  embedding_backward(expected, dout, ids);
  Tensor dtable = start.to(kGpu);
  embedding_backward(dtable, dout.to(kGpu), ids.to(kGpu));
  EXPECT_TRUE(all_close(dtable, expected, 1e-5, 1e-4));
}

}  // namespace
}  // namespace sy
