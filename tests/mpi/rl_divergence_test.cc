// Non-finite RL batches across ranks: a NaN or infinite value on one rank only (here the last)
// makes every rank skip the same step with the same reason, no rank's weights change, and the
// ranks stay in step (the next, clean step trains everywhere and keeps the replicas equal).
// The single-process behaviour is tests/unit/rl_divergence_test.cc.
#include <algorithm>
#include <limits>
#include <map>

#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "rl/rl_loop.h"
#include "tests/mpi/mpi_testing.h"
#include "trainer/config.h"

namespace sy::rl {
namespace {
using testing::mpi_world;

switchyard::Experiment config_for(int world) {
  switchyard::Experiment c;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(
      R"pb(
        device: DEVICE_CPU
        model {
          vocab_size: 64
          d_model: 16
          n_layers: 2
          n_heads: 2
          n_kv_heads: 1
          seq_len: 9
          first_k_dense: 1
          dense_ffn_hidden: 24
          init_std: 0.3
        }
        moe { num_experts: 4 top_k: 2 expert_hidden: 12 normalize_topk: true }
        optimizer { weight_decay: 0.1 grad_clip: 1.0 }
        train { steps: 1 micro_batch: 1 cpu_threads: 1 seed: 11 }
        rl {
          init_checkpoint: "unused"
          steps: 1
          prompts_per_step: 2
          group_size: 4
          lr: 1e-2
          max_new_tokens: 4
          kl_coef: 0.1
          target_kl: 0.01
          eval_examples: 2
          arithmetic { max_digits: 1 }
        }
      )pb",
      &c));
  c.mutable_rl()->set_prompts_per_step(std::max(1, 4 / world));
  const absl::Status status = validate_experiment(c);
  SY_CHECK(status.ok()) << status;
  return c;
}

std::map<std::string, std::vector<float>> weights(ParamStore& store) {
  std::map<std::string, std::vector<float>> out;
  for (const Param* p : store.params()) out[p->name] = p->value.to_f32_vector();
  return out;
}

TEST(RlDivergence, ANonFiniteValueOnOneRankSkipsTheStepOnEveryRank) {
  Communicator& world = mpi_world();
  const int last = world.size() - 1;
  auto trainer = RlTrainer::create(config_for(world.size()), world);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  set_batch_hook_for_testing([&](int64_t step, std::vector<float>&, Batch& batch) {
    if (step != 0 || world.rank() != last) return;
    const std::vector<float> mask = batch.mask.to_f32_vector();
    for (size_t i = 0; i < mask.size(); ++i) {
      if (mask[i] == 0) continue;
      batch.ref_logp.data<float>()[i] = -std::numeric_limits<float>::infinity();
      return;
    }
  });
  const auto before = weights((*trainer)->policy_store());
  const double coef = (*trainer)->kl_coef();
  auto skipped = (*trainer)->step(0);
  ASSERT_TRUE(skipped.ok()) << skipped.status();
  EXPECT_EQ(skipped->skipped, "nan/inf KL at 1 tokens") << "rank " << world.rank();
  EXPECT_EQ(weights((*trainer)->policy_store()), before) << "rank " << world.rank();
  EXPECT_EQ((*trainer)->kl_coef(), coef);

  auto next = (*trainer)->step(1);
  set_batch_hook_for_testing(nullptr);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_TRUE(next->skipped.empty()) << next->skipped;
  const auto after = weights((*trainer)->policy_store());
  EXPECT_NE(after, before);
  // Dense weights are replicas: every rank took the same update.
  const std::vector<float>& embedding = after.begin()->second;
  std::vector<double> spread = {0};
  for (float v : embedding) spread[0] += v;
  std::vector<double> high = spread, low = {-spread[0]};
  world.all_reduce_host(high, ReduceOp::kMax);
  world.all_reduce_host(low, ReduceOp::kMax);
  EXPECT_EQ(high[0], -low[0]) << after.begin()->first << " differs between ranks";
}

}  // namespace
}  // namespace sy::rl
