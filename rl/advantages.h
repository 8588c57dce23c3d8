#pragma once
// Advantages: how much better than expected each sampled token was. Positive advantage
// means "make this token more likely" (the policy loss is −ratio · A, minimised).
//
// GRPO (DeepSeekMath; Dr. GRPO): a prompt's G completions form a group with scalar rewards
// r_1..r_G; each completion's advantage is
//   A_i = (r_i − mean(r)) / (std(r) + ε)      normalize_std = true (GRPO)
//   A_i =  r_i − mean(r)                      normalize_std = false (Dr. GRPO)
// where std is the sample standard deviation (Bessel's N − 1), as torch.std in the
// DeepSeekMath-style implementations (veRL, TRL) computes it. A group whose rewards are all
// equal carries no signal and gets exactly zero advantages; filter_equal_reward_groups says
// which groups those are, for callers that drop them. Every token of a completion gets the
// completion's advantage (broadcast_to_tokens).
//
// PPO: generalised advantage estimation over each sequence's response tokens t = 0..n−1 with
// per-token rewards r_t (the task reward at the last response token plus the per-token KL
// penalty of rl/kl.h) and values V_t:
//   δ_t = r_t + γ V_{t+1} − V_t   (V_n = 0: nothing follows the last token)
//   A_t = Σ_l (γλ)^l δ_{t+l}     returns R_t = A_t + V_t (the value target)
// then advantages are whitened over all response tokens of the batch.
//
// Per-token tensors are CPU f32 [B, T], row-major; mask[b, t] is 1 for a response token and 0
// for prompt and padding. A row's response tokens, in order, form its sequence (they need not
// be contiguous); outputs under mask 0 are written as 0.
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/tensor.h"

namespace sy::rl {

struct GroupAdvantageOptions {
  bool normalize_std = true;  // false: Dr. GRPO, A = r − mean
  double eps = 1e-6;
};
// rewards holds num_groups × group_size values, the completions of one prompt adjacent.
// Returns one advantage per completion, in the same order.
std::vector<float> group_advantages(std::span<const float> rewards, int64_t group_size,
                                    const GroupAdvantageOptions& options = {});

struct GroupFilter {
  std::vector<int64_t> kept;     // groups whose rewards differ, ascending
  std::vector<int64_t> dropped;  // groups whose rewards are all equal, ascending
};
GroupFilter filter_equal_reward_groups(std::span<const float> rewards, int64_t group_size);

// tokens[b, t] = per_sequence[b] where mask is 1, 0 elsewhere (written).
void broadcast_to_tokens(const Tensor& tokens, std::span<const float> per_sequence,
                         const Tensor& mask);
// token_rewards[b, last response token of b] += rewards[b]; other entries are left alone, so
// the per-token KL penalty may be applied before or after. A row without response tokens
// gets nothing.
void add_at_last_token(const Tensor& token_rewards, std::span<const float> rewards,
                       const Tensor& mask);

// GAE over one sequence of n tokens: rewards, values, advantages and returns all hold n.
void gae(std::span<float> advantages, std::span<float> returns, std::span<const float> rewards,
         std::span<const float> values, double gamma, double lambda);
// GAE over each row's response tokens of a [B, T] batch (written).
void gae(const Tensor& advantages, const Tensor& returns, const Tensor& rewards,
         const Tensor& values, const Tensor& mask, double gamma, double lambda);

// In place over the response tokens of the whole batch: A ← (A − mean) / sqrt(var + eps), with
// the sample variance (N − 1); keep_mean adds the mean back (scale only). Needs at least 2
// response tokens; entries under mask 0 are set to 0.
void whiten_advantages(const Tensor& advantages, const Tensor& mask, bool keep_mean = false,
                       double eps = 1e-8);

}  // namespace sy::rl
