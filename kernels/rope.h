#pragma once
// Rotary position embedding (half-split pairing, as in GPT-NeoX / HF Llama): for each head
// vector of size hd (even), element i < hd/2 pairs with i + hd/2 and the pair is rotated by
// angle pos * theta^(-2i/hd). x, out: [B, T, H, hd]; positions i32 [B, T] (per-row
// positions let a KV-cache decode and left-padded batches use the same op).
// out may alias x. Backward rotates by the negative angle: dx written (=); may alias dout.
// Dtypes: f32; on CUDA also bf16 (input and output alike; the rotation runs in fp32).
#include "kernels/tensor.h"

namespace sy {
void rope_forward(const Tensor& out, const Tensor& x, const Tensor& positions, float theta);
void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& positions, float theta);
namespace cpu {
void rope_forward(const Tensor& out, const Tensor& x, const Tensor& positions, float theta);
void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& positions, float theta);
}  // namespace cpu
namespace cuda {
// kernels/cuda/rope.cu; defined in CUDA builds only.
void rope_forward(const Tensor& out, const Tensor& x, const Tensor& positions, float theta);
void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& positions, float theta);
}  // namespace cuda
}  // namespace sy
