#pragma once
// RlTrainer: the policy, its frozen reference and (PPO) the critic, sharded alike, with their
// optimizers, and one RL step over them (rl/rl_loop.h tells the step). Its work lives by
// concept: set-up, checkpoints and the step here (rl/rl_trainer.cc), rollouts and
// evaluation in rl/rollouts.cc, the batch, the losses and the updates in rl/rl_batch.cc.
#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "configs/switchyard.pb.h"
#include "models/param_store.h"
#include "models/transformer.h"
#include "parallel/communicator.h"
#include "parallel/gradient_sync.h"
#include "parallel/process_grid.h"
#include "rl/kl.h"
#include "rl/policy_loss.h"
#include "rl/reward_command.h"
#include "rl/rl_batch.h"
#include "rl/rollouts.h"
#include "rl/tasks.h"
#include "trainer/checkpoint.h"
#include "trainer/data/prompt_template.h"
#include "trainer/data/tokenizer.h"
#include "trainer/memory_estimate.h"
#include "trainer/optimizer.h"

namespace sy::rl {

struct UpdateStats {
  PolicyLossStats policy;  // over the global minibatch
  ValueLossStats value;    // PPO
  double grad_norm = 0;
  double critic_grad_norm = 0;
  bool skipped = false;  // every group of the global minibatch was filtered out
  // The loss or a gradient norm was NaN or infinite: the optimizer whose norm it was took no
  // step (AdamW::step), and the update is left out of the step's means.
  bool non_finite = false;
};

// Global metrics of one step (every rank returns the same).
struct StepMetrics {
  int64_t step = 0;                // 1-based
  double reward_mean = 0;          // of the rewards before any KL penalty
  double accuracy = 0;             // fraction of completions the task judges correct
  double format_rate = 0;          // fraction well-formed
  double kl = 0;                   // token mean of the estimator, rollout policy vs reference
  double kl_sequence = 0;          // mean over completions of their summed KL
  double kl_coef = 0;              // β used this step
  double entropy = 0;              // token mean over completion tokens, rollout policy
  double response_length = 0;      // mean completion tokens
  double clip_fraction = 0;        // mean over the step's updates
  double policy_loss = 0;          // mean over the step's updates (the surrogate)
  double value_loss = 0;           // PPO
  double grad_norm = 0;            // mean over the step's updates
  // Rollout correction (rl.rollout_correction.tis_cap > 0; else 0): the mean TIS weight and
  // the fraction truncated at the cap, over the completion tokens (GSPO: the completions).
  double tis_weight_mean = 0, tis_truncated_fraction = 0;
  // A MoE model's rollout/training mismatch at the sampled tokens (rl/routing_replay.h): the
  // mean |rollout log-prob - old-policy log-prob|, and the fraction of the tokens whose
  // experts in some MoE layer differ from the rollout's (the old-policy forward's own top-k,
  // whether rl.routing_replay replays the rollout's or not). 0 for a dense model.
  double rollout_logprob_diff = 0, routing_mismatch = 0;
  int64_t non_finite_updates = 0;  // updates skipped for a NaN / infinite loss or grad norm
  // Non-empty when the step changed no weights, and why: a non-finite batch (no update was
  // tried, the KL controller kept its β) or every update non-finite. Such steps in a row are
  // counted; more than train.max_skipped_steps end the run (step() returns the error).
  std::string skipped;
  int64_t skipped_in_row = 0;
  int64_t groups = 0, groups_kept = 0;
  // Where the step's time went (seconds on this rank; a GPU's queued work is waited for at
  // the end of each phase): sampling, the task's (or command's) scoring, the old-policy,
  // reference and critic passes of make_batch, and the updates.
  double rollout_s = 0, scoring_s = 0, logprobs_s = 0, update_s = 0;
  int64_t rollout_tokens = 0;  // new tokens sampled over every rank (the stop tokens included)
  // rollout_tokens / rollout_s: the job's rate of new tokens while it samples.
  double rollout_tokens_per_s() const { return rollout_s > 0 ? rollout_tokens / rollout_s : 0; }
  std::vector<UpdateStats> updates;  // epoch-major
};

// On held-out prompts: greedy decoding, and one sample each at the rollout temperature (the
// policy RL optimises; its row ids are fixed, so every evaluation draws the same numbers).
struct EvalMetrics {
  double accuracy = 0;  // greedy
  double reward_mean = 0;
  int64_t correct = 0, total = 0;
  double sampled_accuracy = 0;
  // A stop signal arrived after the greedy pass: the sampled one was not run (its accuracy 0).
  bool stopped = false;
};

// What an RL run holds per rank, estimated before anything is built: the policy's training
// state (`policy`: weights, gradients, AdamW moments and one minibatch's activations), the
// reference's weights, the critic's training state (PPO) and the rollout engine's KV pool for
// `rollout_rows` rows of `rollout_len` positions (the rows decoded at once, at most the
// engine's max_rows), with the engine's working memory beside it
// (estimate_rollout_workspace_bytes) counted among the activations. Every part is summed,
// though the rollouts and the updates take turns (each rollout builds and frees its engine).
struct RlMemoryPlan {
  MemoryPlan policy;
  bool critic = false;
  int64_t rollout_rows = 0, rollout_len = 0;
};
MemoryEstimate estimate_rl_memory(const ModelSpec& spec, const RlMemoryPlan& plan);

class RlTrainer {
 public:
  // `config` is a resolved RL experiment (with the model). A run whose models and rollouts
  // cannot fit this rank's memory (estimate_rl_memory) is refused before anything is built:
  // "... needs X GiB per rank (...), Y GiB available ...". The policy starts from the
  // initialisation of train.seed (load_policy_weights replaces it), the reference and critic
  // from copies of it. `task` replaces the config's task when given (tests). Collective.
  static absl::StatusOr<std::unique_ptr<RlTrainer>> create(
      const switchyard::Experiment& config, Communicator& world,
      std::unique_ptr<RewardTask> task = nullptr);
  ~RlTrainer();

