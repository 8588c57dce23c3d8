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
namespace {

// Matrix i of a [B, r, c] tensor, as a 2-D [r, c] view.
Tensor matrix(const Tensor& t, int64_t i) { return t.rows(i, i + 1).view({t.dim(1), t.dim(2)}); }

void check_batched(const Tensor& t, int64_t batch, const char* what) {
  SY_CHECK(t.defined() && t.ndim() == 3)
      << what << " must be a [batch, rows, cols] tensor, got "
      << (t.defined() ? shape_str(t.shape()) : std::string("an undefined tensor"));
  SY_CHECK(t.dim(0) == batch) << what << " holds " << t.dim(0) << " matrices, expected " << batch;
}

}  // namespace

void matmul_batched(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                    float alpha, float beta) {
  SY_CHECK(c.defined() && c.ndim() == 3)
      << "matmul_batched C must be [batch, m, n], got "
      << (c.defined() ? shape_str(c.shape()) : std::string("an undefined tensor"));
  const int64_t batch = c.dim(0);
  check_batched(a, batch, "matmul_batched A");
  check_batched(b, batch, "matmul_batched B");
  if (batch == 0) return;
  // Shapes, dtypes and devices as for one product (matrix 0 stands for all of them).
  GemmDims d = gemm_dims(matrix(a, 0), matrix(b, 0), trans_a, trans_b, "matmul_batched");
  check_shape(matrix(c, 0), {d.m, d.n}, "matmul_batched C[i]");
  if (!(a.dtype() == DType::kBF16 && c.dtype() == DType::kBF16)) {
    check_dtype(c, DType::kF32, "matmul_batched C");
  }
  check_same_device({&c, &a, &b}, "matmul_batched");
  if (c.device().is_cpu()) {
    for (int64_t i = 0; i < batch; ++i)
      cpu::matmul(matrix(c, i), matrix(a, i), matrix(b, i), trans_a, trans_b, alpha, beta);
    return;
  }
#ifdef SWITCHYARD_HAVE_CUDA
  if (c.device().is_cuda()) return cuda::matmul_batched(c, a, b, trans_a, trans_b, alpha, beta);
#endif
  no_kernel("matmul_batched", c.device());
}

void matmul_backward_batched(const Tensor& da, const Tensor& db, const Tensor& dc,
                             const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                             float beta_a, float beta_b) {
  // The 2-D backward's products, each on every matrix of the batch at once.
  if (da.defined()) {
    check_batched(da, a.dim(0), "matmul_backward_batched dA");
    SY_CHECK(da.shape() == a.shape()) << "matmul_backward_batched dA " << shape_str(da.shape())
                                      << " vs A " << shape_str(a.shape());
    if (!trans_a) {
      matmul_batched(da, dc, b, false, !trans_b, 1.0f, beta_a);
    } else {
      matmul_batched(da, b, dc, trans_b, true, 1.0f, beta_a);
    }
  }
  if (db.defined()) {
    check_batched(db, b.dim(0), "matmul_backward_batched dB");
    SY_CHECK(db.shape() == b.shape()) << "matmul_backward_batched dB " << shape_str(db.shape())
                                      << " vs B " << shape_str(b.shape());
    if (!trans_b) {
      matmul_batched(db, a, dc, !trans_a, false, 1.0f, beta_b);
    } else {
      matmul_batched(db, dc, a, true, trans_a, 1.0f, beta_b);
    }
  }
}

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
