// The rollout engine on the GPU: greedy decoding of a ragged batch (f32) gives the same
// tokens as one prompt at a time on the GPU and as the CPU engine, with log-probs within
// summation-order rounding; in bf16 mixed precision the sampled log-probs agree with a
// training forward (Transformer::token_logprobs) of the same full sequences replaying the
// rollout's recorded routes (routing replay; without it a bf16 near-tie in the router may
// route a token differently, measured and bounded loosely); and a pool that
// cannot fit is refused with the largest batch that would; captured decode steps (CUDA
// graphs) give bit-identical tokens and log-probs to steps issued op by op. Skips without a
// GPU.
//
// Bounds. f32: GEMMs, attention and sampling sum in other orders than the CPU: log-probs
// within 1e-4. Greedy tokens could differ only where two logits tie within that rounding;
// the random model below has peaked logits (init_std 0.3), so ties are far apart.
// bf16: the engine's decode reads keys and values from the bf16 pool through decode_attention,
// the training forward recomputes them through the flash attention kernel; both carry 8
// significant bits per activation (2^-9 relative rounding) through three blocks and the
// head, logits f32. Per token |delta logp| <= 0.1 (|logp| up to ~6 here), mean over tokens
// <= 0.02; a wrong position, slot or stale cache row gives errors of order 1.
#include <cmath>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "models/generate.h"
#include "models/rollout/engine.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::kGpu;

ModelSpec rollout_spec() {
  ModelSpec s;
  s.vocab_size = 97;
  s.d_model = 64;
  s.n_layers = 3;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.seq_len = 48;
  s.dense_ffn_hidden = 96;
  s.first_k_dense = 1;
  s.init_std = 0.3f;
  s.moe.num_experts = 8;
  s.moe.top_k = 2;
  s.moe.expert_hidden = 48;
  s.moe.num_shared_experts = 1;
  return s;
}

using Prompts = std::vector<std::vector<int32_t>>;

Prompts ragged_prompts(int count) {
  auto rng = testing::rng_for_test();
  Prompts out;
  for (int i = 0; i < count; ++i) {
    const int len = 1 + (i * 7) % 13;
    out.push_back(testing::random_ints({len}, 0, 97, rng).to_i32_vector());
  }
  return out;
}

struct Model {
  Model(Device dev, DType compute) : store(dev, compute), model(rollout_spec(), store) {
    store.initialize(11);
  }
  std::vector<Completion> complete(const Prompts& prompts, const SamplingOptions& o,
                                   const EngineOptions& engine = {}, uint64_t first_row = 0) {
    auto out = generate_completions(model, prompts, o, nullptr, first_row, engine);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : std::vector<Completion>(prompts.size());
  }
  ParamStore store;
  Transformer model;
};

TEST(RolloutGpu, GreedyRaggedBatchEqualsOneAtATimeAndTheCpu) {
  SKIP_WITHOUT_GPU();
  Model gpu(kGpu, DType::kF32), cpu(Device::cpu(), DType::kF32);
  const Prompts prompts = ragged_prompts(12);
  const SamplingOptions greedy{.temperature = 0.0f, .max_new_tokens = 20};
  // Capacity 5 with a check every 3 steps: rows retire and new ones take their slots.
  const auto batch = gpu.complete(prompts, greedy, {.max_rows = 5, .check_interval = 3});
  const auto reference = cpu.complete(prompts, greedy);
  for (size_t p = 0; p < prompts.size(); ++p) {
    EXPECT_EQ(batch[p].tokens, reference[p].tokens) << "prompt " << p << " vs the CPU";
    const auto alone = gpu.complete({prompts[p]}, greedy);
    EXPECT_EQ(alone[0].tokens, batch[p].tokens) << "prompt " << p << " alone";
    ASSERT_EQ(batch[p].logprobs.size(), reference[p].logprobs.size());
    for (size_t k = 0; k < batch[p].logprobs.size(); ++k)
      EXPECT_NEAR(batch[p].logprobs[k], reference[p].logprobs[k], 1e-4) << "prompt " << p;
  }
}

