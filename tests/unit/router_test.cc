// MoE router: softmax / sigmoid scores against a double reference and finite differences;
// top-k selection against a brute-force sort (key descending, index ascending), hand-built
// cases for group-limited routing, bias and exact ties, and the weight gradient against finite
// differences on well-separated scores (so a perturbation never changes the selection).
#include "kernels/router.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::all_close;
using testing::grad_check;
using testing::GradCheckOptions;
using testing::random_normal;
using testing::rng_for_test;
using testing::weighted_sum;

// ---- scores --------------------------------------------------------------------------------

struct ScoresCase {
  int64_t n, experts;
  ScoreFunction fn;
};

void PrintTo(const ScoresCase& c, std::ostream* os) {
  *os << (c.fn == ScoreFunction::kSoftmax ? "Softmax" : "Sigmoid") << "_N" << c.n << "_E"
      << c.experts;
}

class RouterScoresTest : public ::testing::TestWithParam<ScoresCase> {};

TEST_P(RouterScoresTest, ForwardMatchesReferenceAndBackwardMatchesFiniteDifferences) {
  const auto [n, experts, fn] = GetParam();
  auto rng = rng_for_test();
  Tensor logits = random_normal({n, experts}, rng, 2.0f);
  Tensor scores = random_normal({n, experts}, rng);  // overwritten
  router_scores_forward(scores, logits, fn);

  std::vector<float> x = logits.to_f32_vector();
  std::vector<double> expected(x.size());
  for (int64_t i = 0; i < n; ++i) {
    double sum = 0;
    for (int64_t e = 0; e < experts; ++e) sum += std::exp(static_cast<double>(x[i * experts + e]));
    for (int64_t e = 0; e < experts; ++e) {
      const double xe = x[i * experts + e];
      expected[i * experts + e] =
          fn == ScoreFunction::kSoftmax ? std::exp(xe) / sum : 1.0 / (1.0 + std::exp(-xe));
    }
  }
  EXPECT_TRUE(all_close(scores, expected, 1e-5, 1e-7));

  Tensor dscores = random_normal({n, experts}, rng);
  Tensor dlogits = random_normal({n, experts}, rng);  // written, not accumulated
  router_scores_backward(dlogits, dscores, scores, fn);
  Tensor scratch = Tensor::empty({n, experts});
  auto loss = [&] {
    router_scores_forward(scratch, logits, fn);
    return weighted_sum(scratch, dscores);
  };
  EXPECT_TRUE(grad_check(loss, logits, dlogits, rng));
}

INSTANTIATE_TEST_SUITE_P(Shapes, RouterScoresTest,
                         ::testing::Values(ScoresCase{1, 4, ScoreFunction::kSoftmax},
                                           ScoresCase{1, 4, ScoreFunction::kSigmoid},
                                           ScoresCase{7, 5, ScoreFunction::kSoftmax},
                                           ScoresCase{7, 5, ScoreFunction::kSigmoid},
                                           ScoresCase{33, 64, ScoreFunction::kSoftmax},
                                           ScoresCase{33, 64, ScoreFunction::kSigmoid}),
                         [](const ::testing::TestParamInfo<ScoresCase>& info) {
                           return ::testing::PrintToString(info.param);
                         });

// ---- top-k ---------------------------------------------------------------------------------

struct Selection {
  std::vector<int32_t> indices;
  std::vector<double> weights;
};

