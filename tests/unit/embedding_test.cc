#include "kernels/embedding.h"

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

class EmbeddingTest : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(EmbeddingTest, ForwardMatchesGatherAndBackwardMatchesFiniteDifferences) {
  auto [n, vocab, d] = GetParam();
  auto rng = rng_for_test();
  Tensor table = random_normal({vocab, d}, rng);
  Tensor ids = random_ints({n}, 0, vocab, rng);
  Tensor out = Tensor::empty({n, d});
  embedding_forward(out, ids, table);

  std::vector<double> expected;
  for (int32_t id : ids.to_i32_vector())
    for (int j = 0; j < d; ++j) expected.push_back(table.data<float>()[id * d + j]);
  EXPECT_TRUE(all_close(out, expected, 0, 0));

  // Parameter gradients accumulate: start from a non-zero gradient and check the increment.
  Tensor dout = random_normal({n, d}, rng);
  Tensor start = random_normal({vocab, d}, rng);
  Tensor dtable = start.clone();
  embedding_backward(dtable, dout, ids);
  std::vector<double> increment(vocab * d);
  std::vector<float> s = start.to_f32_vector(), g = dtable.to_f32_vector();
  for (int i = 0; i < vocab * d; ++i) increment[i] = g[i] - s[i];
  Tensor analytic =
      Tensor::from_f32(std::vector<float>(increment.begin(), increment.end()), {vocab, d});
  auto loss = [&] {
    embedding_forward(out, ids, table);
    return weighted_sum(out, dout);
  };
  EXPECT_TRUE(grad_check(loss, table, analytic, rng));
}

INSTANTIATE_TEST_SUITE_P(Shapes, EmbeddingTest,
                         ::testing::Values(std::make_tuple(1, 5, 3), std::make_tuple(7, 3, 17),
                                           std::make_tuple(64, 11, 8)));

}  // namespace
}  // namespace sy
