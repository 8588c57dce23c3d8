// GPU parity of token sampling (kernels/cuda/sampling.cu) with the CPU reference on fresh
// random logits: the bench vocabulary (32768), Qwen's (151936) and small and odd ones, rows up
// to 256, greedy, the plain RL case (temperature 1, no cuts) and each cut alone and together.
// Logits are rounded to bf16 (as a bf16 LM head gives them), so ties at the max and at the
// cuts are common.
//
// Bounds:
//   greedy tokens: equal.
//   sampled tokens: the GPU sums the masses in another order than the CPU (f32 trees against
//     double), so a token may differ where u falls within rounding of a boundary. Without cuts
//     every such row is checked to be one: u within 1e-5 of the cumulative mass (in double, id
//     order) at the GPU's token. With cuts (which can also move by rounding) mismatches are
//     counted and held to 1 + 1% of the rows; the GPU's log-prob must still be its token's.
//   log-probs (f32): |gpu - cpu| <= 1e-5 max(1, |cpu|).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ostream>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/sampling.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::kGpu;
using testing::random_normal;
using testing::rng_for_test;

struct Case {
  int64_t rows, vocab;
  float temperature, top_p, min_p;
  int32_t top_k;
  float scale;  // logits ~ N(0, scale^2)
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << "R" << c.rows << "_V" << c.vocab << "_T" << c.temperature << "_k" << c.top_k << "_p"
      << c.top_p << "_minp" << c.min_p;
}

struct Inputs {
  Tensor logits;  // CPU f32
  SamplingParams params;
};

Inputs make_inputs(const Case& c, std::mt19937_64& rng) {
  Inputs in;
  in.logits = random_normal({c.rows, c.vocab}, rng, c.scale).to(DType::kBF16).to(DType::kF32);
  float* x = in.logits.data<float>();
  // A few rows with several copies of their max: greedy ties and top-k ties at the cut.
  for (int64_t r = 0; r < c.rows; r += 7) {
    float* row = x + r * c.vocab;
    const float mx = *std::max_element(row, row + c.vocab);
    for (int i = 0; i < 3; ++i) row[(r * 131 + i * 977) % c.vocab] = mx;
  }
  const int64_t n = c.rows;
  std::uniform_int_distribution<int64_t> any;
  auto fill_f = [&](float v) { return Tensor::from_f32(std::vector<float>(n, v), {n}); };
  auto fill_i = [&](int32_t v) { return Tensor::from_i32(std::vector<int32_t>(n, v), {n}); };
  in.params.temperature = fill_f(c.temperature);
  in.params.top_p = fill_f(c.top_p);
  in.params.min_p = fill_f(c.min_p);
  in.params.top_k = fill_i(c.top_k);
  in.params.active = fill_i(1);
  in.params.seed = Tensor::empty({n}, DType::kI64);
  in.params.row_id = Tensor::empty({n}, DType::kI64);
  std::vector<int32_t> pos(n);
  for (int64_t r = 0; r < n; ++r) {
    in.params.seed.data<int64_t>()[r] = any(rng);
    in.params.row_id.data<int64_t>()[r] = r;
    pos[r] = static_cast<int32_t>(any(rng) % 4096);
  }
  in.params.position = Tensor::from_i32(pos, {n});
  return in;
}

SamplingParams to_gpu(const SamplingParams& p) {
  return {p.temperature.to(kGpu), p.top_p.to(kGpu),  p.min_p.to(kGpu),    p.top_k.to(kGpu),
          p.seed.to(kGpu),        p.row_id.to(kGpu), p.position.to(kGpu), p.active.to(kGpu)};
}

struct Result {
  std::vector<int32_t> token;
  std::vector<float> logprob;
};

Result run_cpu(const Inputs& in) {
  const int64_t n = in.logits.dim(0);
  Tensor token = Tensor::zeros({n}, DType::kI32), logprob = Tensor::zeros({n});
  sample_tokens(token, logprob, in.logits, in.params);
  return {token.to_i32_vector(), logprob.to_f32_vector()};
}

Result run_gpu(const Inputs& in) {
  const int64_t n = in.logits.dim(0);
  Tensor token = Tensor::zeros({n}, DType::kI32, kGpu), logprob = Tensor::zeros({n}, DType::kF32, kGpu);
  sample_tokens(token, logprob, in.logits.to(kGpu), to_gpu(in.params));
  return {token.to_i32_vector(), logprob.to_f32_vector()};
}

