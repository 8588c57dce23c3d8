#pragma once
// Fused softmax cross-entropy over the vocabulary.
//   logits [N, V], targets i32 [N]. losses [N] = lse[n] - logits[n, targets[n]], where
//   lse [N] = logsumexp(logits[n, :]) is saved for the backward; rows whose target equals
//   ignore_index get loss 0. A target outside [0, V) that is not ignore_index is a
//   programming error. Callers sum and normalise the per-token losses.
// Backward: dlogits[n, :] = dlosses[n] * (softmax(logits[n, :]) - onehot(targets[n])), zero
// for ignored rows; written (=). dlogits may alias logits (the backward then overwrites the
// logits in place, so the vocabulary-sized buffer exists once).
// Forward and backward together (cross_entropy_forward_backward), for a caller that knows
// dlosses before the losses: losses, lse and dlogits as the two ops write them, with the same
// aliasing allowed; on CUDA each row of logits is then read once and its gradient written once.
// Dtypes: f32; on CUDA logits and dlogits may be bf16 (alike). losses, lse, dlosses are f32
// everywhere, and the row statistics accumulate in fp32.
#include "kernels/tensor.h"

namespace sy {
void cross_entropy_forward(const Tensor& losses, const Tensor& lse, const Tensor& logits,
                           const Tensor& targets, int ignore_index);
void cross_entropy_backward(const Tensor& dlogits, const Tensor& dlosses, const Tensor& logits,
                            const Tensor& lse, const Tensor& targets, int ignore_index);
void cross_entropy_forward_backward(const Tensor& losses, const Tensor& lse, const Tensor& dlogits,
                                    const Tensor& dlosses, const Tensor& logits,
                                    const Tensor& targets, int ignore_index);
namespace cpu {
void cross_entropy_forward(const Tensor& losses, const Tensor& lse, const Tensor& logits,
                           const Tensor& targets, int ignore_index);
void cross_entropy_backward(const Tensor& dlogits, const Tensor& dlosses, const Tensor& logits,
                            const Tensor& lse, const Tensor& targets, int ignore_index);
void cross_entropy_forward_backward(const Tensor& losses, const Tensor& lse, const Tensor& dlogits,
                                    const Tensor& dlosses, const Tensor& logits,
                                    const Tensor& targets, int ignore_index);
}  // namespace cpu
namespace cuda {
// kernels/cuda/cross_entropy.cu; defined in CUDA builds only.
void cross_entropy_forward(const Tensor& losses, const Tensor& lse, const Tensor& logits,
                           const Tensor& targets, int ignore_index);
void cross_entropy_backward(const Tensor& dlogits, const Tensor& dlosses, const Tensor& logits,
                            const Tensor& lse, const Tensor& targets, int ignore_index);
void cross_entropy_forward_backward(const Tensor& losses, const Tensor& lse, const Tensor& dlogits,
                                    const Tensor& dlosses, const Tensor& logits,
                                    const Tensor& targets, int ignore_index);
}  // namespace cuda
}  // namespace sy
