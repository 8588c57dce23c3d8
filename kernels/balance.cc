// Argument checks and device dispatch for the balancing terms' per-token work (balance.h).
#include "kernels/balance.h"

#include "kernels/dispatch.h"

namespace sy {
namespace {
// scores/logits [N, E] f32; returns E.
int64_t check_router_matrix(const Tensor& t, const char* what) {
  SY_CHECK(t.defined() && t.ndim() == 2) << what << " must be [N, E], got " << shape_str(t.shape());
  check_dtype(t, DType::kF32, what);
  return t.dim(1);
}
}  // namespace

void routing_stats(const Tensor& stats, const Tensor& indices, const Tensor& scores,
                   const Tensor& logits) {
  const int64_t e = check_router_matrix(scores, "routing_stats scores");
  check_shape(logits, scores.shape(), "routing_stats logits");
  check_dtype(logits, DType::kF32, "routing_stats logits");
  SY_CHECK(indices.ndim() == 2 && indices.dim(0) == scores.dim(0))
      << "routing_stats indices must be [N, k] with N = " << scores.dim(0) << ", got "
      << shape_str(indices.shape());
  check_dtype(indices, DType::kI32, "routing_stats indices");
  SY_CHECK(stats.ndim() == 2 && stats.dim(1) == 2 * e + 1 && stats.dim(0) > 0 &&
           scores.dim(0) % stats.dim(0) == 0)
      << "routing_stats stats must be [B, 2E + 1] = [B, " << 2 * e + 1 << "] with B dividing "
      << scores.dim(0) << " tokens, got " << shape_str(stats.shape());
  check_dtype(stats, DType::kF32, "routing_stats stats");
  check_same_device({&stats, &indices, &scores, &logits}, "routing_stats");
  if (stats.device().is_cpu()) return cpu::routing_stats(stats, indices, scores, logits);
#ifdef SWITCHYARD_HAVE_CUDA
  if (stats.device().is_cuda()) return cuda::routing_stats(stats, indices, scores, logits);
#endif
  no_kernel("routing_stats", stats.device());
}

void balance_backward(const Tensor& dscores, const Tensor& scores, const Tensor& dp) {
  const int64_t e = check_router_matrix(scores, "balance_backward scores");
  check_shape(dscores, scores.shape(), "balance_backward dscores");
  check_dtype(dscores, DType::kF32, "balance_backward dscores");
  SY_CHECK(dp.ndim() == 2 && dp.dim(1) == e && dp.dim(0) > 0 && scores.dim(0) % dp.dim(0) == 0)
      << "balance_backward dp must be [B, E] = [B, " << e << "] with B dividing " << scores.dim(0)
      << " tokens, got " << shape_str(dp.shape());
  check_dtype(dp, DType::kF32, "balance_backward dp");
  check_same_device({&dscores, &scores, &dp}, "balance_backward");
  if (scores.device().is_cpu()) return cpu::balance_backward(dscores, scores, dp);
#ifdef SWITCHYARD_HAVE_CUDA
  if (scores.device().is_cuda()) return cuda::balance_backward(dscores, scores, dp);
#endif
  no_kernel("balance_backward", scores.device());
}

void z_loss_backward(const Tensor& dlogits, const Tensor& logits, float scale) {
  check_router_matrix(logits, "z_loss_backward logits");
  check_shape(dlogits, logits.shape(), "z_loss_backward dlogits");
  check_dtype(dlogits, DType::kF32, "z_loss_backward dlogits");
  check_same_device({&dlogits, &logits}, "z_loss_backward");
  if (logits.device().is_cpu()) return cpu::z_loss_backward(dlogits, logits, scale);
#ifdef SWITCHYARD_HAVE_CUDA
  if (logits.device().is_cuda()) return cuda::z_loss_backward(dlogits, logits, scale);
#endif
  no_kernel("z_loss_backward", logits.device());
}

}  // namespace sy
