#pragma once
// The losses of an RL update, as functions of per-token log-probabilities, and their
// gradients. Everything here is a loss: minimised, so a positive advantage lowers the loss
// when its token becomes more likely.
//
// Clipped policy surrogate (PPO; clip-higher from DAPO; dual-clip from Ye et al. 2020), per
// response token with ratio ρ = exp(logp − old_logp) and advantage A:
//   L = max(−ρA, −clip(ρ, 1 − ε_low, 1 + ε_high) · A)        (= −min(ρA, clip(ρ)A))
//   dual-clip, only where A < 0 and c > 1:  L ← min(L, −c · A)   (a cap on a positive loss)
//   dL/dlogp = −ρA where the unclipped term is chosen; 0 where the clip is active (A > 0 with
//   ρ > 1 + ε_high, A < 0 with ρ < 1 − ε_low) or where the dual-clip cap is (A < 0, ρ > c).
//   Ties go to the unclipped term, so the gradient at a clip boundary is −ρA.
// Rollout correction (rl/rollout_correction.h): with per-token TIS weights w, the term is
//   w · L, with gradient w · dL/dlogp (w is a constant of the step).
// KL to the reference in the loss (rl/kl.h): β · KL_t per token, aggregated alike, never
// reweighted.
//
// Sequence-level clipped surrogate (GSPO, Zheng et al. 2025, "Group Sequence Policy
// Optimization"), per completion b with n_b response tokens, one advantage A_b and ratio
//   s_b = exp((1/n_b) Σ_t (logp_t − old_logp_t))          (the geometric mean of its ρ_t)
//   L_b = max(−s_b A_b, −clip(s_b, 1 − ε_low, 1 + ε_high) · A_b)
//   L   = (1/S) Σ_b w_b L_b    over the S completions with response tokens (w_b: its TIS
//                              weight, 1 without)
//   dL/dlogp_t = −w_b A_b s_b / (S n_b) where the unclipped term is chosen, 0 where the clip is
//   active (A_b > 0 with s_b > 1 + ε_high, A_b < 0 with s_b < 1 − ε_low). Ties go to the
//   unclipped term, as for tokens. No dual-clip. The KL term is β · KL_t weighted
//   seq-mean-token-mean (1/(S n_b)), so every completion weighs the same in both terms.
// Clipped value loss (PPO), per token with value V, old value V_old and return R:
//   ℓ = ½ max((V − R)², (V_old + clip(V − V_old, −c, c) − R)²)
//   dℓ/dV = V − R where the first term is chosen (ties included), 0 where the second is
//   (it is larger only when the clip is active, and then it does not depend on V).
//
// Aggregation turns per-token losses ℓ[b, t] into a scalar Σ w[b, t] · ℓ[b, t]; the weights
// w are also the gradient of the scalar with respect to each ℓ:
//   token-mean               w = m / Σ m                  (all response tokens equal)
//   seq-mean-token-mean      w = m / (n_b · S)            (n_b response tokens in row b, S
//                                                          rows with n_b > 0: rows equal)
//   seq-mean-token-sum-norm  w = m / (L · B)              (Dr. GRPO: per-row sum over a
//                                                          constant L, mean over all B rows)
// The weights normalise within the batch passed in; callers that split a batch into
// micro-batches and want one normalisation across them pass the whole batch's mask.
//
// Per-token tensors are CPU f32 [B, T], row-major; mask[b, t] is 1 for a response token and 0
// for prompt and padding. Gradients are written (=), 0 under mask 0, and are the gradient of
// the returned `loss` (so already carry the aggregation weights).
#include <cstdint>
#include <vector>

#include "kernels/tensor.h"
#include "rl/kl.h"

namespace sy::rl {

enum class AggregationMode : uint8_t { kTokenMean, kSeqMeanTokenMean, kSeqMeanTokenSumNorm };
const char* aggregation_mode_name(AggregationMode mode);

struct LossAggregation {
  AggregationMode mode = AggregationMode::kTokenMean;
  int64_t norm_length = 0;  // L of seq-mean-token-sum-norm; 0 means T (the padded length)
};
// w[b * T + t] as above; all zero when the mask is.
std::vector<double> aggregation_weights(const Tensor& mask, const LossAggregation& aggregation);

struct PolicyLossInputs {
  Tensor logp;        // log π(y_t) under the policy being trained
  Tensor old_logp;    // under the policy that sampled the rollouts (computed once per batch)
  Tensor advantages;  // per token (GRPO: the completion's advantage broadcast to its tokens)
  Tensor mask;
  Tensor ref_logp;  // under the reference policy; may be undefined when kl_coef == 0
  // TIS weights of the policy-gradient term (rl/rollout_correction.h); undefined = all 1.
  // For sequence_policy_loss each completion's weight is on every one of its tokens.
  Tensor is_weights;
};

struct PolicyLossOptions {
  double clip_low = 0.2;   // ε_low, in [0, 1)
  double clip_high = 0.2;  // ε_high >= 0 (DAPO's clip-higher uses 0.28)
  double dual_clip = 0;    // c > 1 turns dual-clip on; 0 leaves it off
  LossAggregation aggregation;
  double kl_coef = 0;  // β of the KL-in-loss term
  KlEstimator kl_estimator = KlEstimator::kK3;
};

struct PolicyLossStats {
  double loss = 0;                // policy_loss + kl_coef · kl: what dlogp is the gradient of
  double policy_loss = 0;         // the aggregated clipped surrogate
  double kl = 0;                  // aggregated KL to the reference; 0 without ref_logp
  double clip_fraction = 0;       // response tokens where the ε clip is active (GSPO: the
                                  // tokens of completions whose sequence ratio is clipped)
  double dual_clip_fraction = 0;  // response tokens where the dual-clip cap is active
  double approx_kl_old = 0;       // token mean of ½ (logp − old_logp)²
};

// Writes dloss/dlogp into dlogp when it is defined. The KL term is computed (and reported)
// whenever ref_logp is defined, and enters loss and gradient with weight kl_coef.
PolicyLossStats policy_loss(const Tensor& dlogp, const PolicyLossInputs& inputs,
                            const PolicyLossOptions& options);

// GSPO's sequence-level loss, as above; the same contract as policy_loss. The advantages (and
// TIS weights) must be constant over each completion's response tokens; options.aggregation
// is not used, and options.dual_clip must be 0.
PolicyLossStats sequence_policy_loss(const Tensor& dlogp, const PolicyLossInputs& inputs,
                                     const PolicyLossOptions& options);

struct ValueLossOptions {
  double clip = 0.2;  // c; infinity turns the clip off
  LossAggregation aggregation;
};

struct ValueLossStats {
  double loss = 0;
  double clip_fraction = 0;  // response tokens where the clipped term is chosen
};

// Writes dloss/dvalues into dvalues when it is defined.
ValueLossStats value_loss(const Tensor& dvalues, const Tensor& values, const Tensor& old_values,
                          const Tensor& returns, const Tensor& mask,
                          const ValueLossOptions& options);

}  // namespace sy::rl
