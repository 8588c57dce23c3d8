#pragma once
// MoE router: scores from logits, then top-k expert selection.
//
// router_scores: scores [N, E] = softmax(logits) over experts, or sigmoid(logits) elementwise.
// Backward: dlogits written (=).
//
// topk: the selection key is scores + bias (bias [E] optional: the auxiliary-loss-free
// balancing bias; it changes which experts are chosen, never the gate weights).
// Group-limited routing (n_groups > 1): experts form n_groups contiguous groups of E/n_groups;
// a group's key is the sum of its top min(2, group size) keys; only the best topk_groups
// groups are eligible. indices i32 [N, k] list the chosen experts by descending key.
// Ties (equal keys, for experts and for groups) go to the lower index.
// weights f32 [N, k] = the chosen experts' unbiased scores, divided by their sum when
// normalize is set, then multiplied by scale.
// Backward: dscores [N, E] written (=): zero for experts not chosen.
// Dtypes: f32 throughout, on every device (routing decisions want fp32). CUDA takes up to
// 2048 experts.
#include "kernels/tensor.h"

namespace sy {

enum class ScoreFunction { kSoftmax, kSigmoid };

struct TopKOptions {
  int k = 1;
  int n_groups = 1;
  int topk_groups = 1;
  bool normalize = false;
  float scale = 1.0f;
};

void router_scores_forward(const Tensor& scores, const Tensor& logits, ScoreFunction fn);
void router_scores_backward(const Tensor& dlogits, const Tensor& dscores, const Tensor& scores,
                            ScoreFunction fn);
void topk_forward(const Tensor& indices, const Tensor& weights, const Tensor& scores,
                  const Tensor& bias, const TopKOptions& options);
void topk_backward(const Tensor& dscores, const Tensor& dweights, const Tensor& indices,
                   const Tensor& scores, const TopKOptions& options);
namespace cpu {
void router_scores_forward(const Tensor& scores, const Tensor& logits, ScoreFunction fn);
void router_scores_backward(const Tensor& dlogits, const Tensor& dscores, const Tensor& scores,
                            ScoreFunction fn);
void topk_forward(const Tensor& indices, const Tensor& weights, const Tensor& scores,
                  const Tensor& bias, const TopKOptions& options);
void topk_backward(const Tensor& dscores, const Tensor& dweights, const Tensor& indices,
                   const Tensor& scores, const TopKOptions& options);
}  // namespace cpu
namespace cuda {
// One warp per token row (kernels/cuda/router.cu); defined in CUDA builds only.
void router_scores_forward(const Tensor& scores, const Tensor& logits, ScoreFunction fn);
void router_scores_backward(const Tensor& dlogits, const Tensor& dscores, const Tensor& scores,
                            ScoreFunction fn);
void topk_forward(const Tensor& indices, const Tensor& weights, const Tensor& scores,
                  const Tensor& bias, const TopKOptions& options);
void topk_backward(const Tensor& dscores, const Tensor& dweights, const Tensor& indices,
                   const Tensor& scores, const TopKOptions& options);
}  // namespace cuda
}  // namespace sy
