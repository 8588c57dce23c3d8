#pragma once
// SwiGLU activation on a fused gate/up projection: h [N, 2F] holds gate in columns [0, F)
// and up in [F, 2F) (one GEMM with the stacked weight produces it); out [N, F] =
// silu(gate) * up, silu(g) = g * sigmoid(g). Backward: dh [N, 2F] written (=).
// Dtypes: f32; on CUDA also bf16 (h, out, dout, dh alike; fp32 arithmetic).
#include "kernels/tensor.h"

namespace sy {
void swiglu_forward(const Tensor& out, const Tensor& h);
void swiglu_backward(const Tensor& dh, const Tensor& dout, const Tensor& h);
namespace cpu {
void swiglu_forward(const Tensor& out, const Tensor& h);
void swiglu_backward(const Tensor& dh, const Tensor& dout, const Tensor& h);
}  // namespace cpu
namespace cuda {
// kernels/cuda/swiglu.cu; defined in CUDA builds only.
void swiglu_forward(const Tensor& out, const Tensor& h);
void swiglu_backward(const Tensor& dh, const Tensor& dout, const Tensor& h);
}  // namespace cuda
}  // namespace sy