// log_softmax(logits / T)[token] in double.
double log_prob(const float* x, int64_t vocab, float temperature, int32_t token) {
  const bool greedy = temperature <= 0;
  double m = -INFINITY, s = 0;
  auto z = [&](int64_t j) { return greedy ? x[j] : static_cast<double>(x[j] / temperature); };
  for (int64_t j = 0; j < vocab; ++j) m = std::max(m, z(j));
  for (int64_t j = 0; j < vocab; ++j) s += std::exp(z(j) - m);
  return z(token) - m - std::log(s);
}

class SamplingGpu : public ::testing::TestWithParam<Case> {};

TEST_P(SamplingGpu, MatchesCpu) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  auto rng = rng_for_test();
  const Inputs in = make_inputs(c, rng);
  const Result cpu = run_cpu(in), gpu = run_gpu(in);
  const bool greedy = c.temperature <= 0;
  const bool cuts = c.top_k > 0 || c.top_p < 1 || c.min_p > 0;
  int mismatches = 0;
  for (int64_t r = 0; r < c.rows; ++r) {
    const float* x = in.logits.data<float>() + r * c.vocab;
    const int32_t g = gpu.token[r];
    ASSERT_GE(g, 0) << "row " << r;
    ASSERT_LT(g, c.vocab) << "row " << r;
    if (g != cpu.token[r]) {
      ASSERT_FALSE(greedy) << "greedy token of row " << r << ": gpu " << g << " cpu "
                           << cpu.token[r];
      ++mismatches;
      if (!cuts) {
        // u must sit within rounding of the cumulative mass at the GPU's token.
        double m = -INFINITY, total = 0, before = 0;
        for (int64_t j = 0; j < c.vocab; ++j) m = std::max(m, static_cast<double>(x[j] / c.temperature));
        for (int64_t j = 0; j < c.vocab; ++j) {
          const double e = std::exp(x[j] / c.temperature - m);
          if (j < g) before += e;
          total += e;
        }
        const double e_g = std::exp(x[g] / c.temperature - m);
        const double u = sampling_uniform(in.params.seed.data<int64_t>()[r], r,
                                          in.params.position.data<int32_t>()[r]);
        const double lo = before / total, hi = (before + e_g) / total;
        EXPECT_TRUE(u >= lo - 1e-5 && u <= hi + 1e-5)
            << "row " << r << ": gpu " << g << " cpu " << cpu.token[r] << ", u " << u
            << " outside [" << lo << ", " << hi << "] of the gpu token";
      }
    }
    // The log-prob is the GPU token's own, whichever token it drew.
    const double want = g == cpu.token[r] ? cpu.logprob[r] : log_prob(x, c.vocab, c.temperature, g);
    EXPECT_NEAR(gpu.logprob[r], want, 1e-5 * std::max(1.0, std::fabs(want)))
        << "row " << r << " token " << g;
  }
  if (mismatches) std::printf("%d of %lld sampled tokens differ at a rounding boundary\n",
                              mismatches, static_cast<long long>(c.rows));
  EXPECT_LE(mismatches, 1 + c.rows / 100);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SamplingGpu,
    ::testing::Values(
        // greedy
        Case{256, 32768, 0.0f, 1.0f, 0.0f, 0, 2.0f}, Case{64, 151936, 0.0f, 1.0f, 0.0f, 0, 2.0f},
        Case{9, 7, 0.0f, 1.0f, 0.0f, 0, 1.0f}, Case{33, 1001, -1.0f, 0.9f, 0.1f, 5, 1.0f},
        // the RL case: temperature 1, no cuts
        Case{256, 32768, 1.0f, 1.0f, 0.0f, 0, 2.0f}, Case{64, 151936, 1.0f, 1.0f, 0.0f, 0, 2.0f},
        Case{200, 33, 1.0f, 1.0f, 0.0f, 0, 1.0f}, Case{128, 32768, 0.7f, 1.0f, 0.0f, 0, 1.0f},
        // each cut, then together
        Case{128, 32768, 1.0f, 1.0f, 0.0f, 50, 2.0f}, Case{128, 32768, 1.0f, 1.0f, 0.0f, 1, 2.0f},
        Case{64, 151936, 0.8f, 1.0f, 0.0f, 1000, 2.0f}, Case{128, 32768, 1.0f, 0.9f, 0.0f, 0, 2.0f},
        Case{128, 32768, 1.2f, 0.3f, 0.0f, 0, 4.0f}, Case{64, 151936, 1.0f, 0.95f, 0.0f, 0, 2.0f},
        Case{128, 32768, 1.0f, 1.0f, 0.05f, 0, 2.0f}, Case{128, 32768, 1.0f, 1.0f, 0.5f, 0, 4.0f},
        Case{128, 32768, 0.9f, 0.9f, 0.02f, 40, 2.0f}, Case{64, 151936, 1.1f, 0.7f, 0.01f, 200, 3.0f},
        Case{200, 41, 1.0f, 0.5f, 0.1f, 6, 1.0f}, Case{100, 5000, 1.0f, 0.99f, 0.0f, 4999, 1.0f}));

