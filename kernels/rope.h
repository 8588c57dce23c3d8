#pragma once
// Rotary position embedding (half-split pairing, as in GPT-NeoX / HF Llama): for each head
// vector of size hd (even), element i < hd/2 pairs with i + hd/2 and the pair is rotated by
// angle pos * theta^(-2i/hd). x, out: [B, T, H, hd]; positions i32 [B, T] (per-row
// positions let a KV-cache decode and left-padded batches use the same op).
// out may alias x. Backward rotates by the negative angle: dx written (=); may alias dout.
// Dtypes: f32; on CUDA also bf16 (input and output alike; the rotation runs in fp32).
//
// rope_table: the cosine and sine of every (token, pair index) angle for `positions`, head
// dim hd and theta, f32 [B*T, hd/2, 2] (cos, sin) on the positions' device, each formed from
// the angle in double and rounded once: the values the ops above form for themselves. A
// model builds it once per batch (TokenLayout) and its layers' rotations take it in place of
// positions and theta, instead of each forming the same values again (a 1B-parameter step
// did so 32 times). The results are the same bits either way.
//
// rope_forward_qk / rope_backward_qk: an attention's q [B, T, H, hd] and k [B, T, Hkv, hd]
// rotated in place with one table; on CUDA in one launch instead of two, the same bits as
// rope_forward / rope_backward on each.
#include "kernels/tensor.h"

namespace sy {
void rope_forward(const Tensor& out, const Tensor& x, const Tensor& positions, float theta);
void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& positions, float theta);
Tensor rope_table(const Tensor& positions, int64_t head_dim, float theta);
void rope_forward(const Tensor& out, const Tensor& x, const Tensor& table);
void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& table);
void rope_forward_qk(const Tensor& q, const Tensor& k, const Tensor& table);
void rope_backward_qk(const Tensor& dq, const Tensor& dk, const Tensor& table);
namespace cpu {
void rope_forward(const Tensor& out, const Tensor& x, const Tensor& positions, float theta);
void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& positions, float theta);
void rope_table(const Tensor& table, const Tensor& positions, float theta);
// sign +1: the forward rotation; -1: the backward one.
void rope_rotate(const Tensor& out, const Tensor& x, const Tensor& table, float sign);
}  // namespace cpu
namespace cuda {
// kernels/cuda/rope.cu; defined in CUDA builds only.
void rope_forward(const Tensor& out, const Tensor& x, const Tensor& positions, float theta);
void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& positions, float theta);
void rope_table(const Tensor& table, const Tensor& positions, float theta);
void rope_rotate(const Tensor& out, const Tensor& x, const Tensor& table, float sign);
// q and k rotated in place by sign * the table's angles, in one launch where both take the
// vector kernel.
void rope_rotate_qk(const Tensor& q, const Tensor& k, const Tensor& table, float sign);
}  // namespace cuda
}  // namespace sy
