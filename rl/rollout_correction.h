#pragma once
// Rollout correction: truncated importance sampling (TIS) of the rollout/train mismatch, as
// veRL's (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
// training"). The rollout engine's log-prob of each sampled token (rollout_logp, from its
// own KV-cached forward, bf16 on a GPU) differs from the old policy's (old_logp, the training
// forward before any update) although the weights are the same, so the updates optimise a
// policy a little other than the one that sampled. The policy-gradient term is reweighted by
//   token level:     w[b, t] = min(exp(old_logp[b, t] − rollout_logp[b, t]), C)
//   sequence level:  w[b]    = min(exp((1/n_b) Σ_t m[b, t] (old_logp − rollout_logp)), C)
// (the sequence level is GSPO's: the mismatch measured as its ratio is, a geometric mean over
// the completion's n_b response tokens). The weights are constants of the step (computed once
// from the batch): no gradient flows through them, and the KL term is not reweighted. A unit
// is truncated where its ratio exceeds C; one exactly at C is not.
//
// Per-token tensors are CPU f32 [B, T], row-major; mask[b, t] is 1 for a response token.
#include <cstdint>

#include "kernels/tensor.h"

namespace sy::rl {

enum class TisLevel : uint8_t { kToken, kSequence };

// Sums over this batch's units (response tokens, or completions with any): the caller adds
// them up over ranks and divides by `units`.
struct TisSums {
  double weight = 0;      // Σ w over the units whose weight is finite
  double truncated = 0;   // units whose ratio exceeds the cap
  double units = 0;       // every unit, finite or not
  double non_finite = 0;  // units whose weight is NaN (NaN log-probs, or −inf on both sides)
};

// Writes w into `weights` (each token's weight; at sequence level, its completion's on every
// one of its tokens; 0 under mask 0). cap >= 1 and finite.
TisSums tis_weights(const Tensor& weights, const Tensor& old_logp, const Tensor& rollout_logp,
                    const Tensor& mask, double cap, TisLevel level);

}  // namespace sy::rl
