#pragma once
// The MoE load-balancing terms' heavy parts, per token, on the device the router ran on; the
// layer (models/layers.cc) combines their small per-sequence results on the host.
//
// routing_stats: for B sequences of T tokens (N = B*T rows), k choices per token and E
// experts, stats f32 [B, 2E + 1] gets per sequence b:
//   stats[b, e]      = slots of b's tokens routed to expert e (a count),
//   stats[b, E + e]  = sum over b's tokens of p[t, e] = scores[t, e] / sum_e' scores[t, e'],
//   stats[b, 2E]     = sum over b's tokens of lse(logits[t])^2 (the z-loss's sum).
// Sums accumulate in double and are rounded once.
//
// balance_backward: the aux / seq-aux gradient through p = s / sum(s): given dp f32 [B, E]
// (d loss / d p[t, e], the same for every token of sequence b),
//   dscores[t, e] += (dp[b, e] - sum_e' dp[b, e'] p[t, e']) / sum_e' s[t, e'].
// z_loss_backward: dlogits[t, e] += scale * 2 lse(logits[t]) softmax(logits[t])_e.
// All f32, on every device. CUDA: one block per sequence for the stats, one thread per token
// row for the backwards; no float atomics, so results are identical run to run.
#include "kernels/tensor.h"

namespace sy {
void routing_stats(const Tensor& stats, const Tensor& indices, const Tensor& scores,
                   const Tensor& logits);
void balance_backward(const Tensor& dscores, const Tensor& scores, const Tensor& dp);
void z_loss_backward(const Tensor& dlogits, const Tensor& logits, float scale);
namespace cpu {
void routing_stats(const Tensor& stats, const Tensor& indices, const Tensor& scores,
                   const Tensor& logits);
void balance_backward(const Tensor& dscores, const Tensor& scores, const Tensor& dp);
void z_loss_backward(const Tensor& dlogits, const Tensor& logits, float scale);
}  // namespace cpu
namespace cuda {
void routing_stats(const Tensor& stats, const Tensor& indices, const Tensor& scores,
                   const Tensor& logits);
void balance_backward(const Tensor& dscores, const Tensor& scores, const Tensor& dp);
void z_loss_backward(const Tensor& dlogits, const Tensor& logits, float scale);
}  // namespace cuda
}  // namespace sy
