// Token sampling (kernels/sampling.h) on the CPU against a naive double-precision reading of
// the rule in the header: each token's membership of the candidate set decided on its own
// (its rank among the others for top-k, the probability mass ahead of it for top-p), then the
// inverse-CDF walk in id order. Also: greedy ties, inactive rows, the log-prob, the empirical
// distribution over many seeds, the uniform's bits, and refused arguments.
#include "kernels/sampling.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::rng_for_test;

constexpr float kInf = std::numeric_limits<float>::infinity();

struct RowSpec {
  float temperature = 1.0f, top_p = 1.0f, min_p = 0.0f;
  int32_t top_k = 0;
  int64_t seed = 7, row_id = 0;
  int32_t position = 0;
  int32_t active = 1;
};

struct Batch {
  Tensor logits, token, logprob;
  SamplingParams params;
};

Batch make_batch(const std::vector<std::vector<float>>& rows, const std::vector<RowSpec>& specs) {
  const int64_t r = static_cast<int64_t>(rows.size()), v = static_cast<int64_t>(rows[0].size());
  Batch b;
  b.logits = Tensor::empty({r, v});
  for (int64_t i = 0; i < r; ++i)
    std::copy(rows[i].begin(), rows[i].end(), b.logits.data<float>() + i * v);
  b.token = Tensor::from_i32(std::vector<int32_t>(r, -5), {r});
  b.logprob = Tensor::from_f32(std::vector<float>(r, 123.0f), {r});
  SamplingParams& p = b.params;
  p.temperature = Tensor::empty({r});
  p.top_p = Tensor::empty({r});
  p.min_p = Tensor::empty({r});
  p.top_k = Tensor::empty({r}, DType::kI32);
  p.seed = Tensor::empty({r}, DType::kI64);
  p.row_id = Tensor::empty({r}, DType::kI64);
  p.position = Tensor::empty({r}, DType::kI32);
  p.active = Tensor::empty({r}, DType::kI32);
  for (int64_t i = 0; i < r; ++i) {
    const RowSpec& s = specs[i];
    p.temperature.data<float>()[i] = s.temperature;
    p.top_p.data<float>()[i] = s.top_p;
    p.min_p.data<float>()[i] = s.min_p;
    p.top_k.data<int32_t>()[i] = s.top_k;
    p.seed.data<int64_t>()[i] = s.seed;
    p.row_id.data<int64_t>()[i] = s.row_id;
    p.position.data<int32_t>()[i] = s.position;
    p.active.data<int32_t>()[i] = s.active;
  }
  return b;
}

void run(Batch& b) { sample_tokens(b.token, b.logprob, b.logits, b.params); }

// The candidate set K of the header's rule as a 0/1 mask, in double, token by token.
std::vector<int> naive_kept(const std::vector<float>& x, const RowSpec& s) {
  const int v = static_cast<int>(x.size());
  std::vector<float> z(v);
  for (int j = 0; j < v; ++j) z[j] = x[j] / s.temperature;
  double m = -INFINITY;
  for (float a : z) m = std::max(m, static_cast<double>(a));
  std::vector<double> p(v);
  for (int j = 0; j < v; ++j) p[j] = std::exp(z[j] - m);  // unnormalised; the max has 1
  std::vector<int> kept(v, 1);
  if (s.top_k > 0) {
    for (int j = 0; j < v; ++j) {
      int ahead = 0;
      for (int i = 0; i < v; ++i) ahead += z[i] > z[j] || (z[i] == z[j] && i < j);
      if (ahead >= s.top_k) kept[j] = 0;
    }
  }
  for (int j = 0; j < v; ++j)
    if (p[j] < s.min_p * 1.0) kept[j] = 0;
  if (s.top_p < 1.0f) {
    double left = 0;
    for (int j = 0; j < v; ++j) left += kept[j] * p[j];
    std::vector<int> cut = kept;
    for (int j = 0; j < v; ++j) {
      if (!kept[j]) continue;
      double ahead = 0;
      for (int i = 0; i < v; ++i)
        if (kept[i] && (p[i] > p[j] || (p[i] == p[j] && i < j))) ahead += p[i];
      if (ahead >= s.top_p * left) cut[j] = 0;
    }
    kept = cut;
  }
  return kept;
}

// The header's rule in double: (token, logprob).
std::pair<int32_t, double> naive_sample(const std::vector<float>& x, const RowSpec& s) {
  const int v = static_cast<int>(x.size());
  const bool greedy = s.temperature <= 0;
  std::vector<double> z(v);
  for (int j = 0; j < v; ++j) z[j] = greedy ? x[j] : static_cast<double>(x[j] / s.temperature);
  double m = -INFINITY, sum = 0;
  int argmax = 0;
  for (int j = 0; j < v; ++j)
    if (z[j] > m) m = z[j], argmax = j;
  for (int j = 0; j < v; ++j) sum += std::exp(z[j] - m);
  const double lse = m + std::log(sum);
  if (greedy) return {argmax, z[argmax] - lse};
  const std::vector<int> kept = naive_kept(x, s);
  double mass = 0;
  for (int j = 0; j < v; ++j) mass += kept[j] * std::exp(z[j] - m);
  const double u = sampling_uniform(s.seed, s.row_id, s.position);
  double cumulative = 0;
  int last = -1;
  for (int j = 0; j < v; ++j) {
    if (!kept[j]) continue;
    last = j;
    cumulative += std::exp(z[j] - m);
    if (cumulative > u * mass) return {j, z[j] - lse};
  }
  return {last, z[last] - lse};
}

