// Generation on the rollout engine (CPU, the reference backend): greedy decoding of a ragged
// batch equals one prompt at a time and a reference decode by repeated full forwards;
// completions do not depend on the engine's capacity (continuous batching), check interval
// or prefill budget, nor on a MoE layer's capacity factor (inference is dropless); sampled
// log-probs equal a training forward's; stop tokens, stop strings, max_new_tokens and the
// context end rows exactly where they should; bad options and prompts are refused.
#include "models/generate.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

ModelSpec spec() {
  ModelSpec s;
  s.vocab_size = 13;
  s.d_model = 16;
  s.n_layers = 2;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.seq_len = 16;
  s.dense_ffn_hidden = 24;
  s.first_k_dense = 1;
  s.init_std = 0.5f;  // peaked logits, so sampling has something to choose between
  s.moe.num_experts = 4;
  s.moe.top_k = 2;
  s.moe.expert_hidden = 8;
  s.mtp_modules = 1;
  return s;
}

using Prompts = std::vector<std::vector<int32_t>>;

// Prompts of lengths 1 to 7, in mixed order.
Prompts ragged_prompts() {
  auto rng = testing::rng_for_test();
  Prompts out;
  for (int len : {3, 1, 7, 2, 5, 4, 6}) {
    const std::vector<int32_t> ids = testing::random_ints({len}, 0, 13, rng).to_i32_vector();
    out.push_back(ids);
  }
  return out;
}

class Generation : public ::testing::Test {
 protected:
  Generation() : model_(spec_, store_) { store_.initialize(3); }

  std::vector<Completion> complete(const Prompts& prompts, const SamplingOptions& options,
                                   const EngineOptions& engine = {}, uint64_t first_row = 0) {
    auto out = generate_completions(model_, prompts, options, nullptr, first_row, engine);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : std::vector<Completion>(prompts.size());
  }

  ModelSpec spec_ = spec();
  ParamStore store_;
  Transformer model_;
};

void expect_same(const std::vector<Completion>& got, const std::vector<Completion>& want,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].tokens, want[i].tokens) << what << ", prompt " << i;
    EXPECT_EQ(got[i].finish, want[i].finish) << what << ", prompt " << i;
    ASSERT_EQ(got[i].logprobs.size(), want[i].logprobs.size()) << what << ", prompt " << i;
    for (size_t k = 0; k < got[i].logprobs.size(); ++k)
      EXPECT_NEAR(got[i].logprobs[k], want[i].logprobs[k], 1e-5) << what << ", prompt " << i;
  }
}

TEST_F(Generation, GreedyRaggedBatchEqualsOneAtATimeAndFullForwards) {
  const Prompts prompts = ragged_prompts();
  const SamplingOptions greedy{.temperature = 0.0f, .max_new_tokens = 6};
  const std::vector<Completion> batch = complete(prompts, greedy);
  for (size_t p = 0; p < prompts.size(); ++p) {
    // The reference: the whole growing sequence through Transformer::logits each step.
    std::vector<int32_t> seq = prompts[p];
    for (int step = 0; step < 6; ++step) {
      Tensor ids = Tensor::from_i32(seq, {1, static_cast<int64_t>(seq.size())});
      const std::vector<float> l = model_.logits(ids, true).to_f32_vector();
      const int32_t argmax = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
      ASSERT_EQ(batch[p].tokens.at(step), argmax) << "prompt " << p << " step " << step;
      double z = 0;
      for (float x : l) z += std::exp(double(x) - l[argmax]);
      EXPECT_NEAR(batch[p].logprobs[step], -std::log(z), 1e-5) << "prompt " << p;
      seq.push_back(argmax);
    }
    EXPECT_EQ(batch[p].finish, FinishReason::kMaxTokens);
    expect_same(complete({prompts[p]}, greedy), {batch[p]}, "alone");
  }
  // A vanishing temperature samples the argmax too.
  const std::vector<Completion> cold =
      complete(prompts, {.temperature = 1e-6f, .max_new_tokens = 6, .seed = 9});
  for (size_t p = 0; p < prompts.size(); ++p) EXPECT_EQ(cold[p].tokens, batch[p].tokens);
}

