// The rollout engine under expert parallelism: every rank holds 1/P of the experts and its
// own share of the prompts (uneven, the last rank none, so it joins every step with an idle
// row), with global row ids; each rank's completions, tokens and log-probs, equal those of
// one process holding every expert and decoding every prompt, whatever each side's capacity
// and check interval. Also: a refused prompt on one rank is refused on every rank (no rank is
// left waiting in a collective step).
#include "models/generate.h"

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/mpi/mpi_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::mpi_world;

ModelSpec spec(int experts) {
  ModelSpec s;
  s.vocab_size = 13;
  s.d_model = 16;
  s.n_layers = 2;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.seq_len = 24;
  s.dense_ffn_hidden = 24;
  s.first_k_dense = 1;
  s.init_std = 0.5f;
  s.moe.num_experts = experts;
  s.moe.top_k = 2;
  s.moe.expert_hidden = 8;
  s.moe.capacity_factor = 1.0;  // ignored by inference (dropless)
  return s;
}

TEST(ExpertParallelGenerate, MatchesOneProcessWhateverTheLayout) {
  Communicator& world = mpi_world();
  const int ranks = world.size(), rank = world.rank();
  const ModelSpec s = spec(2 * ranks);
  // The same prompts on every rank (from one generator), lengths 1 to 9.
  auto rng = testing::rng_for_test();
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 4 * ranks + 1; ++i)
    prompts.push_back(testing::random_ints({1 + (i * 5) % 9}, 0, 13, rng).to_i32_vector());
  const SamplingOptions opt{
      .temperature = 1.0f, .top_p = 0.9f, .max_new_tokens = 10, .stop_tokens = {3}, .seed = 4};

  ParamStore ref_store;
  Transformer ref(s, ref_store);
  ref_store.initialize(8);
  const auto want = generate_completions(ref, prompts, opt, nullptr, 0, {.max_rows = 64});
  ASSERT_TRUE(want.ok()) << want.status();

  ParamStore store;
  Transformer model(s, store, ModelParallel{.world = &world, .ep = &world});
  store.initialize(8);
  // Rank 0 takes half the prompts (all of them with 2 ranks), the middle ranks share the
  // rest, the last rank has none.
  const int64_t n = static_cast<int64_t>(prompts.size());
  std::vector<int64_t> bounds(ranks + 1, n);
  bounds[0] = 0;
  if (ranks > 2) {
    bounds[1] = n / 2;
    for (int r = 2; r < ranks; ++r) bounds[r] = n / 2 + (n - n / 2) * (r - 1) / (ranks - 2);
  }
  const int64_t lo = bounds[rank], hi = bounds[rank + 1];
  const std::vector<std::vector<int32_t>> mine(prompts.begin() + lo, prompts.begin() + hi);
  for (const EngineOptions& engine : {EngineOptions{.max_rows = 2, .check_interval = 3},
                                      EngineOptions{.max_rows = 16, .check_interval = 1}}) {
    const auto got = generate_completions(model, mine, opt, &world, lo, engine);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(static_cast<int64_t>(got->size()), hi - lo);
    for (int64_t i = lo; i < hi; ++i) {
      const Completion& g = (*got)[i - lo];
      const Completion& w = (*want)[i];
      EXPECT_EQ(g.tokens, w.tokens) << "rank " << rank << " prompt " << i;
      EXPECT_EQ(g.finish, w.finish) << "rank " << rank << " prompt " << i;
      ASSERT_EQ(g.logprobs.size(), w.logprobs.size());
      for (size_t k = 0; k < g.logprobs.size(); ++k)
        EXPECT_NEAR(g.logprobs[k], w.logprobs[k], 1e-5) << "rank " << rank << " prompt " << i;
    }
  }

  // Rank 0 passes a prompt longer than the context; every rank returns an error.
  std::vector<std::vector<int32_t>> bad = mine;
  if (rank == 0) bad.push_back(std::vector<int32_t>(s.seq_len + 1, 1));
  const auto refused = generate_completions(model, bad, opt, &world, lo);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::StrContains(refused.status().message(),
                                rank == 0 ? "longer than the model's context" : "another rank"))
      << refused.status();
}

}  // namespace
}  // namespace sy
