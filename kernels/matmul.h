#pragma once
// General matrix multiply on 2-D row-major f32 tensors:
//   C = alpha * op(A) @ op(B) + beta * C,  op(X) = X, or X^T when its trans flag is set.
// beta == 0 writes C without reading it; beta == 1 accumulates into C.
// Dtypes: f32 A, B, C everywhere; on CUDA also bf16 A and B (fp32 accumulate) with an f32
// or bf16 C.
// A linear layer y = x W^T (W: [out, in]) is matmul(y, x, w, false, true).
//
// Backward of C = op(A) @ op(B) given dC:
//   dA = beta_a * dA + (gradient), dB = beta_b * dB + (gradient);
// an undefined dA or dB is skipped. By the gradient convention, callers pass beta 0 for
// activation gradients (written) and beta 1 for parameter gradients (accumulated).
//
// Batched: c [B, m, n], a and b [B, ...]: the same product for each of the B matrices of a,
// b and c (the mixture-of-experts layer's equal-sized expert blocks), one call; on CUDA one
// cuBLASLt strided-batch launch.
#include "kernels/tensor.h"

namespace sy {
void matmul(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
            float alpha = 1.0f, float beta = 0.0f);
void matmul_backward(const Tensor& da, const Tensor& db, const Tensor& dc, const Tensor& a,
                     const Tensor& b, bool trans_a, bool trans_b, float beta_a = 0.0f,
                     float beta_b = 0.0f);
void matmul_batched(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                    float alpha = 1.0f, float beta = 0.0f);
void matmul_backward_batched(const Tensor& da, const Tensor& db, const Tensor& dc, const Tensor& a,
                             const Tensor& b, bool trans_a, bool trans_b, float beta_a = 0.0f,
                             float beta_b = 0.0f);
namespace cpu {
void matmul(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
            float alpha, float beta);
// The same contract as a plain triple loop with double accumulation
// (kernels/cpu/matmul_reference.cc): the readable oracle cpu::matmul is tested against.
void matmul_reference(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                      float alpha, float beta);
}  // namespace cpu
namespace cuda {
// cuBLASLt (kernels/cuda/matmul.cu); defined in CUDA builds only.
void matmul(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
            float alpha, float beta);
void matmul_batched(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                    float alpha, float beta);
}  // namespace cuda
}  // namespace sy