TEST(SamplingGpuRows, InactiveRowsAreNotWrittenAndRunsRepeat) {
  SKIP_WITHOUT_GPU();
  auto rng = rng_for_test();
  const Case c{64, 32768, 1.0f, 0.9f, 0.0f, 20, 2.0f};
  Inputs in = make_inputs(c, rng);
  std::vector<int32_t> active(c.rows);
  for (int64_t r = 0; r < c.rows; ++r) active[r] = r % 3 != 0;
  in.params.active = Tensor::from_i32(active, {c.rows});
  const SamplingParams params = to_gpu(in.params);
  const Tensor logits = in.logits.to(kGpu);
  std::vector<int32_t> first;
  for (int run = 0; run < 2; ++run) {
    Tensor token = Tensor::from_i32(std::vector<int32_t>(c.rows, -9), {c.rows}).to(kGpu);
    Tensor logprob = testing::filled({c.rows}, 77.0f).to(kGpu);
    sample_tokens(token, logprob, logits, params);
    const std::vector<int32_t> t = token.to_i32_vector();
    const std::vector<float> lp = logprob.to_f32_vector();
    for (int64_t r = 0; r < c.rows; ++r) {
      if (!active[r]) {
        EXPECT_EQ(t[r], -9) << r;
        EXPECT_EQ(lp[r], 77.0f) << r;
      }
    }
    if (run == 0) first = t;
    EXPECT_EQ(t, first) << "a second run drew other tokens";
  }
}

TEST(SamplingGpuRows, TopKTiesGoToTheLowerIds) {
  SKIP_WITHOUT_GPU();
  // Every row: ids 1..3 share the max; top_k 2 keeps ids 1 and 2 only.
  const int64_t rows = 400, vocab = 5000;
  auto rng = rng_for_test();
  Inputs in = make_inputs({rows, vocab, 1.0f, 1.0f, 0.0f, 2, 1.0f}, rng);
  float* x = in.logits.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < vocab; ++j) x[r * vocab + j] = j >= 1 && j <= 3 ? 3.0f : -20.0f;
  const Result gpu = run_gpu(in);
  int ones = 0;
  for (int64_t r = 0; r < rows; ++r) {
    ASSERT_TRUE(gpu.token[r] == 1 || gpu.token[r] == 2) << gpu.token[r];
    ones += gpu.token[r] == 1;
  }
  EXPECT_NEAR(ones / static_cast<double>(rows), 0.5, 0.1);
}

// Not a check: the time of one call at the rollout shapes.
TEST(SamplingGpuRows, Timing) {
  SKIP_WITHOUT_GPU();
  auto rng = rng_for_test();
  for (const Case& c : {Case{256, 32768, 1.0f, 1.0f, 0.0f, 0, 2.0f},
                        Case{256, 151936, 1.0f, 1.0f, 0.0f, 0, 2.0f},
                        Case{256, 32768, 0.0f, 1.0f, 0.0f, 0, 2.0f},
                        Case{256, 32768, 1.0f, 0.9f, 0.05f, 50, 2.0f},
                        Case{256, 151936, 1.0f, 0.9f, 0.0f, 0, 2.0f}}) {
    const Inputs in = make_inputs(c, rng);
    const Tensor logits = in.logits.to(kGpu);
    const SamplingParams params = to_gpu(in.params);
    Tensor token = Tensor::zeros({c.rows}, DType::kI32, kGpu);
    Tensor logprob = Tensor::zeros({c.rows}, DType::kF32, kGpu);
    auto wait = [&] { (void)logprob.rows(0, 1).to_f32_vector(); };
    sample_tokens(token, logprob, logits, params);
    wait();
    constexpr int kRepeats = 20;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < kRepeats; ++i) sample_tokens(token, logprob, logits, params);
    wait();
    const double us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() /
        kRepeats;
    std::printf("sample_tokens R%lld V%lld T%.1f top_k %d top_p %.2f min_p %.2f: %.1f us (%.0f GB/s of logits)\n",
                static_cast<long long>(c.rows), static_cast<long long>(c.vocab), c.temperature,
                c.top_k, c.top_p, c.min_p, us, c.rows * c.vocab * 4.0 / us * 1e-3);
  }
}

}  // namespace
}  // namespace sy
