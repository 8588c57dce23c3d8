#pragma once
// The losses' side of a step: the rollouts as per-token tensors with their old and reference
// log-probs, the KL to the reference, the advantages and the statistics that the step's log
// line reports (RlTrainer::make_batch), and the updates over its minibatches
// (RlTrainer::update); both in rl/rl_batch.cc.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace sy::rl {

// The rollouts as per-token tensors: i32 [B, T] inputs and targets (kIgnoreIndex outside the
// completions), f32 [B, T] for the rest.
struct Batch {
  int64_t step = 0;  // of the rollouts
  Tensor inputs, targets;
  Tensor mask;       // 1 at completion tokens
  Tensor loss_mask;  // mask without the rows of filtered groups (GRPO filter_equal_groups)
  Tensor old_logp, ref_logp, entropy;
  Tensor rollout_logp;  // the rollout engine's log-probs of the sampled tokens (0 off the mask)
  // A MoE model's rollout routes, i32 [B, T, MoE layers, top_k] (ForwardRoutes; -1 at the
  // padding); undefined for a dense model.
  Tensor routes;
  // rl.rollout_correction.tis_cap > 0: the TIS weights of the policy-gradient term
  // (rl/rollout_correction.h; per completion for GSPO); undefined otherwise.
  Tensor tis_weights;
  Tensor advantages;
  Tensor old_values, returns;           // PPO
  std::vector<float> sequence_rewards;  // per row, what the advantages saw (KL included)
  // What was NaN or infinite anywhere in the global batch (log-probs or KL at completion
  // tokens, rewards, advantages, TIS weights), e.g. "KL at 3 tokens"; empty when all is
  // finite. The same on every rank. A batch with any is not trained on (update() takes no
  // step).
  std::string non_finite;
};

// Test hook (fault injection): called on every rank in make_batch once the rollout, old and
// reference log-probs (and values) are in `batch`, before the KL, the TIS weights and the
// advantages, with the 0-based step and the rollouts' rewards, which it may change (e.g. to
// write a NaN). Empty: none.
using BatchHook = std::function<void(int64_t step, std::vector<float>& rewards, Batch& batch)>;
void set_batch_hook_for_testing(BatchHook hook);

}  // namespace sy::rl
