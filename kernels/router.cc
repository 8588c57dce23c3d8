// Argument checks and device dispatch for the MoE router: expert scores and top-k selection
// (see router.h).
#include "kernels/router.h"

#include "kernels/dispatch.h"

namespace sy {
namespace {

void check_topk_args(const Tensor& scores, const Tensor& indices, const Tensor& weights,
                     const TopKOptions& o) {
  SY_CHECK(scores.defined() && scores.ndim() == 2)
      << "topk scores must be [N, E], got " << shape_str(scores.shape());
  const int64_t n = scores.dim(0), experts = scores.dim(1);
  SY_CHECK(o.k >= 1 && o.k <= experts) << "topk: k = " << o.k << " with " << experts << " experts";
  SY_CHECK(o.n_groups >= 1 && experts % o.n_groups == 0)
      << "topk: " << experts << " experts do not split into " << o.n_groups << " groups";
  SY_CHECK(o.topk_groups >= 1 && o.topk_groups <= o.n_groups)
      << "topk: topk_groups = " << o.topk_groups << " with " << o.n_groups << " groups";
  SY_CHECK(o.k <= o.topk_groups * (experts / o.n_groups))
      << "topk: k = " << o.k << " exceeds the " << o.topk_groups * (experts / o.n_groups)
      << " experts of the " << o.topk_groups << " eligible groups";
  check_dtype(indices, DType::kI32, "topk indices");
  check_shape(indices, {n, o.k}, "topk indices");
  check_shape(weights, {n, o.k}, "topk weights");
}

}  // namespace

void router_scores_forward(const Tensor& scores, const Tensor& logits, ScoreFunction fn) {
  SY_CHECK(logits.defined() && logits.ndim() == 2)
      << "router logits must be [N, E], got " << shape_str(logits.shape());
  check_shape(scores, logits.shape(), "router scores");
  check_same_device({&scores, &logits}, "router_scores_forward");
  if (scores.device().is_cpu()) return cpu::router_scores_forward(scores, logits, fn);
#ifdef SWITCHYARD_HAVE_CUDA
  if (scores.device().is_cuda()) return cuda::router_scores_forward(scores, logits, fn);
#endif
  no_kernel("router_scores_forward", scores.device());
}

void router_scores_backward(const Tensor& dlogits, const Tensor& dscores, const Tensor& scores,
                            ScoreFunction fn) {
  SY_CHECK(scores.defined() && scores.ndim() == 2)
      << "router scores must be [N, E], got " << shape_str(scores.shape());
  check_shape(dlogits, scores.shape(), "router dlogits");
  check_shape(dscores, scores.shape(), "router dscores");
  check_same_device({&dlogits, &dscores, &scores}, "router_scores_backward");
  if (scores.device().is_cpu()) return cpu::router_scores_backward(dlogits, dscores, scores, fn);
#ifdef SWITCHYARD_HAVE_CUDA
  if (scores.device().is_cuda()) {
    return cuda::router_scores_backward(dlogits, dscores, scores, fn);
  }
#endif
  no_kernel("router_scores_backward", scores.device());
}

void topk_forward(const Tensor& indices, const Tensor& weights, const Tensor& scores,
                  const Tensor& bias, const TopKOptions& options) {
  check_topk_args(scores, indices, weights, options);
  if (bias.defined()) check_shape(bias, {scores.dim(1)}, "topk bias");
  check_same_device({&indices, &weights, &scores, &bias}, "topk_forward");
  if (scores.device().is_cpu()) return cpu::topk_forward(indices, weights, scores, bias, options);
#ifdef SWITCHYARD_HAVE_CUDA
  if (scores.device().is_cuda()) {
    return cuda::topk_forward(indices, weights, scores, bias, options);
  }
#endif
  no_kernel("topk_forward", scores.device());
}

void topk_backward(const Tensor& dscores, const Tensor& dweights, const Tensor& indices,
                   const Tensor& scores, const TopKOptions& options) {
  check_topk_args(scores, indices, dweights, options);
  check_shape(dscores, scores.shape(), "topk dscores");
  check_same_device({&dscores, &dweights, &indices, &scores}, "topk_backward");
  if (scores.device().is_cpu()) {
    return cpu::topk_backward(dscores, dweights, indices, scores, options);
  }
#ifdef SWITCHYARD_HAVE_CUDA
  if (scores.device().is_cuda()) {
    return cuda::topk_backward(dscores, dweights, indices, scores, options);
  }
#endif
  no_kernel("topk_backward", scores.device());
}

}  // namespace sy
