#pragma once
// Routing replay (R3, rl.routing_replay) and the rollout/training mismatch of a MoE model:
// the rollouts' recorded routes as one tensor of the batch, for the old-policy, reference and
// update forwards to replay (Transformer::token_logprobs with ForwardRoutes), and the step's
// statistics of how far the rollout engine's forward is from the training forward at the
// sampled tokens.
#include <cstdint>
#include <vector>

#include "kernels/tensor.h"
#include "parallel/communicator.h"

namespace sy::rl {

// The routes of B completions (Completion::routes, [positions, layers, top_k] each) as i32
// [B, T, layers, top_k]: row b's first positions from its completion, -1 (no route: the
// layers route the token themselves) at the padding after them. A row's routes cover the
// inputs of its prompt + completion (as many positions as its tokens less one, at most T), or
// nothing (a row the engine never ran).
Tensor batch_routes(const std::vector<std::vector<int32_t>>& routes,
                    const std::vector<int64_t>& sequence_lengths, int64_t t_len, int layers,
                    int top_k);

// The mismatch at the sampled tokens (mask 1), summed over rows of this rank, then over every
// rank: |rollout log-prob - old-policy log-prob| where both are finite, and the tokens whose
// routes differ in some layer (Transformer::TokenLogprobs::route_differs of the old-policy
// forward) among those whose routes were compared.
struct RolloutMismatch {
  double logprob_diff = 0, logprob_tokens = 0;
  double routed_differently = 0, routed_tokens = 0;

  // rollout_logp, old_logp, mask f32 [B, T]; route_differs i32 [B, T] (undefined: not compared).
  void add(const Tensor& rollout_logp, const Tensor& old_logp, const Tensor& mask,
           const Tensor& route_differs);
  void all_reduce(Communicator& world);
  double mean_logprob_diff() const {
    return logprob_tokens > 0 ? logprob_diff / logprob_tokens : 0;
  }
  double routing_mismatch() const {
    return routed_tokens > 0 ? routed_differently / routed_tokens : 0;
  }
};

}  // namespace sy::rl