TEST(RolloutGpu, Bf16SampledLogprobsAgreeWithATrainingForward) {
  SKIP_WITHOUT_GPU();
  Model gpu(kGpu, DType::kBF16);
  const Prompts prompts = ragged_prompts(16);
  const float temperature = 0.8f;
  const auto got = gpu.complete(
      prompts, {.temperature = temperature, .top_p = 0.95f, .max_new_tokens = 24, .seed = 2},
      {.max_rows = 8, .check_interval = 4, .record_routing = true});
  const int layers = gpu.model.num_routed_layers(), k = rollout_spec().moe.top_k;
  // Per token |d| with the training forward routing by itself, and replaying the rollout's
  // routes (routing replay): a bf16 near-tie in the router can send a token to another expert
  // in one forward than in the other, which no rounding bound covers; replayed, only the
  // arithmetic's rounding is left.
  double sum[2] = {0, 0}, worst[2] = {0, 0};
  int64_t count = 0;
  for (size_t p = 0; p < prompts.size(); ++p) {
    std::vector<int32_t> seq = prompts[p];
    seq.insert(seq.end(), got[p].tokens.begin(), got[p].tokens.end());
    const int64_t t = static_cast<int64_t>(seq.size()) - 1;
    if (got[p].tokens.empty()) continue;
    ASSERT_EQ(static_cast<int64_t>(got[p].routes.size()), t * layers * k) << "prompt " << p;
    std::vector<int32_t> targets(t, kIgnoreIndex);
    const int64_t first = static_cast<int64_t>(prompts[p].size()) - 1;
    for (size_t j = 0; j < got[p].tokens.size(); ++j) targets[first + j] = got[p].tokens[j];
    const Tensor inputs = Tensor::from_i32(std::vector<int32_t>(seq.begin(), seq.end() - 1), {1, t});
    const ForwardRoutes replay{.routes = Tensor::from_i32(got[p].routes, {1, t, layers, k}),
                               .replay = true};
    const Tensor own = gpu.model.token_logprobs(inputs, Tensor::from_i32(targets, {1, t}), false,
                                                temperature).logp;
    const Tensor replayed = gpu.model.token_logprobs(inputs, Tensor::from_i32(targets, {1, t}),
                                                     false, temperature, &replay).logp;
    for (size_t j = 0; j < got[p].tokens.size(); ++j) {
      const double d[2] = {std::fabs(got[p].logprobs[j] - own.data<float>()[first + j]),
                           std::fabs(got[p].logprobs[j] - replayed.data<float>()[first + j])};
      EXPECT_LE(d[1], 0.1) << "prompt " << p << " token " << j << " (routes replayed)";
      for (int i = 0; i < 2; ++i) sum[i] += d[i], worst[i] = std::max(worst[i], d[i]);
      ++count;
    }
  }
  ASSERT_GT(count, 0);
  EXPECT_LE(sum[1] / count, 0.02) << "worst " << worst[1];
  // Without replay the flipped tokens add their error; still far from a wrong cache row's.
  EXPECT_LE(sum[0] / count, 0.1) << "worst " << worst[0];
  std::printf(
      "bf16 rollout log-probs vs training forward over %lld tokens: routes replayed mean |d| "
      "%.2e worst %.2e; routing itself mean |d| %.2e worst %.2e\n",
      static_cast<long long>(count), sum[1] / count, worst[1], sum[0] / count, worst[0]);
}

// The decode step captured as a CUDA graph (EngineOptions::decode_graphs) runs the same
// kernels on the same buffers as the step issued op by op: tokens and log-probs bit-identical,
// with rows retiring and new ones admitted (several padded row counts, each its own graph).
TEST(RolloutGpu, CapturedDecodeStepsGiveTheTokensOfIssuedOnes) {
  SKIP_WITHOUT_GPU();
  Model gpu(kGpu, DType::kBF16);
  const Prompts prompts = ragged_prompts(13);
  // Stop tokens end rows at scattered lengths, so the live rows fall through several padded
  // row counts (8, 4, 2, 1): each its own graph.
  std::vector<int32_t> stops;
  for (int32_t t = 0; t < 12; ++t) stops.push_back(t);
  const SamplingOptions sampled{.temperature = 1.0f,
                                .top_p = 0.9f,
                                .max_new_tokens = 30,
                                .stop_tokens = stops,
                                .seed = 5};
  auto run = [&](bool graphs, RolloutEngine::DecodeStats* stats) {
    auto engine = RolloutEngine::create(
        gpu.model, {.max_rows = 8, .check_interval = 4, .decode_graphs = graphs});
    EXPECT_TRUE(engine.ok()) << engine.status();
    auto out = (*engine)->generate(prompts, sampled);
    EXPECT_TRUE(out.ok()) << out.status();
    *stats = (*engine)->last_decode_stats();
    return *out;
  };
  RolloutEngine::DecodeStats with, without;
  const auto captured = run(true, &with);
  const auto issued = run(false, &without);
  EXPECT_GT(with.graphs, 1) << "rows retire: more than one padded row count";
  std::printf("captured decode: %lld graphs, %lld steps replayed, %lld issued\n",
              static_cast<long long>(with.graphs), static_cast<long long>(with.steps_replayed),
              static_cast<long long>(with.steps_issued));
  EXPECT_GT(with.steps_replayed, with.steps_issued);
  EXPECT_EQ(without.graphs, 0);
  EXPECT_EQ(without.steps_replayed, 0);
  EXPECT_EQ(with.steps_issued + with.steps_replayed, without.steps_issued);
  for (size_t p = 0; p < prompts.size(); ++p) {
    EXPECT_EQ(captured[p].tokens, issued[p].tokens) << "prompt " << p;
    EXPECT_EQ(captured[p].logprobs, issued[p].logprobs) << "prompt " << p;
  }
}

TEST(RolloutGpu, APoolThatDoesNotFitNamesTheLargestBatchThatDoes) {
  SKIP_WITHOUT_GPU();
  Model gpu(kGpu, DType::kF32);
  // 2^40 positions of keys and values: no card holds that.
  const auto engine =
      RolloutEngine::create(gpu.model, {.max_rows = int64_t{1} << 26, .max_len = 48});
  ASSERT_FALSE(engine.ok());
  EXPECT_TRUE(absl::StrContains(engine.status().message(), "the largest batch that fits is"))
      << engine.status();
}

}  // namespace
}  // namespace sy
