// grouped_matmul on CUDA against the CPU op on the same random inputs: the MoE decode shapes
// (16 groups, a few rows each, N and K of the bench model), groups with no rows and with more
// rows than one block takes (64), rows past the last group left untouched (NaN stays NaN),
// the split-K path (few blocks: fp32 partials summed in slice order) and decode-sized row
// chunks, and the host-offset fallback (f32; N or K not multiples of 16). Skips without a GPU.
//
// Tolerances. bf16: inputs are bf16 on both sides, the CPU sums in f32 and rounds once; the
// GPU sums in fp32 in another order and rounds the output to bf16 (relative step 2^-8): rtol
// 2e-2, atol 2e-2 on outputs of size ~sqrt(K). f32: cuBLAS against the CPU GEMM: 1e-4.
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/grouped_matmul.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::all_close;
using testing::filled;
using testing::kNaN;
using testing::on_gpu;
using testing::random_normal;
using testing::rng_for_test;
using testing::rounded;

Tensor offsets_from_counts(const std::vector<int64_t>& counts) {
  Tensor t = Tensor::empty({static_cast<int64_t>(counts.size()) + 1}, DType::kI64);
  int64_t* p = t.data<int64_t>();
  p[0] = 0;
  for (size_t e = 0; e < counts.size(); ++e) p[e + 1] = p[e] + counts[e];
  return t;
}

void expect_matches_cpu(const std::vector<int64_t>& counts, int64_t m, int64_t n, int64_t k,
                        DType dt) {
  SCOPED_TRACE(absl::StrCat("groups ", counts.size(), " M ", m, " N ", n, " K ", k, " ",
                            dtype_name(dt)));
  auto rng = rng_for_test();
  const int64_t groups = static_cast<int64_t>(counts.size());
  const Tensor off = offsets_from_counts(counts);
  const int64_t used = off.data<int64_t>()[groups];
  ASSERT_LE(used, m);
  const Tensor x = rounded(random_normal({m, k}, rng), dt);
  const Tensor w = rounded(random_normal({groups, n, k}, rng, 1.0f / std::sqrt(float(k))), dt);
  Tensor want = filled({m, n}, kNaN);
  grouped_matmul(want, x, w, off);
  const GroupedTiling before = grouped_matmul_tiling();
  for (GroupedTiling tiling : {GroupedTiling::kWide, GroupedTiling::kAdaptive}) {
    SCOPED_TRACE(tiling == GroupedTiling::kWide ? "wide tiling" : "adaptive tiling");
    set_grouped_matmul_tiling(tiling);
    Tensor got = on_gpu(filled({m, n}, kNaN), dt);
    grouped_matmul(got, on_gpu(x, dt), on_gpu(w, dt), off.to(testing::kGpu));
    const Tensor host = got.to(Device::cpu()).to(DType::kF32);
    const double tol = dt == DType::kBF16 ? 2e-2 : 1e-4;
    if (used > 0) {
      EXPECT_TRUE(all_close(host.rows(0, used), rounded(want.rows(0, used), dt), tol, tol));
    }
    const float* p = host.data<float>();
    for (int64_t i = used * n; i < m * n; ++i) {
      ASSERT_TRUE(std::isnan(p[i])) << "element " << i << " past the last group was written";
    }
  }
  set_grouped_matmul_tiling(before);
}

TEST(GroupedMatmulGpu, DecodeShapesMatchCpu) {
  SKIP_WITHOUT_GPU();
  // 64 tokens x top-2 over 16 experts, uneven, two experts idle.
  const std::vector<int64_t> counts = {9, 0, 14, 3, 8, 8, 1, 0, 12, 7, 6, 10, 4, 11, 17, 18};
  const int64_t m = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  expect_matches_cpu(counts, m, 2 * 2816, 1024, DType::kBF16);  // w13
  expect_matches_cpu(counts, m, 1024, 2816, DType::kBF16);      // w2
}

TEST(GroupedMatmulGpu, ManyRowsEmptyGroupsAndTailsMatchCpu) {
  SKIP_WITHOUT_GPU();
  // More rows than a block (64) and than the grid's row chunks cover at once; 1..3 fragments.
  expect_matches_cpu({300, 0, 5, 64, 65, 17, 33, 49}, 600, 96, 48, DType::kBF16);
  expect_matches_cpu({0, 0, 0}, 8, 32, 32, DType::kBF16);          // no rows at all
  expect_matches_cpu({5000}, 5000, 16, 272, DType::kBF16);          // K past a staged chunk
  expect_matches_cpu({3, 4}, 10, 48, 16, DType::kBF16);             // rows left past the end
}

TEST(GroupedMatmulGpu, SplitKAndDecodeChunksMatchCpu) {
  SKIP_WITHOUT_GPU();
  // Few blocks (4 groups x one 64-column tile): K split into slices of staged chunks, the
  // last one short (2800 = 10 x 256 + 240); decode-sized chunks of 32 rows with a group of
  // 40 rows (two chunks) and rows left past the last group.
  expect_matches_cpu({40, 0, 3, 2}, 50, 64, 2800, DType::kBF16);
  expect_matches_cpu({1, 33, 0, 2, 31}, 70, 16, 512, DType::kBF16);
}

TEST(GroupedMatmulGpu, HostOffsetFallbackMatchesCpu) {
  SKIP_WITHOUT_GPU();
  EXPECT_FALSE(grouped_matmul_waits_for_nothing(testing::kGpu, DType::kF32, 64, 64));
  EXPECT_FALSE(grouped_matmul_waits_for_nothing(testing::kGpu, DType::kBF16, 24, 64));
  EXPECT_TRUE(grouped_matmul_waits_for_nothing(testing::kGpu, DType::kBF16, 64, 1024));
  expect_matches_cpu({7, 0, 9}, 20, 33, 24, DType::kF32);
  expect_matches_cpu({7, 0, 9}, 20, 24, 40, DType::kBF16);  // N not a multiple of 16
}

}  // namespace
}  // namespace sy
