#pragma once
// RMSNorm over the last dimension: y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps).
// x, y: [..., D] (N rows of D); weight [D]; rstd [N] is saved for the backward.
// Forward with `residual` (x's shape and dtype): the normalized input is h = x + residual,
// rounded to x's dtype and written to `sum` (may be x or residual), so a pre-norm block's
// residual add costs no pass of its own; the backward then takes h as its x.
// Backward: dx is written (=), dweight accumulates (+=). With `residual` (dx's shape and dtype,
// may be dx itself), dx = the norm's input gradient + residual, added in fp32 and rounded once:
// a pre-norm block's residual stream gradient joins its sublayer's in the same pass.
// Dtypes: f32; on CUDA x, y, dy, dx may be bf16 (all four alike; fp32 statistics).
// weight, dweight and rstd are f32 everywhere.
#include "kernels/tensor.h"

namespace sy {
void rmsnorm_forward(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     float eps, const Tensor& residual = Tensor(), const Tensor& sum = Tensor());
void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dy, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd, const Tensor& residual = Tensor());
namespace cpu {
void rmsnorm_forward(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     float eps, const Tensor& residual, const Tensor& sum);
void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dy, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd, const Tensor& residual);
}  // namespace cpu
namespace cuda {
// kernels/cuda/rmsnorm.cu; defined in CUDA builds only.
void rmsnorm_forward(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     float eps, const Tensor& residual, const Tensor& sum);
void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dy, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd, const Tensor& residual);
}  // namespace cuda
}  // namespace sy