// Brute force: rank every group and every expert with a full sort of (key, index) pairs.
Selection reference_topk(const std::vector<float>& scores, const std::vector<float>& bias,
                         int64_t n, int experts, const TopKOptions& o) {
  const int group_size = experts / o.n_groups;
  // Descending key, then ascending index: sort (-key, index) ascending.
  auto ranked = [](const std::vector<float>& key) {
    std::vector<std::pair<float, int>> order;
    for (int i = 0; i < static_cast<int>(key.size()); ++i) order.push_back({-key[i], i});
    std::sort(order.begin(), order.end());
    std::vector<int> out;
    for (auto& [neg_key, i] : order) out.push_back(i);
    return out;
  };
  Selection r;
  for (int64_t t = 0; t < n; ++t) {
    std::vector<float> key(experts);
    for (int e = 0; e < experts; ++e) {
      key[e] = scores[t * experts + e] + (bias.empty() ? 0.0f : bias[e]);
    }
    std::vector<float> group_key(o.n_groups);
    for (int g = 0; g < o.n_groups; ++g) {
      std::vector<float> members(key.begin() + g * group_size, key.begin() + (g + 1) * group_size);
      std::sort(members.rbegin(), members.rend());
      group_key[g] = group_size == 1 ? members[0] : members[0] + members[1];
    }
    std::vector<int> group_order = ranked(group_key);
    std::vector<float> eligible_key(experts, -INFINITY);
    for (int r = 0; r < o.topk_groups; ++r) {
      for (int e = group_order[r] * group_size; e < (group_order[r] + 1) * group_size; ++e) {
        eligible_key[e] = key[e];
      }
    }
    std::vector<int> order = ranked(eligible_key);
    double sum = 0;
    for (int j = 0; j < o.k; ++j) sum += scores[t * experts + order[j]];
    for (int j = 0; j < o.k; ++j) {
      r.indices.push_back(order[j]);
      const double s = scores[t * experts + order[j]];
      r.weights.push_back(o.scale * (o.normalize ? s / sum : s));
    }
  }
  return r;
}

// Smallest gap between any two expert keys or any two group keys of one token.
float min_margin(const std::vector<float>& key, int n_groups) {
  const int group_size = static_cast<int>(key.size()) / n_groups;
  std::vector<float> group_key;
  for (int g = 0; g < n_groups; ++g) {
    std::vector<float> members(key.begin() + g * group_size, key.begin() + (g + 1) * group_size);
    std::sort(members.rbegin(), members.rend());
    group_key.push_back(group_size == 1 ? members[0] : members[0] + members[1]);
  }
  float margin = INFINITY;
  for (std::vector<float> v : {key, group_key}) {
    std::sort(v.begin(), v.end());
    for (size_t i = 1; i < v.size(); ++i) margin = std::min(margin, v[i] - v[i - 1]);
  }
  return margin;
}

struct TopKCase {
  int64_t n;
  int experts;
  TopKOptions options;
  bool bias;
};

void PrintTo(const TopKCase& c, std::ostream* os) {
  const TopKOptions& o = c.options;
  *os << "N" << c.n << "_E" << c.experts << "_k" << o.k << "_g" << o.n_groups << "_tg"
      << o.topk_groups << (o.normalize ? "_norm" : "_raw") << (o.scale != 1.0f ? "_scaled" : "")
      << (c.bias ? "_bias" : "");
}

std::string case_name(const ::testing::TestParamInfo<TopKCase>& info) {
  return ::testing::PrintToString(info.param);
}

class TopKTest : public ::testing::TestWithParam<TopKCase> {
 protected:
  // Positive scores in [0.05, 1) (like softmax or sigmoid outputs), with every expert key and
  // group key of a token at least `margin` apart; a small bias when the case has one.
  void make_inputs(std::mt19937_64& rng, float margin) {
    const TopKCase& c = GetParam();
    std::uniform_real_distribution<float> score(0.05f, 1.0f), shift(-0.2f, 0.2f);
    std::vector<float> b;
    if (c.bias) {
      for (int e = 0; e < c.experts; ++e) b.push_back(shift(rng));
      bias = Tensor::from_f32(b, {c.experts});
    }
    std::vector<float> s;
    for (int64_t t = 0; t < c.n; ++t) {
      std::vector<float> row(c.experts), key(c.experts);
      do {
        for (int e = 0; e < c.experts; ++e) {
          row[e] = score(rng);
          key[e] = row[e] + (b.empty() ? 0.0f : b[e]);
        }
      } while (min_margin(key, c.options.n_groups) < margin);
      s.insert(s.end(), row.begin(), row.end());
    }
    scores = Tensor::from_f32(s, {c.n, c.experts});
  }

  Tensor scores, bias;
};

TEST_P(TopKTest, ForwardMatchesBruteForce) {
  const TopKCase& c = GetParam();
  auto rng = rng_for_test();
  make_inputs(rng, 0.0f);
  Tensor indices = Tensor::empty({c.n, c.options.k}, DType::kI32);
  Tensor weights = Tensor::empty({c.n, c.options.k});
  topk_forward(indices, weights, scores, bias, c.options);

  std::vector<float> b = bias.defined() ? bias.to_f32_vector() : std::vector<float>();
  Selection r = reference_topk(scores.to_f32_vector(), b, c.n, c.experts, c.options);
  EXPECT_EQ(indices.to_i32_vector(), r.indices);
  EXPECT_TRUE(all_close(weights, r.weights, 1e-6, 1e-7));
}

