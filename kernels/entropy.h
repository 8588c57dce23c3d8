#pragma once
// Entropy of the softmax of each row of logits, given the row's log-sum-exp (as
// cross_entropy_forward saves it):
//   entropy[n] = -sum_j p_j log p_j = lse[n] - sum_j p_j logits[n, j],  p_j = exp(logits[n, j] -
//   lse[n]).
// RL reports it for the rollout policy; computed where the logits live, so only N numbers
// (not N x V logits) ever reach the host. No backward (a metric, not a loss term).
// Dtypes: logits f32 everywhere, bf16 too on CUDA; lse and entropy f32 [N]; sums in fp32 on
// CUDA, in double on the CPU.
#include "kernels/tensor.h"

namespace sy {
void softmax_entropy(const Tensor& entropy, const Tensor& logits, const Tensor& lse);
namespace cpu {
void softmax_entropy(const Tensor& entropy, const Tensor& logits, const Tensor& lse);
}  // namespace cpu
namespace cuda {
// kernels/cuda/entropy.cu; defined in CUDA builds only.
void softmax_entropy(const Tensor& entropy, const Tensor& logits, const Tensor& lse);
}  // namespace cuda
}  // namespace sy
