// Rotary position embedding: argument checks and device dispatch.
#include "kernels/rope.h"

#include "kernels/dispatch.h"

namespace sy {
namespace {

void check_rope(const Tensor& out, const Tensor& x, const Tensor& positions, const char* op) {
  SY_CHECK(x.ndim() == 4) << op << ": input has shape " << shape_str(x.shape())
                          << ", expected [B, T, H, head_dim]";
  SY_CHECK(x.dim(3) % 2 == 0) << op << ": head_dim " << x.dim(3)
                              << " is odd; rotary pairs need an even head_dim";
  check_float(x, "rope input");
  check_shape(out, x.shape(), "rope output");
  check_dtype(out, x.dtype(), "rope output");
  check_shape(positions, {x.dim(0), x.dim(1)}, "rope positions");
  check_dtype(positions, DType::kI32, "rope positions");
  check_same_device({&out, &x, &positions}, op);
}

}  // namespace

void rope_forward(const Tensor& out, const Tensor& x, const Tensor& positions, float theta) {
  check_rope(out, x, positions, "rope_forward");
  if (x.device().is_cpu()) return cpu::rope_forward(out, x, positions, theta);
#ifdef SWITCHYARD_HAVE_CUDA
  if (x.device().is_cuda()) return cuda::rope_forward(out, x, positions, theta);
#endif
  no_kernel("rope_forward", x.device());
}

void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& positions, float theta) {
  check_rope(dx, dout, positions, "rope_backward");
  if (dout.device().is_cpu()) return cpu::rope_backward(dx, dout, positions, theta);
#ifdef SWITCHYARD_HAVE_CUDA
  if (dout.device().is_cuda()) return cuda::rope_backward(dx, dout, positions, theta);
#endif
  no_kernel("rope_backward", dout.device());
}

}  // namespace sy