TEST_P(TopKTest, BackwardMatchesFiniteDifferences) {
  const TopKCase& c = GetParam();
  auto rng = rng_for_test();
  // Keys 2e-3 apart and steps of 1e-4 keep the selection fixed under every perturbation.
  make_inputs(rng, 2e-3f);
  Tensor indices = Tensor::empty({c.n, c.options.k}, DType::kI32);
  Tensor weights = Tensor::empty({c.n, c.options.k});
  topk_forward(indices, weights, scores, bias, c.options);
  const std::vector<int32_t> chosen = indices.to_i32_vector();

  Tensor dweights = random_normal({c.n, c.options.k}, rng);
  Tensor dscores = random_normal({c.n, c.experts}, rng);  // written, not accumulated
  topk_backward(dscores, dweights, indices, scores, c.options);

  std::vector<float> ds = dscores.to_f32_vector();
  for (int64_t t = 0; t < c.n; ++t) {
    for (int e = 0; e < c.experts; ++e) {
      const auto first = chosen.begin() + t * c.options.k;
      if (std::find(first, first + c.options.k, e) == first + c.options.k) {
        EXPECT_EQ(ds[t * c.experts + e], 0.0f) << "unchosen expert " << e << " of token " << t;
      }
    }
  }

  Tensor scratch_indices = Tensor::empty(indices.shape(), DType::kI32);
  Tensor scratch_weights = Tensor::empty(weights.shape());
  bool selection_stable = true;
  auto loss = [&] {
    topk_forward(scratch_indices, scratch_weights, scores, bias, c.options);
    selection_stable = selection_stable && scratch_indices.to_i32_vector() == chosen;
    return weighted_sum(scratch_weights, dweights);
  };
  GradCheckOptions options;
  options.eps = 1e-4;
  options.atol = 3e-3;
  options.max_elements = 200;
  EXPECT_TRUE(grad_check(loss, scores, dscores, rng, options));
  EXPECT_TRUE(selection_stable);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, TopKTest,
    ::testing::Values(
        // A single token, plain top-1.
        TopKCase{1, 4, {.k = 1}, false},
        // Normalized top-2 with a bias.
        TopKCase{7, 8, {.k = 2, .normalize = true}, true},
        // DeepSeek-style: 4 groups of 4, the best 2 groups eligible, normalized and scaled.
        TopKCase{9,
                 16,
                 {.k = 4, .n_groups = 4, .topk_groups = 2, .normalize = true, .scale = 2.5f},
                 true},
        // Groups of 3 (group key = best two of three), raw weights, scaled.
        TopKCase{5, 12, {.k = 3, .n_groups = 4, .topk_groups = 3, .scale = 0.7f}, false},
        // k = E: every expert chosen.
        TopKCase{6, 6, {.k = 6, .n_groups = 3, .topk_groups = 3, .normalize = true}, false},
        // One eligible group of 2 holding exactly k experts.
        TopKCase{5, 10, {.k = 2, .n_groups = 5, .topk_groups = 1, .scale = 1.5f}, true},
        // Groups of one expert (group key = that key).
        TopKCase{8, 7, {.k = 3, .n_groups = 7, .topk_groups = 4, .normalize = true}, true},
        // A single token with groups.
        TopKCase{1, 9, {.k = 2, .n_groups = 3, .topk_groups = 2, .normalize = true}, true}),
    case_name);

// ---- hand-built selections -----------------------------------------------------------------

Selection run_topk(const std::vector<float>& scores, int experts, const TopKOptions& o,
                   const std::vector<float>& bias = {}) {
  const int64_t n = static_cast<int64_t>(scores.size()) / experts;
  Tensor indices = Tensor::empty({n, o.k}, DType::kI32);
  Tensor weights = Tensor::empty({n, o.k});
  Tensor b = bias.empty() ? Tensor() : Tensor::from_f32(bias, {experts});
  topk_forward(indices, weights, Tensor::from_f32(scores, {n, experts}), b, o);
  std::vector<float> w = weights.to_f32_vector();
  return {indices.to_i32_vector(), std::vector<double>(w.begin(), w.end())};
}

