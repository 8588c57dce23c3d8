// SwiGLU on a fused gate/up projection: argument checks and device dispatch.
#include "kernels/swiglu.h"

#include "kernels/dispatch.h"

namespace sy {
namespace {

void check_swiglu(const Tensor& out, const Tensor& h, const char* op) {
  SY_CHECK(h.ndim() == 2 && h.dim(1) % 2 == 0)
      << op << ": h has shape " << shape_str(h.shape()) << ", expected [N, 2F]";
  check_float(h, "swiglu h");
  check_shape(out, {h.dim(0), h.dim(1) / 2}, "swiglu out");
  check_dtype(out, h.dtype(), "swiglu out");
}

}  // namespace

void swiglu_forward(const Tensor& out, const Tensor& h) {
  check_swiglu(out, h, "swiglu_forward");
  check_same_device({&out, &h}, "swiglu_forward");
  if (h.device().is_cpu()) return cpu::swiglu_forward(out, h);
#ifdef SWITCHYARD_HAVE_CUDA
  if (h.device().is_cuda()) return cuda::swiglu_forward(out, h);
#endif
  no_kernel("swiglu_forward", h.device());
}

void swiglu_backward(const Tensor& dh, const Tensor& dout, const Tensor& h) {
  check_swiglu(dout, h, "swiglu_backward");
  check_shape(dh, h.shape(), "swiglu dh");
  check_dtype(dh, h.dtype(), "swiglu dh");
  check_same_device({&dh, &dout, &h}, "swiglu_backward");
  if (h.device().is_cpu()) return cpu::swiglu_backward(dh, dout, h);
#ifdef SWITCHYARD_HAVE_CUDA
  if (h.device().is_cuda()) return cuda::swiglu_backward(dh, dout, h);
#endif
  no_kernel("swiglu_backward", h.device());
}

}  // namespace sy
