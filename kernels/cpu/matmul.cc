// CPU GEMM, C = alpha op(A) op(B) + beta C on row-major f32. With a CBLAS (OpenBLAS) it is
// one cblas_sgemm; without, a loop nest whose inner loop walks contiguous rows (i-k-j, or
// row-by-row dot products when B is transposed), split by rows of C over threads when the
// problem is large. kernels/cpu/matmul_reference.cc is the plain version tests compare with.
#include <algorithm>
#include <climits>
#include <vector>

#ifdef SWITCHYARD_HAVE_BLAS
#include <cblas.h>
#endif

#include "kernels/cpu/threads.h"
#include "kernels/matmul.h"

namespace sy::cpu {
namespace {

// C = beta C, where beta == 0 overwrites (C may hold garbage): what is left of the GEMM when
// there is nothing to multiply (k == 0 or alpha == 0).
void scale(float* c, int64_t count, float beta) {
  if (beta == 0.0f) {
    std::fill(c, c + count, 0.0f);
  } else if (beta != 1.0f) {
    for (int64_t i = 0; i < count; ++i) c[i] *= beta;
  }
}

#ifndef SWITCHYARD_HAVE_BLAS
// Below this many multiply-adds, starting threads costs more than it saves.
constexpr int64_t kParallelWork = int64_t{1} << 18;

// Rows [begin, end) of C. op(A)[i, p] is a[i*k + p], or a[p*m + i] when transposed.
void gemm_rows(int64_t begin, int64_t end, float* c, const float* a, const float* b, int64_t m,
               int64_t n, int64_t k, bool trans_a, bool trans_b, float alpha, float beta) {
  std::vector<float> acc(n), a_row(trans_a ? k : 0);
  for (int64_t i = begin; i < end; ++i) {
    if (!trans_b) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t p = 0; p < k; ++p) {
        const float aip = trans_a ? a[p * m + i] : a[i * k + p];
        const float* bp = b + p * n;
        for (int64_t j = 0; j < n; ++j) acc[j] += aip * bp[j];
      }
    } else {
      const float* ai = a + i * k;
      if (trans_a) {
        for (int64_t p = 0; p < k; ++p) a_row[p] = a[p * m + i];
        ai = a_row.data();
      }
      for (int64_t j = 0; j < n; ++j) {
        const float* bj = b + j * k;
        float s = 0.0f;
        for (int64_t p = 0; p < k; ++p) s += ai[p] * bj[p];
        acc[j] = s;
      }
    }
    float* ci = c + i * n;
    if (beta == 0.0f) {
      for (int64_t j = 0; j < n; ++j) ci[j] = alpha * acc[j];
    } else {
      for (int64_t j = 0; j < n; ++j) ci[j] = alpha * acc[j] + beta * ci[j];
    }
  }
}
#endif

}  // namespace

void matmul(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
            float alpha, float beta) {
  const int64_t m = c.dim(0), n = c.dim(1), k = trans_a ? a.dim(0) : a.dim(1);
  if (m == 0 || n == 0) return;
  float* y = c.data<float>();
  if (k == 0 || alpha == 0.0f) return scale(y, m * n, beta);
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
#ifdef SWITCHYARD_HAVE_BLAS
  SY_CHECK(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX)
      << "matmul " << m << " x " << k << " x " << n << " exceeds the 32-bit BLAS interface";
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, pa, static_cast<int>(a.dim(1)), pb,
              static_cast<int>(b.dim(1)), beta, y, static_cast<int>(n));
#else
  const int64_t chunks = std::min<int64_t>(m, cpu_threads());
  parallel_for(chunks, m * n * k, kParallelWork, [&](int64_t t) {
    gemm_rows(m * t / chunks, m * (t + 1) / chunks, y, pa, pb, m, n, k, trans_a, trans_b, alpha,
              beta);
  });
#endif
}

}  // namespace sy::cpu
