// The rollout engine's working memory, estimated before an engine exists: the estimate is what
// create() reserves beside the KV pool for the same options (max_len 0 read as seq_len, a
// prefill forward of max(prefill_tokens, max_len) tokens, a share per row), and the RL memory
// check adds exactly the engine that generate() builds for a step's rollouts.
#include <algorithm>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "kernels/check.h"
#include "models/param_store.h"
#include "models/rollout/engine.h"
#include "models/rollout/kv_pool.h"
#include "models/transformer.h"
#include "rl/rl_trainer.h"
#include "trainer/memory_estimate.h"

namespace sy {
namespace {

ModelSpec spec() {
  ModelSpec s;
  s.vocab_size = 40;
  s.d_model = 16;
  s.n_layers = 2;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.seq_len = 24;
  s.dense_ffn_hidden = 24;
  s.first_k_dense = 1;
  s.moe.num_experts = 4;
  s.moe.top_k = 2;
  s.moe.expert_hidden = 8;
  s.moe.num_shared_experts = 1;
  return s;
}

class RolloutWorkspace : public ::testing::Test {
 protected:
  RolloutWorkspace() : model_(spec_, store_) { store_.initialize(1); }

  int64_t reserved(const EngineOptions& options) {
    auto engine = RolloutEngine::create(model_, options);
    SY_CHECK(engine.ok()) << engine.status();
    return (*engine)->workspace_bytes();
  }

  const ModelSpec spec_ = spec();
  ParamStore store_;
  Transformer model_;
};

TEST_F(RolloutWorkspace, TheEstimateIsWhatTheEngineReserves) {
  for (const EngineOptions& o :
       {EngineOptions{}, EngineOptions{.max_rows = 3, .max_len = 20},
        // A token budget below one row: the prefill still holds a whole row.
        EngineOptions{.max_rows = 2, .max_len = 20, .prefill_tokens = 5},
        EngineOptions{.max_rows = 5, .prefill_tokens = 7}}) {
    SCOPED_TRACE(::testing::Message() << "max_rows " << o.max_rows << " max_len " << o.max_len
                                      << " prefill_tokens " << o.prefill_tokens);
    const int64_t estimate = estimate_rollout_workspace_bytes(spec_, o, DType::kF32);
    EXPECT_GT(estimate, 0);
    EXPECT_EQ(reserved(o), estimate);
  }
}

TEST_F(RolloutWorkspace, ThePrefillHoldsAtLeastOneRowAndEachRowAddsItsShare) {
  // max_len 0 is the model's seq_len (24), which a 5-token budget cannot hold.
  EXPECT_EQ(reserved({.max_rows = 2, .prefill_tokens = 5}),
            reserved({.max_rows = 2, .max_len = 24, .prefill_tokens = 5}));
  EXPECT_EQ(reserved({.max_rows = 2, .prefill_tokens = 5}),
            reserved({.max_rows = 2, .prefill_tokens = 24}));
  EXPECT_GT(reserved({.max_rows = 2, .prefill_tokens = 25}),
            reserved({.max_rows = 2, .prefill_tokens = 24}));
  // The per-row share is the same for every row: linear in max_rows.
  const int64_t one_row = reserved({.max_rows = 2}) - reserved({.max_rows = 1});
  EXPECT_GT(one_row, 0);
  EXPECT_EQ(reserved({.max_rows = 7}) - reserved({.max_rows = 3}), 4 * one_row);
}

TEST_F(RolloutWorkspace, TheRlMemoryCheckCountsTheEnginesWorkingMemory) {
  const MemoryPlan policy{.micro_batch = 4, .seq_len = 20};
  for (const int64_t rows : {int64_t{6}, int64_t{100}}) {
    SCOPED_TRACE(::testing::Message() << rows << " rollout rows");
    const rl::RlMemoryPlan plan{
        .policy = policy, .critic = true, .rollout_rows = rows, .rollout_len = 20};
    const MemoryEstimate rl = rl::estimate_rl_memory(spec_, plan);
    // What generate() builds for the step: a row per completion up to the default max_rows,
    // each as long as a row gets.
    const int64_t engine_rows = std::min(rows, EngineOptions{}.max_rows);
    const int64_t workspace = reserved({.max_rows = engine_rows, .max_len = 20});

    // Everything else, part by part: the policy, the reference's weights, the critic's
    // training state, the KV pool.
    const MemoryEstimate trained = estimate_memory(spec_, policy);
    MemoryPlan frozen = policy;
    frozen.training = false;
    const int64_t reference = estimate_memory(spec_, frozen).weight_bytes;
    const int64_t critic = trained.weight_bytes + trained.gradient_bytes + trained.optimizer_bytes;
    const int64_t pool = KvPoolShape{.layers = spec_.n_layers,
                                     .slots = engine_rows,
                                     .max_len = 20,
                                     .kv_heads = spec_.n_kv_heads,
                                     .head_dim = spec_.head_dim()}
                             .bytes(DType::kF32);
    const int64_t without = trained.total() + reference + critic + pool;
    EXPECT_EQ(rl.total(), without + workspace);
    EXPECT_EQ(rl.activation_bytes, trained.activation_bytes + workspace);

    // So a device with room for all but the engine's forwards is refused; room for the whole
    // is enough.
    const absl::Status refused = check_memory_fits(rl, without, Device::cpu(), "RL with PPO");
    EXPECT_TRUE(absl::IsResourceExhausted(refused)) << refused;
    EXPECT_TRUE(absl::StrContains(refused.message(), "RL with PPO needs ")) << refused;
    EXPECT_TRUE(check_memory_fits(rl, without + workspace, Device::cpu(), "RL with PPO").ok());
  }
}

}  // namespace
}  // namespace sy
