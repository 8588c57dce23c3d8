#pragma once
// Causal scaled-dot-product attention with grouped KV heads (MHA when Hkv == H, GQA else).
//   q [B, Tq, H, hd], k and v [B, Tk, Hkv, hd], H % Hkv == 0, Tq <= Tk, out [B, Tq, H, hd].
// Query t sits at absolute position Tk - Tq + t and sees keys 0 .. Tk - Tq + t (so Tq == Tk
// is training, Tq < Tk is a KV-cache decode). Query head h reads KV head h / (H / Hkv).
// scale = 1 / sqrt(hd). lse [B, H, Tq] is the log-sum-exp of each query's scaled scores,
// saved so the backward recomputes probabilities instead of storing a T x T matrix.
// Backward: dq, dk, dv are written (=).
// Dtypes: f32; on CUDA q, k, v, out, dout, dq, dk, dv may instead all be bf16 (fp32
// arithmetic inside). lse is f32 everywhere. CUDA takes head dims up to 256.
#include "kernels/tensor.h"

namespace sy {
// Whether the backward repeats bit for bit (true, the default). false lets cuDNN's fused
// attention (the CUDA bf16 training path) accumulate dq with atomics: faster, but the last
// bits depend on the order the additions land in. Our own kernels (CPU and CUDA) are
// deterministic either way. Process-wide; the run sets it from Experiment.deterministic.
void set_attention_deterministic(bool deterministic);
bool attention_deterministic();

void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                       const Tensor& v);
void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse);
namespace cpu {
void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                       const Tensor& v);
void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse);
}  // namespace cpu
namespace cuda {
// Flash-style kernels (kernels/cuda/attention.cu); defined in CUDA builds only.
void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                       const Tensor& v);
void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse);
}  // namespace cuda
}  // namespace sy
