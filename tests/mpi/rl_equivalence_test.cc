// The RL loop's multi-rank contract: rollouts and one GRPO update of the same global prompts
// give the same completions and the same updated weights on any (data, expert) parallel
// layout as in one process. Rank r of R takes the r-th slice of the global prompts; the
// reference is a single-process trainer that every rank makes by itself.
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "models/generate.h"
#include "models/model_spec.h"
#include "parallel/local_communicator.h"
#include "rl/rl_loop.h"
#include "tests/mpi/mpi_testing.h"
#include "tests/testing/testing.h"
#include "trainer/checkpoint.h"
#include "trainer/commands.h"
#include "trainer/config.h"

namespace sy::rl {
namespace {
using testing::mpi_world;

constexpr int kGlobalPrompts = 4;

// A random policy with every term of the update on: the KL to the reference in the loss, the
// MoE balancing gradient, MTP modules and a shared expert in the model.
switchyard::Experiment config_for(int world, int ep, const std::string& extra = "") {
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
        moe {
          num_experts: 4
          top_k: 2
          expert_hidden: 12
          num_shared_experts: 1
          normalize_topk: true
          aux_loss_coef: 0.01
          seq_aux_loss_coef: 0.01
          z_loss_coef: 0.001
        }
        mtp { num_modules: 1 }
        optimizer { weight_decay: 0.1 grad_clip: 1.0 }
        train { steps: 1 micro_batch: 1 cpu_threads: 1 seed: 11 }
        rl {
          init_checkpoint: "unused"
          steps: 1
          group_size: 4
          lr: 1e-3
          max_new_tokens: 4
          kl_coef: 0.1
          balance_loss_scale: 0.5
          eval_examples: 6
          arithmetic { max_digits: 1 }
        }
      )pb",
      &c));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(extra, &c)) << extra;
  c.mutable_rl()->set_prompts_per_step(kGlobalPrompts / world);
  c.mutable_parallel()->set_expert_parallel_size(ep);
  const absl::Status status = validate_experiment(c);  // resolved: the model included
  SY_CHECK(status.ok()) << status;
  return c;
}

// A task that a random policy scores between 0 and 1, so that the advantages are not all
// zero: the share of even bytes among the completion's first two.
class EvenBytesTask final : public RewardTask {
 public:
  std::string_view name() const override { return "even-bytes"; }
  Prompt sample(uint64_t index, Split split) const override {
    return Prompt{absl::StrCat(index % 89, split == Split::kTrain ? "=" : "?")};
  }
  Score score(const Prompt&, std::string_view completion) const override {
    double even = 0;
    for (size_t i = 0; i < std::min<size_t>(2, completion.size()); ++i)
      even += static_cast<unsigned char>(completion[i]) % 2 == 0;
    return Score{.reward = even / 2, .correct = even == 2, .format_ok = true};
  }
  int64_t max_prompt_tokens() const override { return 3; }
  int64_t max_completion_tokens() const override { return 4; }
};

struct Result {
  std::vector<std::vector<int32_t>> completions;  // this rank's
  std::map<std::string, Tensor> weights;          // this rank's (its experts only)
  StepMetrics metrics;
  EvalMetrics eval;
};

Result run_one_step(const switchyard::Experiment& config, Communicator& world) {
  auto trainer = RlTrainer::create(config, world, std::make_unique<EvenBytesTask>());
  SY_CHECK(trainer.ok()) << trainer.status();
  Result r;
  auto rollouts = (*trainer)->rollout(0);
  SY_CHECK(rollouts.ok());
  SY_CHECK((*trainer)->score(*rollouts).ok());
  r.completions = rollouts->completions;
  const Batch batch = (*trainer)->make_batch(*rollouts, r.metrics);
  (*trainer)->update(batch, r.metrics);
  for (Param* p : (*trainer)->policy_store().params()) r.weights[p->name] = p->value.clone();
  r.eval = (*trainer)->evaluate();
  return r;
}