TEST(TopKSelection, GroupLimitedRoutingSkipsTheBestExpertOfALosingGroup) {
  // Groups of 2. Group keys: 0.9 + 0.01, 0.5 + 0.5, 0.6 + 0.45, 0.1 + 0.1: groups 2 and 1 win,
  // so expert 0 (the best single score) is not eligible. Experts 2 and 3 tie: 2 wins.
  const std::vector<float> scores = {0.9f, 0.01f, 0.5f, 0.5f, 0.6f, 0.45f, 0.1f, 0.1f};
  Selection grouped = run_topk(scores, 8, {.k = 2, .n_groups = 4, .topk_groups = 2});
  EXPECT_EQ(grouped.indices, (std::vector<int32_t>{4, 2}));
  EXPECT_TRUE(all_close(std::vector<float>(grouped.weights.begin(), grouped.weights.end()),
                        {0.6f, 0.5f}, 0, 0));
  Selection flat = run_topk(scores, 8, {.k = 2});
  EXPECT_EQ(flat.indices, (std::vector<int32_t>{0, 4}));
}

TEST(TopKSelection, GroupKeySumsOnlyTheTopTwoKeys) {
  // Groups of 3: group 0 = 0.5 * 3 (top-two sum 1.0, full sum 1.5), group 1 top-two sum 1.125.
  const std::vector<float> scores = {0.5f, 0.5f, 0.5f, 0.75f, 0.375f, 0.0625f};
  Selection s = run_topk(scores, 6, {.k = 2, .n_groups = 2, .topk_groups = 1});
  EXPECT_EQ(s.indices, (std::vector<int32_t>{3, 4}));
}

TEST(TopKSelection, TiesGoToTheLowerIndex) {
  // Exact ties between experts.
  EXPECT_EQ(run_topk({0.25f, 0.25f, 0.25f, 0.25f}, 4, {.k = 3}).indices,
            (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(run_topk({0.125f, 0.75f, 0.375f, 0.75f, 0.375f}, 5, {.k = 4}).indices,
            (std::vector<int32_t>{1, 3, 2, 4}));
  // Exact ties between groups (dyadic values, so the sums are exact). Token 0: groups 0 and 1
  // tie at 0.75, group 0 wins. Token 1: groups 1 and 2 tie at 0.75, group 1 wins although
  // group 2 holds the best single expert (4).
  const std::vector<float> scores = {0.25f,  0.5f,   0.5f,  0.25f, 0.125f, 0.375f,
                                     0.125f, 0.125f, 0.25f, 0.5f,  0.625f, 0.125f};
  Selection s = run_topk(scores, 6, {.k = 1, .n_groups = 3, .topk_groups = 1});
  EXPECT_EQ(s.indices, (std::vector<int32_t>{1, 3}));
}

TEST(TopKSelection, BiasChangesTheChoiceButNotTheWeights) {
  const std::vector<float> scores = {0.4f, 0.3f, 0.2f, 0.1f};
  const std::vector<float> bias = {0.0f, 0.0f, 0.5f, 0.0f};
  Selection unbiased = run_topk(scores, 4, {.k = 2});
  EXPECT_EQ(unbiased.indices, (std::vector<int32_t>{0, 1}));
  Selection biased = run_topk(scores, 4, {.k = 2}, bias);
  EXPECT_EQ(biased.indices, (std::vector<int32_t>{2, 0}));
  EXPECT_TRUE(all_close(std::vector<float>(biased.weights.begin(), biased.weights.end()),
                        {0.2f, 0.4f}, 0, 0));
  Selection normalized = run_topk(scores, 4, {.k = 2, .normalize = true, .scale = 2.0f}, bias);
  EXPECT_TRUE(all_close(std::vector<float>(normalized.weights.begin(), normalized.weights.end()),
                        {2.0 * 0.2 / 0.6, 2.0 * 0.4 / 0.6}, 1e-6, 0));
}

TEST(TopKSelection, RejectsInconsistentOptions) {
  const std::vector<float> scores(8, 0.5f);
  EXPECT_DEATH(run_topk(scores, 8, {.k = 9}), "k = 9");
  EXPECT_DEATH(run_topk(scores, 8, {.k = 1, .n_groups = 3}), "do not split into 3 groups");
  EXPECT_DEATH(run_topk(scores, 8, {.k = 1, .n_groups = 2, .topk_groups = 3}), "topk_groups");
  EXPECT_DEATH(run_topk(scores, 8, {.k = 3, .n_groups = 4, .topk_groups = 1}), "exceeds");
}

}  // namespace
}  // namespace sy
