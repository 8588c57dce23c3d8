// Generation: the KV-cache decode reproduces a full forward pass, greedy sampling is the
// argmax, sampling is reproducible from the seed and independent of batching, stop tokens and
// budgets end rows, and top-k / top-p keep only what they should.
#include "models/generate.h"

#include <cmath>

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

class Generation : public ::testing::Test {
 protected:
  Generation() : model_(spec_, store_) { store_.initialize(3); }
  ModelSpec spec_ = spec();
  ParamStore store_;
  Transformer model_;
};

TEST_F(Generation, KvCacheDecodeMatchesFullForward) {
  auto rng = testing::rng_for_test();
  Tensor seq = testing::random_ints({3, 9}, 0, spec_.vocab_size, rng);
  Transformer::DecodeState state;
  // Prompt of 4, then 5 tokens one at a time.
  Tensor prompt = Tensor::empty({3, 4}, DType::kI32);
  for (int r = 0; r < 3; ++r)
    for (int i = 0; i < 4; ++i) prompt.data<int32_t>()[r * 4 + i] = seq.data<int32_t>()[r * 9 + i];
  Tensor got = model_.decode(prompt, state);
  for (int t = 4; t <= 9; ++t) {
    Tensor prefix = Tensor::empty({3, t}, DType::kI32);
    for (int r = 0; r < 3; ++r)
      for (int i = 0; i < t; ++i)
        prefix.data<int32_t>()[r * t + i] = seq.data<int32_t>()[r * 9 + i];
    Tensor want = model_.logits(prefix, true).view({3, spec_.vocab_size});
    EXPECT_TRUE(testing::all_close(got, want, 1e-5, 1e-5)) << "after " << t << " positions";
    if (t == 9) break;
    Tensor next = Tensor::empty({3, 1}, DType::kI32);
    for (int r = 0; r < 3; ++r) next.data<int32_t>()[r] = seq.data<int32_t>()[r * 9 + t];
    got = model_.decode(next, state);
  }
  EXPECT_EQ(state.length, 9);
}

TEST_F(Generation, ZeroTemperatureIsGreedy) {
  std::vector<std::vector<int32_t>> prompts = {{1, 2, 3}, {4, 5, 6}};
  SamplingOptions greedy{.temperature = 0.0f, .max_new_tokens = 6};
  auto out = generate(model_, prompts, greedy);
  for (size_t p = 0; p < prompts.size(); ++p) {
    std::vector<int32_t> seq = prompts[p];
    for (int step = 0; step < 6; ++step) {
      Tensor ids = Tensor::from_i32(seq, {1, static_cast<int64_t>(seq.size())});
      const std::vector<float> l = model_.logits(ids, true).to_f32_vector();
      const int32_t argmax = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
      ASSERT_EQ(out[p][step], argmax) << "prompt " << p << " step " << step;
      seq.push_back(argmax);
    }
  }
  // A vanishing temperature samples the argmax too.
  SamplingOptions cold{.temperature = 1e-6f, .max_new_tokens = 6, .seed = 9};
  EXPECT_EQ(generate(model_, prompts, cold), out);
}

TEST_F(Generation, SameSeedSameRolloutsWhateverTheBatching) {
  std::vector<std::vector<int32_t>> prompts = {{1, 2}, {3, 4}, {5, 6, 7}, {1, 2}};
  SamplingOptions opt{.temperature = 1.0f, .max_new_tokens = 8, .seed = 42};
  auto a = generate(model_, prompts, opt);
  EXPECT_EQ(generate(model_, prompts, opt), a);
  // Row 2 alone, with its row id, gets the same completion as inside the batch.
  EXPECT_EQ(generate(model_, {prompts[2]}, opt, nullptr, 2)[0], a[2]);
  // Identical prompts in different rows sample independently; another seed changes things.
  opt.seed = 43;
  EXPECT_NE(generate(model_, prompts, opt), a);
}

TEST_F(Generation, StopTokensAndBudgetEndRows) {
  SamplingOptions opt{.temperature = 0.0f, .max_new_tokens = 5};
  auto free_run = generate(model_, {{1, 2, 3}}, opt)[0];
  ASSERT_EQ(free_run.size(), 5u);
  opt.stop_tokens = {free_run[2]};
  auto stopped = generate(model_, {{1, 2, 3}}, opt)[0];
  const auto first = std::find(free_run.begin(), free_run.end(), free_run[2]) - free_run.begin();
  EXPECT_EQ(stopped.size(), static_cast<size_t>(first + 1));
  EXPECT_EQ(stopped.back(), free_run[2]);
}

TEST(Sampling, TopKAndTopPKeepOnlyTheirCandidates) {
  const std::vector<float> logits = {0.0f, 3.0f, 1.0f, 2.9f, -1.0f};
  SamplingOptions k2{.temperature = 1.0f, .top_k = 2};
  SamplingOptions p_small{.temperature = 1.0f, .top_p = 0.3f};
  for (int i = 0; i < 200; ++i) {
    const double u = (i + 0.5) / 200;
    const int32_t t = sample_token(logits.data(), 5, k2, u);
    EXPECT_TRUE(t == 1 || t == 3) << t;
    EXPECT_EQ(sample_token(logits.data(), 5, p_small, u), 1);  // the top token alone covers 30%
  }
  // Without cuts, u sweeps every token in order of probability.
  SamplingOptions all{.temperature = 1.0f};
  EXPECT_EQ(sample_token(logits.data(), 5, all, 0.0), 1);
  EXPECT_EQ(sample_token(logits.data(), 5, all, 0.999999), 4);
  // Frequencies follow softmax(logits / T).
  std::vector<int> hits(5, 0);
  const int n = 20000;
  for (int i = 0; i < n; ++i)
    ++hits[sample_token(logits.data(), 5, all, sampling_uniform(1, 0, i))];
  double z = 0;
  for (float l : logits) z += std::exp(l);
  for (int v = 0; v < 5; ++v) EXPECT_NEAR(hits[v] / double(n), std::exp(logits[v]) / z, 0.015) << v;
}

}  // namespace
}  // namespace sy