std::vector<float> random_row(int v, std::mt19937_64& rng, float scale) {
  std::normal_distribution<float> n(0.0f, scale);
  std::vector<float> x(v);
  for (float& a : x) a = n(rng);
  return x;
}

TEST(SampleTokens, GreedyTakesTheFirstMaximum) {
  const std::vector<float> x = {0.5f, 2.0f, -1.0f, 2.0f, 2.0f};
  Batch b = make_batch({x, x}, {{.temperature = 0.0f}, {.temperature = -1.0f, .top_k = 1}});
  run(b);
  double lse = 0;
  for (float a : x) lse += std::exp(a);
  lse = std::log(lse);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(b.token.data<int32_t>()[r], 1);
    EXPECT_NEAR(b.logprob.data<float>()[r], 2.0 - lse, 1e-6);
  }
}

TEST(SampleTokens, MatchesTheNaiveRuleOverParameterCombinations) {
  auto rng = rng_for_test();
  const int v = 41;
  std::vector<std::vector<float>> rows;
  std::vector<RowSpec> specs;
  int32_t position = 0;
  for (float t : {0.0f, 0.6f, 1.0f, 1.7f}) {
    for (int32_t k : {0, 1, 4, 17}) {
      for (float top_p : {1.0f, 0.95f, 0.5f, 0.1f}) {
        for (float min_p : {0.0f, 0.02f, 0.3f}) {
          for (int rep = 0; rep < 6; ++rep) {
            std::vector<float> x = random_row(v, rng, 2.0f);
            if (rep == 1) x[3] = x[11] = -kInf;  // masked tokens
            if (rep == 2) x[5] = x[9] = x[30] = *std::max_element(x.begin(), x.end());  // ties
            rows.push_back(x);
            specs.push_back({.temperature = t, .top_p = top_p, .min_p = min_p, .top_k = k,
                             .seed = 11, .row_id = rep, .position = position++});
          }
        }
      }
    }
  }
  Batch b = make_batch(rows, specs);
  run(b);
  for (size_t r = 0; r < rows.size(); ++r) {
    const auto [token, logprob] = naive_sample(rows[r], specs[r]);
    const RowSpec& s = specs[r];
    ASSERT_EQ(b.token.data<int32_t>()[r], token)
        << "row " << r << " T " << s.temperature << " top_k " << s.top_k << " top_p " << s.top_p
        << " min_p " << s.min_p;
    EXPECT_NEAR(b.logprob.data<float>()[r], logprob, 1e-5 * std::max(1.0, std::fabs(logprob)))
        << "row " << r;
  }
}

TEST(SampleTokens, LogprobIsTheFullLogSoftmaxAtTheTemperature) {
  auto rng = rng_for_test();
  const std::vector<float> x = random_row(1000, rng, 3.0f);
  // A tight nucleus: the token's log-prob is still taken before the cut.
  Batch b = make_batch({x}, {{.temperature = 0.8f, .top_p = 0.2f, .min_p = 0.1f, .top_k = 3}});
  run(b);
  const int32_t token = b.token.data<int32_t>()[0];
  ASSERT_GE(token, 0);
  double lse = 0, m = -INFINITY;
  for (float a : x) m = std::max(m, static_cast<double>(a / 0.8f));
  for (float a : x) lse += std::exp(static_cast<double>(a / 0.8f) - m);
  lse = m + std::log(lse);
  EXPECT_NEAR(b.logprob.data<float>()[0], static_cast<double>(x[token] / 0.8f) - lse, 1e-5);
}

TEST(SampleTokens, InactiveRowsAreNotWritten) {
  auto rng = rng_for_test();
  const std::vector<float> x = random_row(16, rng, 1.0f);
  Batch b = make_batch({x, x, x}, {{.active = 0}, {.position = 3}, {.top_p = 2.0f, .active = 0}});
  run(b);  // the inactive row's out-of-range top_p is not even looked at
  EXPECT_EQ(b.token.data<int32_t>()[0], -5);
  EXPECT_EQ(b.logprob.data<float>()[0], 123.0f);
  EXPECT_EQ(b.token.data<int32_t>()[2], -5);
  EXPECT_EQ(b.logprob.data<float>()[2], 123.0f);
  EXPECT_EQ(b.token.data<int32_t>()[1], naive_sample(x, {.position = 3}).first);
}