// `extra` merged over every layout's config.
void expect_one_step_matches_one_process(const std::string& extra) {
  Communicator& world = mpi_world();
  LocalCommunicator alone;
  const Result reference = run_one_step(config_for(1, 1, extra), alone);
  ASSERT_EQ(reference.completions.size(), 16u);
  ASSERT_GT(reference.metrics.reward_mean, 0.0);
  ASSERT_LT(reference.metrics.reward_mean, 1.0);

  struct Layout {
    int dp, ep;
  };
  for (Layout l : {Layout{1, 2}, Layout{2, 1}, Layout{2, 2}, Layout{1, 4}}) {
    const int size = l.dp * l.ep;
    if (size > world.size()) continue;
    const std::string what = absl::StrCat("layout (dp, ep) = (", l.dp, ", ", l.ep, ")");
    const bool member = world.rank() < size;
    auto group = world.split(member ? 0 : 1, world.rank());
    if (member) {
      const Result got = run_one_step(config_for(size, l.ep, extra), *group);
      // Rank r sampled the completions of the global prompts [r·P, (r+1)·P).
      const size_t per_rank = reference.completions.size() / size;
      ASSERT_EQ(got.completions.size(), per_rank) << what;
      for (size_t i = 0; i < per_rank; ++i) {
        EXPECT_EQ(got.completions[i], reference.completions[group->rank() * per_rank + i])
            << what << ": completion " << i << " of rank " << group->rank();
      }
      EXPECT_NEAR(got.metrics.reward_mean, reference.metrics.reward_mean, 1e-12) << what;
      EXPECT_NEAR(got.metrics.kl, reference.metrics.kl, 1e-9) << what;
      EXPECT_EQ(got.metrics.routing_mismatch, 0.0) << what;
      // Rollout against old-policy log-probs: both f32, apart by rounding alone (~1e-7), which
      // the layout's batch shapes move.
      EXPECT_LT(got.metrics.rollout_logprob_diff, 1e-6) << what;
      EXPECT_NEAR(got.metrics.policy_loss, reference.metrics.policy_loss,
                  1e-5 * std::fabs(reference.metrics.policy_loss) + 1e-9)
          << what;
      EXPECT_EQ(got.eval.correct, reference.eval.correct) << what;
      // The updated weights: dense ones whole, experts this rank's slice of the stack.
      for (const auto& [name, value] : got.weights) {
        const Tensor& full = reference.weights.at(name);
        Tensor want = full;
        if (value.shape() != full.shape()) {
          const int64_t local = value.dim(0), first = (group->rank() % l.ep) * local;
          want = full.rows(first, first + local);
        }
        EXPECT_TRUE(testing::all_close(value, want, 1e-5, 1e-6)) << what << ": " << name;
      }
    }
    world.barrier();
  }
}

TEST(RlEquivalence, RolloutsAndOneGrpoUpdateMatchOneProcess) {
  expect_one_step_matches_one_process("");
}

// With the rollouts' routes replayed by the old-policy, reference and update forwards
// (rl.routing_replay), expert parallelism included.
TEST(RlEquivalence, RolloutsAndOneGrpoUpdateWithRoutingReplayMatchOneProcess) {
  expect_one_step_matches_one_process("rl { routing_replay: REPLAY_ROLLOUT }");
}

// An expert-parallel run's checkpoint (every EP rank writes its experts) loads into one
// process holding every expert, and `switchyard generate` continues a prompt from it exactly
// as the single-process policy after the same update does.
TEST(RlEquivalence, AnExpertParallelCheckpointLoadsIntoOneProcessAndGenerates) {
  Communicator& world = mpi_world();
  if (world.size() < 2) GTEST_SKIP() << "needs two ranks or more";
  const int ep = world.size();
  const std::string dir =
      (std::filesystem::path(::testing::TempDir()) / absl::StrCat("switchyard_rl_ep_np", ep))
          .string();
  if (world.rank() == 0) std::filesystem::remove_all(dir);
  world.barrier();
  const switchyard::Experiment config = config_for(ep, ep);
  auto trainer = RlTrainer::create(config, world, std::make_unique<EvenBytesTask>());
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  auto rollouts = (*trainer)->rollout(0);
  ASSERT_TRUE(rollouts.ok() && (*trainer)->score(*rollouts).ok());
  StepMetrics metrics;
  (*trainer)->update((*trainer)->make_batch(*rollouts, metrics), metrics);
  ASSERT_TRUE((*trainer)->save(dir, 1).ok());
  if (world.rank() == 0) {
    EXPECT_TRUE(
        std::filesystem::exists(std::filesystem::path(dir) / "checkpoints" / "step_00000001" /
                                absl::StrCat("experts-ep", ep - 1, ".safetensors")));
    std::ofstream(std::filesystem::path(dir) / "config.textproto")
        << resolved_experiment_text(config);
    LocalCommunicator alone;
    const Result reference = run_one_step(config_for(1, 1), alone);
    auto latest = latest_checkpoint(dir);
    ASSERT_TRUE(latest.ok()) << latest.status();
    ParamStore store(Device::cpu());
    Transformer model(model_spec_from_config(config), store);
    ASSERT_TRUE(load_checkpoint(*latest, store, nullptr, {.expert_parallel = 1}).ok());
    for (Param* p : store.params()) {
      EXPECT_TRUE(testing::all_close(p->value, reference.weights.at(p->name), 1e-5, 1e-6))
          << p->name;
    }
    // With the optimizer (a resume) too: the moments of every EP rank's experts, joined.
    AdamW optimizer(store, {});
    const absl::Status resumed =
        load_checkpoint(*latest, store, &optimizer, {.expert_parallel = 1}).status();
    EXPECT_TRUE(resumed.ok()) << resumed;
    EXPECT_GT(optimizer.steps_taken(), 0);

    const std::vector<int32_t> prompt = {'1', '2', '='};
    const std::vector<int32_t> want =
        generate(model, {prompt}, {.temperature = 0, .max_new_tokens = 4}).value()[0];
    std::ostringstream out;
    const absl::Status s =
        run_generate_command({"--checkpoint", dir, "--prompt", "12=", "--max_new_tokens", "4",
                              "--stop_at_eos=false"},
                             out);
    ASSERT_TRUE(s.ok()) << s;
    std::string text = "12=";
    for (int32_t t : want) text.push_back(static_cast<char>(t));
    EXPECT_EQ(out.str(), text + "\n");
  }
  world.barrier();
}

}  // namespace
}  // namespace sy::rl
