// Loading a Hugging Face checkpoint straight into an expert-parallel layout: with
// rl.init_checkpoint naming the directory, every rank reads its own experts' tensors (and the
// dense ones), holds exactly the rows a single process would give it, and the sharded policy
// computes transformers' logits.
#include <string>

#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "models/transformer.h"
#include "rl/rl_loop.h"
#include "tests/mpi/mpi_testing.h"
#include "tests/testing/testing.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/safetensors.h"

namespace sy::rl {
namespace {

std::string mixtral() { return std::string(SWITCHYARD_SOURCE_DIR) + "/tests/data/hf/mixtral"; }

TEST(HfLoad, EachExpertParallelRankHoldsItsExpertsAndTheLogitsMatch) {
  Communicator& world = testing::mpi_world();
  switchyard::Experiment config;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(
      absl::StrCat(R"pb(
                     device: DEVICE_CPU
                     train { steps: 1 micro_batch: 1 cpu_threads: 1 seed: 3 }
                     rl { steps: 1 prompts_per_step: 1 group_size: 2 max_new_tokens: 2
                          arithmetic { max_digits: 1 }
                          init_checkpoint: ")pb",
                   mixtral(), "\" }"),
      &config));
  // Mixtral's 4 experts over every rank (2 or 4).
  config.mutable_parallel()->set_expert_parallel_size(world.size());
  auto resolved = resolve_rl_experiment(config);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  auto trainer = RlTrainer::create(*resolved, world);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  const absl::Status loaded = (*trainer)->load_policy_weights(mixtral());
  ASSERT_TRUE(loaded.ok()) << loaded;

  // The single-process model, every expert in one store, as the reference.
  ParamStore whole;
  Transformer full(model_spec_from_config(*resolved), whole);
  ASSERT_TRUE(load_hf_weights(mixtral(), whole).ok());
  const int64_t local = 4 / world.size(), first = world.rank() * local;
  for (const Param* p : (*trainer)->policy_store().params()) {
    const Tensor& w = whole.find(p->name)->value;
    const Tensor want = p->group == SyncGroup::kExpert ? w.rows(first, first + local).clone() : w;
    ASSERT_EQ(p->value.shape(), want.shape()) << p->name;
    EXPECT_TRUE(testing::all_close(p->value, want, 0, 0)) << p->name << " on rank " << world.rank();
  }
  auto ref = load_safetensors(mixtral() + "/reference.safetensors");
  ASSERT_TRUE(ref.ok());
  const Tensor logits = (*trainer)->policy().logits(ref->tensors.at("input_ids"), false);
  EXPECT_TRUE(testing::all_close(logits, ref->tensors.at("logits"), 1e-4, 1e-4));
}

}  // namespace
}  // namespace sy::rl
