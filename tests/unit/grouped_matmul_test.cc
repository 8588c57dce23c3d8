// grouped_matmul on the CPU against a direct triple loop: groups of 0, 1 and many rows, rows
// past the last group left untouched, and refusals of bad shapes and offsets.
#include "gtest/gtest.h"
#include "kernels/grouped_matmul.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::random_normal;
using testing::rng_for_test;

Tensor offsets_of(const std::vector<int64_t>& off) {
  Tensor t = Tensor::empty({static_cast<int64_t>(off.size())}, DType::kI64);
  std::copy(off.begin(), off.end(), t.data<int64_t>());
  return t;
}

TEST(GroupedMatmul, MatchesLoopsPerGroup) {
  auto rng = rng_for_test();
  const int64_t m = 40, k = 7, n = 5;
  const std::vector<int64_t> off = {0, 3, 3, 20, 21, 33};  // rows 33..39 belong to no group
  const int64_t groups = static_cast<int64_t>(off.size()) - 1;
  Tensor x = random_normal({m, k}, rng), w = random_normal({groups, n, k}, rng);
  Tensor y = Tensor::empty({m, n});
  y.fill_(42.0f);
  grouped_matmul(y, x, w, offsets_of(off));
  const float *px = x.data<float>(), *pw = w.data<float>(), *py = y.data<float>();
  for (int64_t e = 0; e < groups; ++e) {
    for (int64_t r = off[e]; r < off[e + 1]; ++r) {
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t i = 0; i < k; ++i) s += double(px[r * k + i]) * pw[(e * n + j) * k + i];
        EXPECT_NEAR(py[r * n + j], s, 1e-5) << "group " << e << " row " << r << " col " << j;
      }
    }
  }
  for (int64_t r = off.back(); r < m; ++r) {
    for (int64_t j = 0; j < n; ++j) EXPECT_EQ(py[r * n + j], 42.0f) << "row " << r;
  }
}

TEST(GroupedMatmul, RefusesBadArguments) {
  auto rng = rng_for_test();
  Tensor x = random_normal({6, 4}, rng), w = random_normal({2, 3, 4}, rng);
  Tensor y = Tensor::empty({6, 3});
  EXPECT_DEATH(grouped_matmul(y, x, random_normal({2, 3, 5}, rng), offsets_of({0, 1, 2})),
               "disagree on K");
  EXPECT_DEATH(grouped_matmul(y, x, w, offsets_of({0, 1})), "offsets");
  EXPECT_DEATH(grouped_matmul(y, x, w, offsets_of({0, 4, 2})), "not non-decreasing");
  EXPECT_DEATH(grouped_matmul(y, x, w, offsets_of({0, 4, 7})), "not non-decreasing");
  EXPECT_DEATH(grouped_matmul(Tensor::empty({6, 2}), x, w, offsets_of({0, 1, 2})),
               "grouped_matmul y");
}

}  // namespace
}  // namespace sy
