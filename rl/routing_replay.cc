#include "rl/routing_replay.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "kernels/check.h"

namespace sy::rl {

Tensor batch_routes(const std::vector<std::vector<int32_t>>& routes,
                    const std::vector<int64_t>& sequence_lengths, int64_t t_len, int layers,
                    int top_k) {
  const int64_t rows = static_cast<int64_t>(routes.size());
  SY_CHECK(static_cast<int64_t>(sequence_lengths.size()) == rows) << "routes of every row";
  const int64_t width = int64_t{layers} * top_k;
  Tensor out = Tensor::empty({rows, t_len, layers, top_k}, DType::kI32);
  int32_t* dst = out.data<int32_t>();
  std::fill(dst, dst + out.numel(), -1);
  for (int64_t b = 0; b < rows; ++b) {
    const int64_t positions = static_cast<int64_t>(routes[b].size()) / width;
    // The engine records every input position of prompt + completion (models/rollout/engine.h),
    // or none for a prompt it never ran (no new token allowed).
    SY_CHECK(static_cast<int64_t>(routes[b].size()) == positions * width &&
             (positions == 0 || positions == sequence_lengths[b] - 1) && positions <= t_len)
        << "row " << b << ": routes of " << routes[b].size() << " ids for a sequence of "
        << sequence_lengths[b] << " tokens (" << layers << " MoE layers x top " << top_k << ")";
    std::copy(routes[b].begin(), routes[b].end(), dst + b * t_len * width);
  }
  return out;
}

void RolloutMismatch::add(const Tensor& rollout_logp, const Tensor& old_logp, const Tensor& mask,
                          const Tensor& route_differs) {
  const float *roll = rollout_logp.data<float>(), *old = old_logp.data<float>();
  const float* m = mask.data<float>();
  const int32_t* differs = route_differs.defined() ? route_differs.data<int32_t>() : nullptr;
  for (int64_t i = 0; i < mask.numel(); ++i) {
    if (m[i] == 0) continue;
    if (std::isfinite(roll[i]) && std::isfinite(old[i])) {
      logprob_diff += std::fabs(double(roll[i]) - double(old[i]));
      logprob_tokens += 1;
    }
    if (differs) {
      routed_differently += differs[i] != 0;
      routed_tokens += 1;
    }
  }
}

void RolloutMismatch::all_reduce(Communicator& world) {
  std::array<double, 4> sums = {logprob_diff, logprob_tokens, routed_differently, routed_tokens};
  world.all_reduce_host(sums, ReduceOp::kSum);
  logprob_diff = sums[0];
  logprob_tokens = sums[1];
  routed_differently = sums[2];
  routed_tokens = sums[3];
}

}  // namespace sy::rl
