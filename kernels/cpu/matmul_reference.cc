// The readable GEMM: C = alpha op(A) op(B) + beta C, one double-accumulated dot product per
// element of C. Slow on purpose; it is what cpu::matmul (BLAS or threaded loops) and the
// CUDA GEMMs are checked against. beta == 0 does not read C, as in the fast path.
#include "kernels/matmul.h"

namespace sy::cpu {

void matmul_reference(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                      float alpha, float beta) {
  const int64_t m = c.dim(0), n = c.dim(1), k = trans_a ? a.dim(0) : a.dim(1);
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* pc = c.data<float>();
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double aip = trans_a ? pa[p * m + i] : pa[i * k + p];
        const double bpj = trans_b ? pb[j * k + p] : pb[p * n + j];
        s += aip * bpj;
      }
      double out = alpha * s;
      if (beta != 0.0f) out += static_cast<double>(beta) * pc[i * n + j];
      pc[i * n + j] = static_cast<float>(out);
    }
  }
}

}  // namespace sy::cpu
