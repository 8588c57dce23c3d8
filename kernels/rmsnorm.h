#pragma once
// RMSNorm over the last dimension: y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps).
// x, y: [..., D] (N rows of D); weight [D]; rstd [N] is saved for the backward.
// Backward: dx is written (=), dweight accumulates (+=). With `residual` (dx's shape and dtype,
// may be dx itself), dx = the norm's input gradient + residual, added in fp32 and rounded once:
// a pre-norm block's residual stream gradient joins its sublayer's in the same pass.
// Dtypes: f32; on CUDA x, y, dy, dx may be bf16 (all four alike; fp32 statistics).
// weight, dweight and rstd are f32 everywhere.
#include "kernels/tensor.h"

namespace sy {
void rmsnorm_forward(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     float eps);
void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dy, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd, const Tensor& residual = Tensor());
namespace cpu {
void rmsnorm_forward(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     float eps);
void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dy, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd, const Tensor& residual);
}  // namespace cpu
namespace cuda {
// kernels/cuda/rmsnorm.cu; defined in CUDA builds only.
void rmsnorm_forward(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     float eps);
void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dy, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd, const Tensor& residual);
}  // namespace cuda
}  // namespace sy
