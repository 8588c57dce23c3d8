#pragma once
// KL divergence from the policy to a frozen reference policy, estimated per token from the
// log-probabilities of the sampled token: logp = log π(y_t | ·), ref_logp = log π_ref(y_t | ·).
// With d = logp − ref_logp:
//   k1 = d                                 derivative 1
//   k2 = ½ d²                              derivative d
//   k3 = exp(−d) + d − 1                   derivative 1 − exp(−d)
// k3 (Schulman, "Approximating KL divergence") is unbiased for KL(π‖π_ref) under samples from
// π and never negative; k1 is unbiased but can be negative; k2 is biased, low variance.
// Derivatives are with respect to logp (ref_logp is a constant).
//
// Two placements, both with a coefficient β ≥ 0:
//  - in the loss: β · KL aggregated like the policy loss (rl/policy_loss.h), with a gradient;
//  - in the reward: rewards[b, t] −= β · KL[b, t] before advantages are computed
//    (apply_kl_penalty below), with no gradient through it.
// β comes from a KlController: fixed, or adaptive towards a target KL (Ziegler et al. 2019).
//
// Per-token tensors are CPU f32 [B, T], row-major; mask[b, t] is 1 for a response token
// (scored, trained, penalised) and 0 for prompt and padding; entries under mask 0 are ignored.
#include <cstdint>

#include "kernels/tensor.h"

namespace sy::rl {

enum class KlEstimator : uint8_t { kK1, kK2, kK3 };
const char* kl_estimator_name(KlEstimator estimator);

struct KlTerm {
  double value;  // the estimate of KL at this token
  double dlogp;  // d value / d logp
};
KlTerm kl_term(KlEstimator estimator, double logp, double ref_logp);

// The KL of a batch, two ways: token_mean averages over all response tokens; sequence_mean
// averages over sequences the sum over each sequence's response tokens (the KL of whole
// completions, the unit of Ziegler et al.'s target). Sequences without response tokens are
// left out of sequence_mean.
struct KlStats {
  double token_mean = 0;
  double sequence_mean = 0;
};

// Per-token KL placed in the reward: rewards[b, t] −= beta · KL[b, t] where mask is 1; other
// entries are left alone. Returns the KL of the batch (before β) for logging and for the
// adaptive controller. rewards may be any f32 [B, T] tensor (typically zeros plus the task
// reward at each sequence's last response token).
KlStats apply_kl_penalty(const Tensor& rewards, const Tensor& logp, const Tensor& ref_logp,
                         const Tensor& mask, KlEstimator estimator, double beta);

// The β of either placement. Fixed: coef() never changes. Adaptive (Ziegler et al. 2019, as
// in the PPO-RLHF implementations): after each rollout batch,
//   β ← β · (1 + clip(KL / target − 1, −0.2, 0.2) · n_steps / horizon),
// where KL is the batch's measured KL (in the unit of target: see KlStats) and n_steps the
// number of samples it came from. β rises when KL is above target, falls when below.
class KlController {
 public:
  static KlController fixed(double coef);
  static KlController adaptive(double init_coef, double target, double horizon);

  double coef() const { return coef_; }
  bool is_adaptive() const { return adaptive_; }
  void update(double current_kl, int64_t n_steps);

 private:
  KlController(double coef, bool adaptive, double target, double horizon)
      : coef_(coef), adaptive_(adaptive), target_(target), horizon_(horizon) {}
  double coef_;
  bool adaptive_;
  double target_;
  double horizon_;
};

}  // namespace sy::rl