TEST(SampleTokens, TopKTiesAtTheCutGoToTheLowerIds) {
  const std::vector<float> x = {1.0f, 3.0f, 3.0f, 3.0f, 0.0f};
  std::vector<std::vector<float>> rows(400, x);
  std::vector<RowSpec> specs;
  for (int i = 0; i < 400; ++i) specs.push_back({.top_k = 2, .position = i});
  Batch b = make_batch(rows, specs);
  run(b);
  int ones = 0;
  for (int i = 0; i < 400; ++i) {
    const int32_t t = b.token.data<int32_t>()[i];
    ASSERT_TRUE(t == 1 || t == 2) << t;
    ones += t == 1;
  }
  EXPECT_NEAR(ones / 400.0, 0.5, 0.1);
}

// Frequencies over many seeds against the truncated, renormalised distribution.
TEST(SampleTokens, EmpiricalDistributionMatchesTheTruncatedOne) {
  const std::vector<float> x = {0.3f, 1.9f, -0.4f, 1.2f, 0.8f, -2.0f, 1.5f, 0.0f};
  const std::vector<RowSpec> cases = {
      {.temperature = 1.0f},
      {.temperature = 0.7f, .top_k = 4},
      {.temperature = 1.3f, .top_p = 0.8f},
      {.temperature = 1.0f, .min_p = 0.3f},
      {.temperature = 1.1f, .top_p = 0.9f, .min_p = 0.1f, .top_k = 5},
  };
  const int n = 40000;
  for (const RowSpec& c : cases) {
    std::vector<std::vector<float>> rows(n, x);
    std::vector<RowSpec> specs(n, c);
    for (int i = 0; i < n; ++i) {
      specs[i].seed = 1234;
      specs[i].row_id = i % 97;
      specs[i].position = i / 97;
    }
    Batch b = make_batch(rows, specs);
    run(b);
    const std::vector<int> kept = naive_kept(x, c);
    std::vector<double> p(x.size());
    double mass = 0;
    for (size_t j = 0; j < x.size(); ++j) mass += p[j] = kept[j] * std::exp(x[j] / c.temperature);
    std::vector<int> hits(x.size(), 0);
    for (int i = 0; i < n; ++i) ++hits[b.token.data<int32_t>()[i]];
    for (size_t j = 0; j < x.size(); ++j) {
      const double want = p[j] / mass, got = hits[j] / static_cast<double>(n);
      // Five standard deviations of a binomial frequency; exactly zero outside K.
      EXPECT_NEAR(got, want, 5 * std::sqrt(want * (1 - want) / n) + 1e-12)
          << "token " << j << " T " << c.temperature << " top_k " << c.top_k << " top_p "
          << c.top_p << " min_p " << c.min_p;
    }
  }
}

// The uniform keeps the bits of its first definition (FNV-1a of "sample" with the seed, the
// index folded in, splitmix64, the top 53 bits), so seeded rollouts repeat across versions.
TEST(SamplingUniform, KeepsItsBits) {
  const auto reference = [](uint64_t seed, uint64_t row, uint64_t pos) {
    uint64_t h = 1469598103934665603ull ^ seed;
    for (char c : std::string("sample")) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    h ^= (row * 0x9e3779b97f4a7c15ull + pos) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    uint64_t z = h + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return static_cast<double>(z >> 11) / 9007199254740992.0;
  };
  for (uint64_t seed : {0ull, 1ull, 0xffffffffffffffffull})
    for (uint64_t row : {0ull, 5ull, 1ull << 40})
      for (uint64_t pos : {0ull, 1ull, 4095ull}) {
        const double u = sampling_uniform(seed, row, pos);
        EXPECT_EQ(u, reference(seed, row, pos));
        EXPECT_GE(u, 0.0);
        EXPECT_LT(u, 1.0);
      }
}

TEST(SampleTokensDeathTest, RefusesBadArguments) {
  const std::vector<float> x = {0.0f, 1.0f, 2.0f};
  {
    Batch b = make_batch({x}, {{.top_p = 0.0f}});
    EXPECT_DEATH(run(b), "top_p of row 0 is 0; it must be in \\(0, 1\\]");
  }
  {
    Batch b = make_batch({x}, {{.min_p = 1.5f}});
    EXPECT_DEATH(run(b), "min_p of row 0 is 1.5");
  }
  {
    Batch b = make_batch({x}, {{.top_k = -2}});
    EXPECT_DEATH(run(b), "top_k of row 0 is -2");
  }
  {
    Batch b = make_batch({x}, {{.temperature = NAN}});
    EXPECT_DEATH(run(b), "temperature of row 0 is nan");
  }
  {
    Batch b = make_batch({x, x}, {{}, {}});
    b.params.top_k = Tensor::zeros({2});  // f32, not i32
    EXPECT_DEATH(run(b), "top_k");
  }
  {
    Batch b = make_batch({x, x}, {{}, {}});
    b.params.seed = Tensor::zeros({3}, DType::kI64);
    EXPECT_DEATH(run(b), "seed");
  }
  {
    Batch b = make_batch({x}, {{}});
    b.params.active = Tensor();
    EXPECT_DEATH(run(b), "active is not set");
  }
  {
    Batch b = make_batch({x}, {{}});
    EXPECT_DEATH(sample_tokens(b.token, b.logprob, b.logits.view({3}), b.params),
                 "logits must be \\[R, V\\]");
  }
}

}  // namespace
}  // namespace sy
