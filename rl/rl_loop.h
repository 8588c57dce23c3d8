#pragma once
// The RL fine-tuning loop: GRPO and PPO on the sharded model, one process or many.
//
// One step, on every rank together (the MoE layers exchange tokens, so every model call is
// collective over the world):
//   1. rollouts: rank r of R takes the global prompts [step·P·R + r·P, +P) of the task's
//      training split and samples G completions of each with generate() (row ids are the
//      global completion indices, so any layout samples the same tokens);
//   2. scoring: the task's verdict for every completion; the reward is the task's, or the
//      external reward command's (run on rank 0 for every rank's completions);
//   3. a [B, T] batch (B = P·G rows of prompt + completion, T the longest row over all ranks
//      minus one): inputs = tokens[:-1], targets = tokens[1:], mask = 1 where the target is a
//      completion token; old log-probs (the policy before any update), reference log-probs
//      and, for PPO, the critic's values, computed once, minibatch by minibatch;
//   4. advantages: GRPO normalises each prompt's group of rewards (optionally without the
//      std, Dr. GRPO; optionally leaving groups of equal rewards out of the loss); PPO puts
//      the reward at the last completion token, subtracts the per-token KL penalty, runs GAE
//      on the critic's values and whitens over the global batch. With kl_in_reward, GRPO's
//      sequence reward is reward − β · Σ_t KL_t; otherwise β · KL is a loss term;
//   5. epochs × minibatches updates (each epoch deals every rank's rows into its minibatches
//      in a fresh seeded order when rl.shuffle_minibatches): policy log-probs (all of them
//      at the rollout temperature) → clipped surrogate → backward →
//      gradient sync → AdamW (and for PPO the clipped value loss on the critic, its own
//      AdamW). A minibatch's loss is normalised over the global minibatch (every rank's
//      share), so the update does not depend on how the batch is spread over ranks;
//   6. the adaptive KL controller sees the batch's KL per completion.
// The reference is a frozen copy of the initial policy, sharded like it; the critic is a copy
// of the policy's trunk with a zero-initialised value head.
//
// Checkpoints (every checkpoint.interval steps, at the end, and on SIGTERM / SIGUSR1) hold
// everything a resumed run needs to continue bit for bit: RUN_DIR/checkpoints/ the policy
// and its AdamW state, RUN_DIR/critic/checkpoints/ the critic and its AdamW state (PPO) and
// RUN_DIR/rl_state/step_N.json the KL coefficient. The policy's `latest` is written last,
// so it never names a step whose critic or state is missing. The reference is reloaded from
// rl.init_checkpoint; rollouts and evaluation are functions of (seed, step).
#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
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
#include "rl/tasks.h"
#include "trainer/data/prompt_template.h"
#include "trainer/data/tokenizer.h"
#include "trainer/checkpoint.h"
#include "trainer/optimizer.h"

