// Rotary position embedding: argument checks and device dispatch.
#include "kernels/rope.h"

#include "kernels/dispatch.h"

namespace sy {
namespace {

// x [B, T, H, hd] with hd even, out of its shape and dtype.
void check_rope_io(const Tensor& out, const Tensor& x, const char* op) {
  SY_CHECK(x.ndim() == 4) << op << ": input has shape " << shape_str(x.shape())
                          << ", expected [B, T, H, head_dim]";
  SY_CHECK(x.dim(3) % 2 == 0) << op << ": head_dim " << x.dim(3)
                              << " is odd; rotary pairs need an even head_dim";
  check_float(x, "rope input");
  check_shape(out, x.shape(), "rope output");
  check_dtype(out, x.dtype(), "rope output");
}

void check_rope(const Tensor& out, const Tensor& x, const Tensor& positions, const char* op) {
  check_rope_io(out, x, op);
  check_shape(positions, {x.dim(0), x.dim(1)}, "rope positions");
  check_dtype(positions, DType::kI32, "rope positions");
  check_same_device({&out, &x, &positions}, op);
}

// A table from rope_table for x [B, T, H, hd]: f32 [B*T, hd/2, 2] on x's device.
void check_table(const Tensor& out, const Tensor& x, const Tensor& table, const char* op) {
  check_rope_io(out, x, op);
  SY_CHECK(table.defined()) << op << ": the table is undefined (build it with rope_table)";
  check_shape(table, {x.dim(0) * x.dim(1), x.dim(3) / 2, 2}, "rope table");
  check_dtype(table, DType::kF32, "rope table");
  check_same_device({&out, &x, &table}, op);
}

void rotate_with_table(const Tensor& out, const Tensor& x, const Tensor& table, float sign,
                       const char* op) {
  check_table(out, x, table, op);
  if (x.device().is_cpu()) return cpu::rope_rotate(out, x, table, sign);
#ifdef SWITCHYARD_HAVE_CUDA
  if (x.device().is_cuda()) return cuda::rope_rotate(out, x, table, sign);
#endif
  no_kernel(op, x.device());
}

void rotate_qk(const Tensor& q, const Tensor& k, const Tensor& table, float sign,
               const char* op) {
  check_table(q, q, table, op);
  check_table(k, k, table, op);
  check_dtype(k, q.dtype(), "rope k");
  check_same_device({&q, &k}, op);
  if (q.device().is_cpu()) {
    cpu::rope_rotate(q, q, table, sign);
    cpu::rope_rotate(k, k, table, sign);
    return;
  }
#ifdef SWITCHYARD_HAVE_CUDA
  if (q.device().is_cuda()) return cuda::rope_rotate_qk(q, k, table, sign);
#endif
  no_kernel(op, q.device());
}

}  // namespace

void rope_forward_qk(const Tensor& q, const Tensor& k, const Tensor& table) {
  rotate_qk(q, k, table, 1.0f, "rope_forward_qk");
}

void rope_backward_qk(const Tensor& dq, const Tensor& dk, const Tensor& table) {
  rotate_qk(dq, dk, table, -1.0f, "rope_backward_qk");
}

Tensor rope_table(const Tensor& positions, int64_t head_dim, float theta) {
  SY_CHECK(positions.ndim() == 2) << "rope_table: positions have shape "
                                  << shape_str(positions.shape()) << ", expected [B, T]";
  check_dtype(positions, DType::kI32, "rope_table positions");
  SY_CHECK(head_dim > 0 && head_dim % 2 == 0)
      << "rope_table: head_dim " << head_dim << "; rotary pairs need an even, positive head_dim";
  Tensor table =
      Tensor::empty({positions.numel(), head_dim / 2, 2}, DType::kF32, positions.device());
  if (positions.device().is_cpu()) {
    cpu::rope_table(table, positions, theta);
    return table;
  }
#ifdef SWITCHYARD_HAVE_CUDA
  if (positions.device().is_cuda()) {
    cuda::rope_table(table, positions, theta);
    return table;
  }
#endif
  no_kernel("rope_table", positions.device());
  return table;
}

void rope_forward(const Tensor& out, const Tensor& x, const Tensor& table) {
  rotate_with_table(out, x, table, 1.0f, "rope_forward");
}

void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& table) {
  rotate_with_table(dx, dout, table, -1.0f, "rope_backward");
}

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
