// GPU parity of the MoE router: scores (softmax, sigmoid) and top-k (bias, groups, normalise,
// scale) on CUDA against the CPU reference on the same random inputs, and two GPU runs
// against each other, bit for bit.
//
// Top-k keys are built well separated (distinct, at least ~0.5/E apart) so no float
// difference could flip a selection; the selected indices must then be identical. A second
// test uses heavily tied keys: selection is the same float arithmetic on both sides, so ties
// must go to the lower index exactly as on the CPU.
// Tolerances: scores 1e-5 relative (expf vs std::exp, sums in another order); top-k weights
// 1e-6 relative (the same operations in the same order); gradients 1e-5 relative plus
// 1e-6 of the tensor's peak (the GPU fuses multiply-adds).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <ostream>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/router.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::close_to;
using testing::kGpu;

using testing::all_close;
using testing::random_normal;
using testing::rng_for_test;

::testing::AssertionResult same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) {
    return ::testing::AssertionFailure() << "shapes or dtypes differ";
  }
  const Tensor ha = a.to(Device::cpu()), hb = b.to(Device::cpu());
  if (std::memcmp(ha.raw(), hb.raw(), ha.nbytes()) != 0) {
    return ::testing::AssertionFailure() << "contents differ";
  }
  return ::testing::AssertionSuccess();
}

// ---- scores --------------------------------------------------------------------------------

struct ScoreCase {
  int64_t n, experts;
};
void PrintTo(const ScoreCase& c, std::ostream* os) { *os << "N" << c.n << "_E" << c.experts; }

class RouterScoresGpuTest : public ::testing::TestWithParam<ScoreCase> {};

TEST_P(RouterScoresGpuTest, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  const ScoreCase c = GetParam();
  auto rng = rng_for_test();
  for (ScoreFunction fn : {ScoreFunction::kSoftmax, ScoreFunction::kSigmoid}) {
    const char* name = fn == ScoreFunction::kSoftmax ? "softmax" : "sigmoid";
    Tensor logits = random_normal({c.n, c.experts}, rng, 3.0f);
    Tensor dscores = random_normal({c.n, c.experts}, rng);
    Tensor scores = Tensor::empty(logits.shape());
    router_scores_forward(scores, logits, fn);
    Tensor dlogits = Tensor::empty(logits.shape());
    router_scores_backward(dlogits, dscores, scores, fn);

    Tensor scores_gpu = Tensor::empty(logits.shape(), DType::kF32, kGpu);
    router_scores_forward(scores_gpu, logits.to(kGpu), fn);
    EXPECT_TRUE(close_to(scores_gpu, scores, 1e-5, 1e-7)) << name << " scores";
    // The backward on the CPU's scores, so it is checked on its own.
    Tensor dlogits_gpu = random_normal(logits.shape(), rng).to(kGpu);
    router_scores_backward(dlogits_gpu, dscores.to(kGpu), scores.to(kGpu), fn);
    EXPECT_TRUE(close_to(dlogits_gpu, dlogits, 1e-5, 1e-6)) << name << " dlogits";
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, RouterScoresGpuTest,
                         ::testing::Values(ScoreCase{1, 8}, ScoreCase{5, 3}, ScoreCase{37, 64},
                                           ScoreCase{1000, 256}, ScoreCase{300, 1000}),
                         [](const ::testing::TestParamInfo<ScoreCase>& info) {
                           return ::testing::PrintToString(info.param);
                         });

// ---- top-k ---------------------------------------------------------------------------------

struct TopKCase {
  int64_t n;
  int experts, k, n_groups, topk_groups;
  bool normalize;
  float scale;
  bool bias;
};
void PrintTo(const TopKCase& c, std::ostream* os) {
  *os << "N" << c.n << "_E" << c.experts << "_k" << c.k << "_G" << c.n_groups << "_top"
      << c.topk_groups << (c.normalize ? "_norm" : "") << "_scale" << c.scale
      << (c.bias ? "_bias" : "");
}

TopKOptions options_of(const TopKCase& c) {
  TopKOptions o;
  o.k = c.k;
  o.n_groups = c.n_groups;
  o.topk_groups = c.topk_groups;
  o.normalize = c.normalize;
  o.scale = c.scale;
  return o;
}

// Scores and bias whose keys (score + bias) in each row are a random permutation of
// 0.5 + (i + 0.5 + jitter / 4) / E, i = 0..E-1: distinct, ~1/E apart, and positive scores.
struct Separated {
  Tensor scores, bias;
};
Separated separated_inputs(const TopKCase& c, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  Tensor bias;
  std::vector<float> b(c.experts, 0.0f);
  if (c.bias) {
    for (float& x : b) x = 0.2f * unit(rng) - 0.1f;
    bias = Tensor::from_f32(b, {c.experts});
  }
  std::vector<float> s(c.n * c.experts);
  std::vector<int> perm(c.experts);
  for (int64_t i = 0; i < c.n; ++i) {
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int e = 0; e < c.experts; ++e) {
      const float key = 0.5f + (perm[e] + 0.5f + 0.25f * unit(rng)) / c.experts;
      s[i * c.experts + e] = key - b[e];
    }
  }
  return {Tensor::from_f32(s, {c.n, c.experts}), bias};
}

Tensor maybe_gpu(const Tensor& t) { return t.defined() ? t.to(kGpu) : t; }

class TopKGpuTest : public ::testing::TestWithParam<TopKCase> {};

