// RMSNorm over the last dimension: argument checks and device dispatch.
#include "kernels/rmsnorm.h"

#include "kernels/dispatch.h"

namespace sy {
namespace {

// x is [..., D]; returns N, the number of rows of D.
int64_t rmsnorm_rows(const Tensor& x, const Tensor& weight) {
  SY_CHECK(x.ndim() >= 1) << "rmsnorm x has shape " << shape_str(x.shape())
                          << ", expected [..., D]";
  check_float(x, "rmsnorm x");
  check_dtype(weight, DType::kF32, "rmsnorm weight");
  const int64_t d = x.dim(-1);
  check_shape(weight, {d}, "rmsnorm weight");
  return d ? x.numel() / d : 0;
}

}  // namespace

void rmsnorm_forward(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     float eps, const Tensor& residual, const Tensor& sum) {
  const int64_t n = rmsnorm_rows(x, weight);
  check_shape(y, x.shape(), "rmsnorm y");
  check_dtype(y, x.dtype(), "rmsnorm y");
  check_shape(rstd, {n}, "rmsnorm rstd");
  check_dtype(rstd, DType::kF32, "rmsnorm rstd");
  check_same_device({&y, &rstd, &x, &weight}, "rmsnorm_forward");
  SY_CHECK(residual.defined() == sum.defined())
      << "rmsnorm_forward: a residual needs a sum to write x + residual to, and a sum a residual";
  if (residual.defined()) {
    check_shape(residual, x.shape(), "rmsnorm residual");
    check_dtype(residual, x.dtype(), "rmsnorm residual");
    check_shape(sum, x.shape(), "rmsnorm sum");
    check_dtype(sum, x.dtype(), "rmsnorm sum");
    check_same_device({&x, &residual, &sum}, "rmsnorm_forward");
  }
  if (x.device().is_cpu()) return cpu::rmsnorm_forward(y, rstd, x, weight, eps, residual, sum);
#ifdef SWITCHYARD_HAVE_CUDA
  if (x.device().is_cuda()) return cuda::rmsnorm_forward(y, rstd, x, weight, eps, residual, sum);
#endif
  no_kernel("rmsnorm_forward", x.device());
}

void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dy, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd, const Tensor& residual) {
  const int64_t n = rmsnorm_rows(x, weight);
  check_shape(dx, x.shape(), "rmsnorm dx");
  check_dtype(dx, x.dtype(), "rmsnorm dx");
  check_shape(dy, x.shape(), "rmsnorm dy");
  check_dtype(dy, x.dtype(), "rmsnorm dy");
  check_shape(dweight, weight.shape(), "rmsnorm dweight");
  check_dtype(dweight, DType::kF32, "rmsnorm dweight");
  check_shape(rstd, {n}, "rmsnorm rstd");
  check_dtype(rstd, DType::kF32, "rmsnorm rstd");
  check_same_device({&dx, &dweight, &dy, &x, &weight, &rstd}, "rmsnorm_backward");
  if (residual.defined()) {
    check_shape(residual, x.shape(), "rmsnorm residual");
    check_dtype(residual, x.dtype(), "rmsnorm residual");
    check_same_device({&dx, &residual}, "rmsnorm_backward");
  }
  if (x.device().is_cpu())
    return cpu::rmsnorm_backward(dx, dweight, dy, x, weight, rstd, residual);
#ifdef SWITCHYARD_HAVE_CUDA
  if (x.device().is_cuda())
    return cuda::rmsnorm_backward(dx, dweight, dy, x, weight, rstd, residual);
#endif
  no_kernel("rmsnorm_backward", x.device());
}

}  // namespace sy