TEST_F(Generation, CapacityIntervalAndPrefillBudgetDoNotChangeCompletions) {
  Prompts prompts = ragged_prompts();
  for (const auto& p : ragged_prompts()) prompts.push_back(p);  // 14 rows, identical pairs
  const SamplingOptions opt{.temperature = 1.0f,
                            .sampling_top_k = 6,
                            .top_p = 0.95f,
                            .min_p = 0.02f,
                            .max_new_tokens = 8,
                            .stop_tokens = {5},
                            .seed = 17};
  const std::vector<Completion> want = complete(prompts, opt, {.max_rows = 16});
  // Identical prompts in different rows sample independently.
  bool some_pair_differs = false;
  for (size_t i = 0; i < 7; ++i) some_pair_differs |= want[i].tokens != want[i + 7].tokens;
  EXPECT_TRUE(some_pair_differs);
  bool some_row_stopped = false;
  for (const Completion& c : want) some_row_stopped |= c.finish == FinishReason::kStopToken;
  EXPECT_TRUE(some_row_stopped) << "pick a stop token the sampler reaches";
  for (int64_t rows : {1, 3, 16}) {
    for (int interval : {1, 3, 8}) {
      expect_same(complete(prompts, opt,
                           {.max_rows = rows, .check_interval = interval, .prefill_tokens = 9}),
                  want,
                  "max_rows " + std::to_string(rows) + ", interval " + std::to_string(interval));
    }
  }
  // Row 9 alone, with its row id, gets the completion it gets inside the batch.
  expect_same(complete({prompts[9]}, opt, {}, 9), {want[9]}, "row 9 alone");
  SamplingOptions other = opt;
  other.seed = 18;
  const std::vector<Completion> reseeded = complete(prompts, other);
  bool changed = false;
  for (size_t i = 0; i < prompts.size(); ++i) changed |= reseeded[i].tokens != want[i].tokens;
  EXPECT_TRUE(changed);
}

TEST_F(Generation, SampledLogprobsEqualATrainingForward) {
  const Prompts prompts = ragged_prompts();
  for (float temperature : {0.7f, 1.3f}) {
    const std::vector<Completion> got = complete(
        prompts, {.temperature = temperature, .top_p = 0.9f, .max_new_tokens = 7, .seed = 5});
    for (size_t p = 0; p < prompts.size(); ++p) {
      // inputs = sequence[:-1]; the completion's tokens are the targets where they are predicted.
      std::vector<int32_t> seq = prompts[p];
      seq.insert(seq.end(), got[p].tokens.begin(), got[p].tokens.end());
      const int64_t t = static_cast<int64_t>(seq.size()) - 1;
      std::vector<int32_t> targets(t, kIgnoreIndex);
      const int64_t first = static_cast<int64_t>(prompts[p].size()) - 1;
      for (size_t k = 0; k < got[p].tokens.size(); ++k) targets[first + k] = got[p].tokens[k];
      const Tensor logp =
          model_
              .token_logprobs(
                  Tensor::from_i32(std::vector<int32_t>(seq.begin(), seq.end() - 1), {1, t}),
                  Tensor::from_i32(targets, {1, t}), false, temperature)
              .logp;
      ASSERT_EQ(got[p].logprobs.size(), got[p].tokens.size());
      for (size_t k = 0; k < got[p].tokens.size(); ++k) {
        EXPECT_NEAR(got[p].logprobs[k], logp.data<float>()[first + k], 1e-5)
            << "T " << temperature << " prompt " << p << " token " << k;
      }
    }
  }
}