TEST_P(TopKGpuTest, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  const TopKCase c = GetParam();
  const TopKOptions o = options_of(c);
  auto rng = rng_for_test();
  const Separated in = separated_inputs(c, rng);
  Tensor indices = Tensor::empty({c.n, c.k}, DType::kI32);
  Tensor weights = Tensor::empty({c.n, c.k});
  topk_forward(indices, weights, in.scores, in.bias, o);

  Tensor indices_gpu = Tensor::empty({c.n, c.k}, DType::kI32, kGpu);
  Tensor weights_gpu = Tensor::empty({c.n, c.k}, DType::kF32, kGpu);
  topk_forward(indices_gpu, weights_gpu, in.scores.to(kGpu), maybe_gpu(in.bias), o);
  EXPECT_EQ(indices_gpu.to_i32_vector(), indices.to_i32_vector());
  EXPECT_TRUE(close_to(weights_gpu, weights, 1e-6, 0)) << "weights";

  Tensor dweights = random_normal({c.n, c.k}, rng);
  Tensor dscores = Tensor::empty(in.scores.shape());
  topk_backward(dscores, dweights, indices, in.scores, o);
  Tensor dscores_gpu = random_normal(in.scores.shape(), rng).to(kGpu);  // written, not added
  topk_backward(dscores_gpu, dweights.to(kGpu), indices.to(kGpu), in.scores.to(kGpu), o);
  EXPECT_TRUE(close_to(dscores_gpu, dscores, 1e-5, 1e-6)) << "dscores";
}

TEST_P(TopKGpuTest, TiesGoToTheLowerIndexAsOnCpu) {
  SKIP_WITHOUT_GPU();
  const TopKCase c = GetParam();
  auto rng = rng_for_test();
  // Keys from four values (and a bias from two): most keys tie with others.
  std::uniform_int_distribution<int> level(0, 3), half(0, 1);
  std::vector<float> s(c.n * c.experts), b(c.experts);
  for (float& x : s) x = 0.25f * level(rng) + 0.25f;
  for (float& x : b) x = 0.125f * half(rng);
  Tensor scores = Tensor::from_f32(s, {c.n, c.experts});
  Tensor bias = c.bias ? Tensor::from_f32(b, {c.experts}) : Tensor();
  Tensor indices = Tensor::empty({c.n, c.k}, DType::kI32);
  Tensor weights = Tensor::empty({c.n, c.k});
  topk_forward(indices, weights, scores, bias, options_of(c));
  Tensor indices_gpu = Tensor::empty({c.n, c.k}, DType::kI32, kGpu);
  Tensor weights_gpu = Tensor::empty({c.n, c.k}, DType::kF32, kGpu);
  topk_forward(indices_gpu, weights_gpu, scores.to(kGpu), maybe_gpu(bias), options_of(c));
  EXPECT_EQ(indices_gpu.to_i32_vector(), indices.to_i32_vector());
  EXPECT_TRUE(close_to(weights_gpu, weights, 1e-6, 0)) << "weights";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, TopKGpuTest,
    ::testing::Values(TopKCase{1, 8, 2, 1, 1, false, 1.0f, false},
                      TopKCase{1, 1, 1, 1, 1, true, 1.0f, false},      // one expert
                      TopKCase{37, 64, 6, 8, 3, true, 2.5f, true},     // groups
                      TopKCase{1000, 256, 8, 8, 4, true, 1.0f, true},  // DeepSeek-V3-like
                      TopKCase{13, 16, 16, 1, 1, true, 1.0f, true},    // k == E
                      TopKCase{50, 6, 3, 3, 2, false, 1.5f, true},     // groups of two
                      TopKCase{20, 12, 2, 12, 3, true, 1.0f, false},   // groups of one
                      TopKCase{7, 300, 4, 1, 1, false, 1.0f, true},    // E past 256
                      TopKCase{3, 1000, 20, 10, 5, true, 1.0f, true}),
    [](const ::testing::TestParamInfo<TopKCase>& info) {
      std::string name = ::testing::PrintToString(info.param);
      std::replace(name.begin(), name.end(), '.', 'p');
      return name;
    });

TEST(RouterGpu, RepeatsBitForBit) {
  SKIP_WITHOUT_GPU();
  const TopKCase c{500, 64, 6, 8, 3, true, 2.5f, true};
  auto rng = rng_for_test();
  const Tensor logits = random_normal({c.n, c.experts}, rng, 3.0f).to(kGpu);
  const Tensor bias = random_normal({c.experts}, rng, 0.1f).to(kGpu);
  const Tensor dweights = random_normal({c.n, c.k}, rng).to(kGpu);
  const Tensor dscores_in = random_normal({c.n, c.experts}, rng).to(kGpu);
  std::vector<Tensor> runs[2];
  for (auto& run : runs) {
    Tensor scores = Tensor::empty(logits.shape(), DType::kF32, kGpu);
    router_scores_forward(scores, logits, ScoreFunction::kSoftmax);
    Tensor indices = Tensor::empty({c.n, c.k}, DType::kI32, kGpu);
    Tensor weights = Tensor::empty({c.n, c.k}, DType::kF32, kGpu);
    topk_forward(indices, weights, scores, bias, options_of(c));
    Tensor dscores = Tensor::empty(logits.shape(), DType::kF32, kGpu);
    topk_backward(dscores, dweights, indices, scores, options_of(c));
    Tensor dlogits = Tensor::empty(logits.shape(), DType::kF32, kGpu);
    router_scores_backward(dlogits, dscores_in, scores, ScoreFunction::kSoftmax);
    run = {scores, indices, weights, dscores, dlogits};
  }
  for (size_t i = 0; i < runs[0].size(); ++i) EXPECT_TRUE(same_bits(runs[0][i], runs[1][i])) << i;
}

}  // namespace
}  // namespace sy
