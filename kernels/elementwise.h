#pragma once
// Small elementwise and layout ops the model glues its layers with. All f32, same device;
// on CUDA also bf16 (every tensor of one call alike; fp32 arithmetic, sum_squares in double).
//   add(out, a, b):        out = a + b            (out may alias a or b)
//   add_(y, x):            y += x                 (accumulating: residual gradients)
//   scale_(x, s):          x *= s
//   fill_(x, v):           x = v                  (on the GPU without a host copy)
//   concat_cols(out, a, b) out[n] = [a[n], b[n]]  a [N, A], b [N, B], out [N, A + B]
//   split_cols(da, db, d)  the backward of concat_cols: da = d[:, :A], db = d[:, A:] (written)
//   sum_squares(x)         sum of x^2 in double (gradient norms)
//   sum_squares_each(xs)   sum_squares of each tensor (one device; on CUDA two launches and
//                          one wait for all of them)
//   cast(out, x)           out = x converted to out's dtype (f32 <-> bf16, round to nearest
//                          even); the one op that mixes dtypes, on the CPU too
//   as_dtype(x, dtype)     x itself when it has that dtype, else a new cast copy
#include <vector>

#include "kernels/tensor.h"

namespace sy {
void add(const Tensor& out, const Tensor& a, const Tensor& b);
void add_(const Tensor& y, const Tensor& x);
void scale_(const Tensor& x, float s);
void fill_(const Tensor& x, float v);
void concat_cols(const Tensor& out, const Tensor& a, const Tensor& b);
void split_cols(const Tensor& da, const Tensor& db, const Tensor& dout);
double sum_squares(const Tensor& x);
std::vector<double> sum_squares_each(const std::vector<Tensor>& xs);
void cast(const Tensor& out, const Tensor& x);
Tensor as_dtype(const Tensor& x, DType dtype);
namespace cpu {
void add(const Tensor& out, const Tensor& a, const Tensor& b);
void scale_(const Tensor& x, float s);
void fill_(const Tensor& x, float v);
void concat_cols(const Tensor& out, const Tensor& a, const Tensor& b);
void split_cols(const Tensor& da, const Tensor& db, const Tensor& dout);
double sum_squares(const Tensor& x);
void cast(const Tensor& out, const Tensor& x);
}  // namespace cpu
namespace cuda {
// kernels/cuda/elementwise.cu; defined in CUDA builds only.
void add(const Tensor& out, const Tensor& a, const Tensor& b);
void scale_(const Tensor& x, float s);
void fill_(const Tensor& x, float v);
void concat_cols(const Tensor& out, const Tensor& a, const Tensor& b);
void split_cols(const Tensor& da, const Tensor& db, const Tensor& dout);
double sum_squares(const Tensor& x);
std::vector<double> sum_squares_each(const std::vector<Tensor>& xs);
// The same sums left on the GPU for later kernels: out[i] (device memory, xs.size() doubles)
// is written by work queued on stream(); nothing waits. Deterministic, and out[i] depends on
// xs[i] alone, so both forms give the same bits.
void sum_squares_each(const std::vector<Tensor>& xs, double* out);
void cast(const Tensor& out, const Tensor& x);
}  // namespace cuda
}  // namespace sy