TEST_F(Generation, CompletionsDoNotDependOnBatchMatesUnderACapacityFactor) {
  // Trained with capacity dropping, the model still generates dropless: a prompt's tokens
  // are the same alone and in a batch that would overflow the capacity.
  ModelSpec s = spec();
  s.moe.capacity_factor = 0.5;
  ParamStore store;
  Transformer model(s, store);
  store.initialize(4);
  const Prompts prompts = ragged_prompts();
  const SamplingOptions greedy{.temperature = 0.0f, .max_new_tokens = 5};
  const auto batch = generate(model, prompts, greedy);
  ASSERT_TRUE(batch.ok()) << batch.status();
  for (size_t p = 0; p < prompts.size(); ++p) {
    const auto alone = generate(model, {prompts[p]}, greedy);
    ASSERT_TRUE(alone.ok()) << alone.status();
    EXPECT_EQ((*alone)[0], (*batch)[p]) << "prompt " << p;
  }
}

TEST_F(Generation, StopTokensEndRowsThere) {
  const SamplingOptions free_opt{.temperature = 0.0f, .max_new_tokens = 8};
  const std::vector<int32_t> free_run = complete({{1, 2, 3}}, free_opt)[0].tokens;
  ASSERT_EQ(free_run.size(), 8u);
  SamplingOptions opt = free_opt;
  opt.stop_tokens = {free_run[3]};
  const auto first = std::find(free_run.begin(), free_run.end(), free_run[3]) - free_run.begin();
  for (int interval : {1, 8}) {
    const Completion c = complete({{1, 2, 3}}, opt, {.check_interval = interval})[0];
    EXPECT_EQ(c.tokens, std::vector<int32_t>(free_run.begin(), free_run.begin() + first + 1));
    EXPECT_EQ(c.logprobs.size(), c.tokens.size());
    EXPECT_EQ(c.finish, FinishReason::kStopToken);
  }
}

TEST_F(Generation, StopStringsCutRightAfterTheStop) {
  const SamplingOptions free_opt{.temperature = 0.0f, .max_new_tokens = 9};
  const Completion free_run = complete({{4, 5}}, free_opt)[0];
  ASSERT_EQ(free_run.tokens.size(), 9u);
  // Tokens spell letters; the stop string is the text of free-run tokens 2..3.
  auto piece = [](int32_t t) { return std::string(1, static_cast<char>('a' + t)); };
  const std::string stop = piece(free_run.tokens[2]) + piece(free_run.tokens[3]);
  std::string text;
  for (int32_t t : free_run.tokens) text += piece(t);
  const int64_t end = static_cast<int64_t>(text.find(stop) + stop.size());
  SamplingOptions opt = free_opt;
  opt.stop_check = stop_at_strings({"zz", stop}, piece);
  for (int interval : {1, 2, 5, 16}) {
    const Completion c = complete({{4, 5}}, opt, {.check_interval = interval})[0];
    EXPECT_EQ(c.tokens,
              std::vector<int32_t>(free_run.tokens.begin(), free_run.tokens.begin() + end))
        << "interval " << interval;
    EXPECT_EQ(c.logprobs,
              std::vector<float>(free_run.logprobs.begin(), free_run.logprobs.begin() + end));
    EXPECT_EQ(c.finish, FinishReason::kStopString);
  }
  // The predicate sees the completion so far and nothing else.
  EXPECT_EQ(stop_at_strings({"cd"}, piece)(std::vector<int32_t>{0, 2, 3, 4}), 3);
  EXPECT_EQ(stop_at_strings({"cd"}, piece)(std::vector<int32_t>{0, 2, 4, 3}), -1);
}