namespace sy::rl {

// The experiment an RL run executes: `rl_config` (loaded with ConfigUse::kRl) with the
// model, moe and mtp of rl.init_checkpoint's run (its config.textproto), and that run's
// train and data where rl_config leaves them out, validated as a whole (e.g. the checkpoint's
// experts against this run's expert_parallel_size). An RL config that sets model, moe or mtp
// is an error: the checkpoint fixes them.
absl::StatusOr<switchyard::Experiment> resolve_rl_experiment(
    const switchyard::Experiment& rl_config);

// The task of config.rl (arithmetic or countdown, with the format weight).
absl::StatusOr<std::unique_ptr<RewardTask>> make_reward_task(const switchyard::RlConfig& rl);

// What one rank sampled in one step: P prompts with G completions each, prompt-major.
struct Rollouts {
  int64_t step = 0;
  std::vector<Prompt> prompts;                    // P
  std::vector<std::vector<int32_t>> completions;  // P·G token ids (the stop token included)
  std::vector<Score> scores;                      // the task's verdicts
  std::vector<float> rewards;                     // task or command rewards, before any KL
};

// The rollouts as per-token tensors: i32 [B, T] inputs and targets (kIgnoreIndex outside the
// completions), f32 [B, T] for the rest.
struct Batch {
  int64_t step = 0;  // of the rollouts
  Tensor inputs, targets;
  Tensor mask;       // 1 at completion tokens
  Tensor loss_mask;  // mask without the rows of filtered groups (GRPO filter_equal_groups)
  Tensor old_logp, ref_logp, entropy;
  Tensor advantages;
  Tensor old_values, returns;           // PPO
  std::vector<float> sequence_rewards;  // per row, what the advantages saw (KL included)
  // What was NaN or infinite anywhere in the global batch (log-probs or KL at completion
  // tokens, rewards, advantages), e.g. "KL at 3 tokens"; empty when all is finite. The same
  // on every rank. A batch with any is not trained on (update() takes no step).
  std::string non_finite;
};

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
  int64_t step = 0;            // 1-based
  double reward_mean = 0;      // of the rewards before any KL penalty
  double accuracy = 0;         // fraction of completions the task judges correct
  double format_rate = 0;      // fraction well-formed
  double kl = 0;               // token mean of the estimator, rollout policy vs reference
  double kl_sequence = 0;      // mean over completions of their summed KL
  double kl_coef = 0;          // β used this step
  double entropy = 0;          // token mean over completion tokens, rollout policy
  double response_length = 0;  // mean completion tokens
  double clip_fraction = 0;    // mean over the step's updates
  double policy_loss = 0;      // mean over the step's updates (the surrogate)
  double value_loss = 0;       // PPO
  double grad_norm = 0;        // mean over the step's updates
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

class RlTrainer {
 public:
  // `config` is a resolved RL experiment (with the model). The policy starts from the
  // initialisation of train.seed (load_policy_weights replaces it), the reference and critic
  // from copies of it. `task` replaces the config's task when given (tests). Collective.
  static absl::StatusOr<std::unique_ptr<RlTrainer>> create(
      const switchyard::Experiment& config, Communicator& world,
      std::unique_ptr<RewardTask> task = nullptr);
  ~RlTrainer();

  // Loads the policy from a checkpoint directory and copies it into the reference and the
  // critic's trunk. A checkpoint written without expert parallelism loads into any layout;
  // otherwise the expert-parallel size must match. Collective.
  absl::Status load_policy_weights(const std::string& checkpoint_dir);
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
  // run_dir after `steps_done` steps (see the file comment). Collective.
  absl::Status save(const std::string& run_dir, int64_t steps_done);
  // Continues from run_dir's latest checkpoint (after load_policy_weights has set the
  // reference); returns the steps it had done. Collective.
  absl::StatusOr<int64_t> restore(const std::string& run_dir);

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

// Test hook (fault injection): called on every rank in make_batch once the old and reference
// log-probs (and values) are in `batch`, before the KL and the advantages, with the 0-based
// step and the rollouts' rewards, which it may change (e.g. to write a NaN). Empty: none.
using BatchHook = std::function<void(int64_t step, std::vector<float>& rewards, Batch& batch)>;
void set_batch_hook_for_testing(BatchHook hook);

struct RlRunOptions {
  std::string run_dir;
  bool resume = false;  // continue from run_dir's latest checkpoint
};

// The whole run: start-up log, evaluation before the first step, the steps with their log
// lines and metrics.jsonl, periodic and final evaluation, periodic checkpoints and a final
// one in run_dir (with config.textproto, so `switchyard generate --checkpoint run_dir` loads
// the policy). SIGTERM / SIGUSR1 (install_stop_signal_handlers) end it after the current
// step with a checkpoint. `config` comes from resolve_rl_experiment. `world` null: this
// process alone.
absl::Status run_rl(const switchyard::Experiment& config, const RlRunOptions& options,
                    std::ostream& log, Communicator* world = nullptr);

}  // namespace sy::rl