  // Loads the policy from a checkpoint directory (ours, or a Hugging Face model's) and copies
  // it into the reference and the critic's trunk. A checkpoint written without expert
  // parallelism loads into any layout; otherwise the expert-parallel size must match.
  // `progress` (rank 0's console, null for none) gets the load's progress line and summary
  // (trainer/progress.h). Collective.
  absl::Status load_policy_weights(const std::string& checkpoint_dir,
                                   std::ostream* progress = nullptr);
  // Makes the reference (and the critic's trunk) equal to the current policy.
  void reset_reference_to_policy();

  // The steps of one RL step, for tests; step() runs them all. Collective.
  absl::StatusOr<Rollouts> rollout(int64_t step);
  absl::Status score(Rollouts& rollouts);
  Batch make_batch(const Rollouts& rollouts, StepMetrics& metrics);
  void update(const Batch& batch, StepMetrics& metrics);
  absl::StatusOr<StepMetrics> step(int64_t step);

  // The order in which epoch `epoch` of step `step` deals this rank's rows into its
  // minibatches (rows [0, P·G) in order when shuffling is off or there is one minibatch).
  std::vector<int64_t> minibatch_order(int64_t step, int epoch) const;

  // Accuracy on rl.eval_examples held-out prompts, spread over the ranks.
  EvalMetrics evaluate();

  // The policy, the critic, their optimizer states and the KL coefficient as a checkpoint of
  // run_dir after `steps_done` steps (see the file comment). `progress` (rank 0's console,
  // null for none) gets one summary line per checkpoint written: the critic's (PPO), then
  // the policy's. Collective.
  absl::Status save(const std::string& run_dir, int64_t steps_done,
                    std::ostream* progress = nullptr);
  // Continues from run_dir's latest checkpoint (after load_policy_weights has set the
  // reference); returns the steps it had done. `progress` as for save: the policy's load,
  // then the critic's. Collective.
  absl::StatusOr<int64_t> restore(const std::string& run_dir, std::ostream* progress = nullptr);

  Transformer& policy() { return *policy_; }
  ParamStore& policy_store() { return *policy_store_; }
  Transformer& reference() { return *ref_; }
  const RewardTask& task() const { return *task_; }
  const ProcessGrid& grid() const { return *grid_; }
  double kl_coef() const { return kl_.coef(); }
  int max_new_tokens() const { return max_new_tokens_; }
  // rl.init_checkpoint's tokenizer (tokenizer.json, else bytes): prompts are encoded with it
  // (through rl.prompt_template), completions decoded with it for scoring, its eos ids stop
  // generation.
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  std::vector<int32_t> encode_prompt(const Prompt& prompt) const;
  std::string completion_text(const std::vector<int32_t>& ids) const;
  // "16 prompts x 8 completions per rank, GRPO, ..." for the start-up log.
  std::string describe() const;

 private:
  RlTrainer() = default;
  // Rows [begin, end) of minibatch `index`.
  std::pair<int64_t, int64_t> minibatch_rows(int64_t index) const;
  CheckpointLayout checkpoint_layout() const;
  void set_balance_scale(Transformer& model, double scale);

  switchyard::Experiment config_;
  switchyard::RlConfig rl_;
  Communicator* world_ = nullptr;
  std::unique_ptr<ProcessGrid> grid_;
  std::unique_ptr<RewardTask> task_;
  std::unique_ptr<Tokenizer> tokenizer_;
  PromptTemplate prompt_template_;
  std::unique_ptr<RewardCommand> command_;  // rank 0 only, when rl.reward_command is set
  std::unique_ptr<ParamStore> policy_store_, ref_store_, critic_store_;
  std::unique_ptr<Transformer> policy_, ref_, critic_;
  std::unique_ptr<AdamW> policy_opt_, critic_opt_;
  std::unique_ptr<GradientSync> policy_sync_, critic_sync_;
  KlController kl_ = KlController::fixed(0);
  PolicyLossOptions loss_options_;
  KlEstimator estimator_ = KlEstimator::kK3;
  int max_new_tokens_ = 0;
  int64_t batch_rows_ = 0;  // P·G
  int64_t skipped_in_row_ = 0;
};

}  // namespace sy::rl
