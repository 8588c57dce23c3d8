#pragma once
// The RL fine-tuning loop: GRPO, GSPO and PPO on the sharded model, one process or many. This
// header is its front door; the rooms are rl/rl_config.h (the config and its task),
// rl/rl_trainer.h (the models, one step, checkpoints), rl/rollouts.h (sampling and scoring),
// rl/rl_batch.h (log-probs, KL, advantages, the losses' updates) and rl/rl_run.h (the whole
// run).
//
// One step, on every rank together (the MoE layers exchange tokens, so every model call is
// collective over the world):
//   1. rollouts: rank r of R takes the global prompts [step·P·R + r·P, +P) of the task's
//      training split and samples G completions of each with the rollout engine (row ids are
//      the global completion indices, so any layout samples the same tokens), keeping each
//      token's log-prob under the engine's own forward;
//   2. scoring: the task's verdict for every completion; the reward is the task's, or the
//      external reward command's (run on rank 0 for every rank's completions);
//   3. a [B, T] batch (B = P·G rows of prompt + completion, T the longest row over all ranks
//      minus one): inputs = tokens[:-1], targets = tokens[1:], mask = 1 where the target is a
//      completion token; old log-probs (the policy before any update), reference log-probs
//      and, for PPO, the critic's values, computed once, minibatch by minibatch; with
//      rl.rollout_correction, TIS weights from the old and the rollout log-probs
//      (rl/rollout_correction.h);
//   4. advantages: GRPO and GSPO normalise each prompt's group of rewards (optionally without
//      the std, Dr. GRPO; optionally leaving groups of equal rewards out of the loss); PPO puts
//      the reward at the last completion token, subtracts the per-token KL penalty, runs GAE
//      on the critic's values and whitens over the global batch. With kl_in_reward, GRPO's
//      sequence reward is reward − β · Σ_t KL_t; otherwise β · KL is a loss term;
//   5. epochs × minibatches updates (each epoch deals every rank's rows into its minibatches
//      in a fresh seeded order when rl.shuffle_minibatches): policy log-probs (all of them
//      at the rollout temperature) → clipped surrogate (GSPO: per completion) → backward →
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
#include "rl/rl_config.h"
#include "rl/rl_run.h"
#include "rl/rl_trainer.h"
