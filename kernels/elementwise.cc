#include "kernels/elementwise.h"

#include "kernels/dispatch.h"

namespace sy {

void add(const Tensor& out, const Tensor& a, const Tensor& b) {
  check_dtype(a, DType::kF32, "add a");
  check_shape(b, a.shape(), "add b");
  check_shape(out, a.shape(), "add out");
  check_same_device({&out, &a, &b}, "add");
  if (out.device().is_cpu()) return cpu::add(out, a, b);
  no_kernel("add", out.device());
}

void add_(const Tensor& y, const Tensor& x) { add(y, y, x); }

void scale_(const Tensor& x, float s) {
  check_dtype(x, DType::kF32, "scale_ x");
  if (x.device().is_cpu()) return cpu::scale_(x, s);
  no_kernel("scale_", x.device());
}

void concat_cols(const Tensor& out, const Tensor& a, const Tensor& b) {
  check_shape(out, {a.dim(0), a.dim(1) + b.dim(1)}, "concat_cols out");
  check_shape(b, {a.dim(0), b.dim(1)}, "concat_cols b");
  check_same_device({&out, &a, &b}, "concat_cols");
  if (out.device().is_cpu()) return cpu::concat_cols(out, a, b);
  no_kernel("concat_cols", out.device());
}

void split_cols(const Tensor& da, const Tensor& db, const Tensor& dout) {
  check_shape(dout, {da.dim(0), da.dim(1) + db.dim(1)}, "split_cols dout");
  check_shape(db, {da.dim(0), db.dim(1)}, "split_cols db");
  check_same_device({&dout, &da, &db}, "split_cols");
  if (dout.device().is_cpu()) return cpu::split_cols(da, db, dout);
  no_kernel("split_cols", dout.device());
}

double sum_squares(const Tensor& x) {
  check_dtype(x, DType::kF32, "sum_squares x");
  if (x.device().is_cpu()) return cpu::sum_squares(x);
  no_kernel("sum_squares", x.device());
}

}  // namespace sy
