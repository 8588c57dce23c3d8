// C = alpha op(A) op(B) + beta C: argument checks and device dispatch. The backward is two
// more GEMMs on the same dispatch, so every backend gets it from its forward.
#include "kernels/matmul.h"

#include "kernels/dispatch.h"

namespace sy {
namespace {

struct GemmDims {
  int64_t m, n, k;
};

// op(A) is [m, k] and op(B) is [k, n]; aborts with both shapes when they do not chain.
GemmDims gemm_dims(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, const char* op) {
  SY_CHECK(a.ndim() == 2 && b.ndim() == 2)
      << op << " takes 2-D tensors, got A " << shape_str(a.shape()) << " and B "
      << shape_str(b.shape());
  check_float(a, "matmul A");
  check_dtype(b, a.dtype(), "matmul B");
  GemmDims d{trans_a ? a.dim(1) : a.dim(0), trans_b ? b.dim(0) : b.dim(1),
             trans_a ? a.dim(0) : a.dim(1)};
  const int64_t kb = trans_b ? b.dim(1) : b.dim(0);
  SY_CHECK(d.k == kb) << op << ": op(A) is " << d.m << " x " << d.k << " (A "
                      << shape_str(a.shape()) << (trans_a ? ", transposed" : "")
                      << ") but op(B) is " << kb << " x " << d.n << " (B " << shape_str(b.shape())
                      << (trans_b ? ", transposed" : "") << ")";
  return d;
}

}  // namespace

void matmul(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
            float alpha, float beta) {
  GemmDims d = gemm_dims(a, b, trans_a, trans_b, "matmul");
  check_shape(c, {d.m, d.n}, "matmul C");
  // C is f32, or bf16 when A and B are (cuBLASLt writes bf16 only from bf16 inputs).
  if (!(a.dtype() == DType::kBF16 && c.dtype() == DType::kBF16)) {
    check_dtype(c, DType::kF32, "matmul C");
  }
  check_same_device({&c, &a, &b}, "matmul");
  if (c.device().is_cpu()) return cpu::matmul(c, a, b, trans_a, trans_b, alpha, beta);
#ifdef SWITCHYARD_HAVE_CUDA
  if (c.device().is_cuda()) return cuda::matmul(c, a, b, trans_a, trans_b, alpha, beta);
#endif
  no_kernel("matmul", c.device());
}

// With G = dC: d op(A) = G op(B)^T and d op(B) = op(A)^T G; a transposed operand takes the
// transpose of its gradient, which swaps the two factors of that GEMM.
void matmul_backward(const Tensor& da, const Tensor& db, const Tensor& dc, const Tensor& a,
                     const Tensor& b, bool trans_a, bool trans_b, float beta_a, float beta_b) {
  GemmDims d = gemm_dims(a, b, trans_a, trans_b, "matmul_backward");
  check_shape(dc, {d.m, d.n}, "matmul dC");
  check_same_device({&da, &db, &dc, &a, &b}, "matmul_backward");
  if (da.defined()) {
    check_shape(da, a.shape(), "matmul dA");
    if (!trans_a) {
      matmul(da, dc, b, false, !trans_b, 1.0f, beta_a);  // dA = G op(B)^T
    } else {
      matmul(da, b, dc, trans_b, true, 1.0f, beta_a);  // dA = (G op(B)^T)^T = op(B) G^T
    }
  }
  if (db.defined()) {
    check_shape(db, b.shape(), "matmul dB");
    if (!trans_b) {
      matmul(db, a, dc, !trans_a, false, 1.0f, beta_b);  // dB = op(A)^T G
    } else {
      matmul(db, dc, a, true, trans_a, 1.0f, beta_b);  // dB = (op(A)^T G)^T = G^T op(A)
    }
  }
}

}  // namespace sy
