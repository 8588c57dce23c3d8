#include "kernels/elementwise.h"

#include "kernels/dispatch.h"

namespace sy {

void add(const Tensor& out, const Tensor& a, const Tensor& b) {
  check_float(a, "add a");
  check_shape(b, a.shape(), "add b");
  check_dtype(b, a.dtype(), "add b");
  check_shape(out, a.shape(), "add out");
  check_dtype(out, a.dtype(), "add out");
  check_same_device({&out, &a, &b}, "add");
  if (out.device().is_cpu()) return cpu::add(out, a, b);
#ifdef SWITCHYARD_HAVE_CUDA
  if (out.device().is_cuda()) return cuda::add(out, a, b);
#endif
  no_kernel("add", out.device());
}

void add_(const Tensor& y, const Tensor& x) { add(y, y, x); }

void scale_(const Tensor& x, float s) {
  check_float(x, "scale_ x");
  if (x.device().is_cpu()) return cpu::scale_(x, s);
#ifdef SWITCHYARD_HAVE_CUDA
  if (x.device().is_cuda()) return cuda::scale_(x, s);
#endif
  no_kernel("scale_", x.device());
}

void fill_(const Tensor& x, float v) {
  check_float(x, "fill_ x");
  if (x.device().is_cpu()) return cpu::fill_(x, v);
#ifdef SWITCHYARD_HAVE_CUDA
  if (x.device().is_cuda()) return cuda::fill_(x, v);
#endif
  no_kernel("fill_", x.device());
}

void concat_cols(const Tensor& out, const Tensor& a, const Tensor& b) {
  check_float(a, "concat_cols a");
  check_dtype(b, a.dtype(), "concat_cols b");
  check_dtype(out, a.dtype(), "concat_cols out");
  check_shape(out, {a.dim(0), a.dim(1) + b.dim(1)}, "concat_cols out");
  check_shape(b, {a.dim(0), b.dim(1)}, "concat_cols b");
  check_same_device({&out, &a, &b}, "concat_cols");
  if (out.device().is_cpu()) return cpu::concat_cols(out, a, b);
#ifdef SWITCHYARD_HAVE_CUDA
  if (out.device().is_cuda()) return cuda::concat_cols(out, a, b);
#endif
  no_kernel("concat_cols", out.device());
}

void split_cols(const Tensor& da, const Tensor& db, const Tensor& dout) {
  check_float(dout, "split_cols dout");
  check_dtype(da, dout.dtype(), "split_cols da");
  check_dtype(db, dout.dtype(), "split_cols db");
  check_shape(dout, {da.dim(0), da.dim(1) + db.dim(1)}, "split_cols dout");
  check_shape(db, {da.dim(0), db.dim(1)}, "split_cols db");
  check_same_device({&dout, &da, &db}, "split_cols");
  if (dout.device().is_cpu()) return cpu::split_cols(da, db, dout);
#ifdef SWITCHYARD_HAVE_CUDA
  if (dout.device().is_cuda()) return cuda::split_cols(da, db, dout);
#endif
  no_kernel("split_cols", dout.device());
}

double sum_squares(const Tensor& x) {
  check_float(x, "sum_squares x");
  if (x.device().is_cpu()) return cpu::sum_squares(x);
#ifdef SWITCHYARD_HAVE_CUDA
  if (x.device().is_cuda()) return cuda::sum_squares(x);
#endif
  no_kernel("sum_squares", x.device());
}

std::vector<double> sum_squares_each(const std::vector<Tensor>& xs) {
  if (xs.empty()) return {};
  for (const Tensor& x : xs) {
    check_float(x, "sum_squares_each x");
    SY_CHECK(x.device() == xs[0].device())
        << "sum_squares_each: tensors on " << xs[0].device().str() << " and " << x.device().str();
  }
#ifdef SWITCHYARD_HAVE_CUDA
  if (xs[0].device().is_cuda()) return cuda::sum_squares_each(xs);
#endif
  std::vector<double> out;
  for (const Tensor& x : xs) out.push_back(sum_squares(x));
  return out;
}

void cast(const Tensor& out, const Tensor& x) {
  for (const Tensor* t : {&out, &x}) {
    SY_CHECK(t->dtype() == DType::kF32 || t->dtype() == DType::kBF16)
        << "cast takes f32 or bf16 tensors, got " << dtype_name(t->dtype());
  }
  check_shape(out, x.shape(), "cast out");
  check_same_device({&out, &x}, "cast");
  if (x.device().is_cpu()) return cpu::cast(out, x);
#ifdef SWITCHYARD_HAVE_CUDA
  if (x.device().is_cuda()) return cuda::cast(out, x);
#endif
  no_kernel("cast", x.device());
}

Tensor as_dtype(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Tensor out = Tensor::empty(x.shape(), dtype, x.device());
  cast(out, x);
  return out;
}

}  // namespace sy