TEST_F(Generation, BudgetsAndTheContextEndRows) {
  const Prompts prompts = ragged_prompts();
  for (int budget : {0, 1, 4}) {
    const auto got = complete(prompts, {.temperature = 1.0f, .max_new_tokens = budget});
    for (const Completion& c : got) {
      EXPECT_EQ(c.tokens.size(), static_cast<size_t>(budget));
      EXPECT_EQ(c.finish, FinishReason::kMaxTokens);
    }
  }
  // The model reads at most seq_len (16) positions: prompt + completion stop at 17 tokens, the
  // last one sampled from the full context. A prompt of 14 takes 3 new tokens, one of 16 one.
  auto rng = testing::rng_for_test();
  const std::vector<int32_t> p14 = testing::random_ints({14}, 0, 13, rng).to_i32_vector();
  const std::vector<int32_t> p16 = testing::random_ints({16}, 0, 13, rng).to_i32_vector();
  const auto got = complete({p14, {1, 2}, p16}, {.temperature = 0.0f, .max_new_tokens = 10});
  EXPECT_EQ(got[0].tokens.size(), 3u);
  EXPECT_EQ(got[0].finish, FinishReason::kContext);
  EXPECT_EQ(got[1].tokens.size(), 10u);
  EXPECT_EQ(got[1].finish, FinishReason::kMaxTokens);
  ASSERT_EQ(got[2].tokens.size(), 1u);
  EXPECT_EQ(got[2].finish, FinishReason::kContext);
  // That last token is the full forward's argmax at the context's last position.
  const std::vector<float> l = model_.logits(Tensor::from_i32(p16, {1, 16}), true).to_f32_vector();
  EXPECT_EQ(got[2].tokens[0], std::max_element(l.begin(), l.end()) - l.begin());
}

TEST_F(Generation, RefusesBadOptionsAndPrompts) {
  auto refused = [&](const Prompts& prompts, const SamplingOptions& o, const std::string& says,
                     const EngineOptions& engine = {}) {
    const auto got = generate_completions(model_, prompts, o, nullptr, 0, engine);
    ASSERT_FALSE(got.ok()) << "expected a refusal saying " << says;
    EXPECT_TRUE(absl::StrContains(got.status().message(), says)) << got.status();
  };
  const Prompts ok = {{1, 2}};
  refused(ok, {.temperature = std::nanf("")}, "temperature is NaN");
  refused(ok, {.top_p = 0.0f}, "top_p 0 is outside (0, 1]");
  refused(ok, {.top_p = 1.5f}, "top_p 1.5 is outside (0, 1]");
  refused(ok, {.min_p = 1.0f}, "min_p 1 is outside [0, 1)");
  refused(ok, {.min_p = -0.1f}, "min_p -0.1 is outside [0, 1)");
  refused(ok, {.sampling_top_k = -1}, "top_k -1 is negative");
  refused(ok, {.max_new_tokens = -1}, "max_new_tokens -1 is negative");
  refused({{1}, std::vector<int32_t>(17, 1)}, {},
          "prompt 1 has 17 tokens, longer than the "
          "model's context of 16");
  refused({{1}, {}}, {}, "prompt 1 is empty");
  refused({{1, 13}}, {}, "prompt 0 holds token 13, outside the vocabulary of 13");
  refused(ok, {}, "check_interval 0", {.check_interval = 0});
  refused(ok, {}, "max_rows 0", {.max_rows = 0});
  // An engine made too short for a prompt and its budget says so.
  auto engine = RolloutEngine::create(model_, {.max_rows = 2, .max_len = 4});
  ASSERT_TRUE(engine.ok()) << engine.status();
  const auto got = (*engine)->generate({{1, 2, 3}}, {.max_new_tokens = 3});
  ASSERT_FALSE(got.ok());
  EXPECT_TRUE(absl::StrContains(got.status().message(), "prompt 0 has 3 tokens and may take 3"))
      << got.status();
  EXPECT_TRUE((*engine)->generate({{1, 2, 3}}, {.max_new_tokens = 2}).ok());
}

TEST_F(Generation, OneEngineServesCallAfterCall) {
  // The pool is allocated once; slots freed by one call serve the next.
  auto engine = RolloutEngine::create(model_, {.max_rows = 3, .check_interval = 2});
  ASSERT_TRUE(engine.ok()) << engine.status();
  const Prompts prompts = ragged_prompts();
  const SamplingOptions opt{.temperature = 1.0f, .max_new_tokens = 5, .seed = 3};
  const auto a = (*engine)->generate(prompts, opt);
  const auto b = (*engine)->generate(prompts, opt);
  ASSERT_TRUE(a.ok() && b.ok());
  expect_same(*b, *a, "second call");
  expect_same(*a, complete(prompts, opt), "sized engine");
}

}  // namespace
}  // namespace sy
