#pragma once
// The rollout engine's per-row bookkeeping after each sampled token, on the device, so that a
// decode step (embedding -> blocks -> head -> sample -> this) needs nothing from the host and
// the host reads the rows back only every few steps. Each row r of a decode batch is one
// sequence; for every row with active[r] != 0:
//
//   w = generated[r] - base[r]                (the token's column in this window's buffers)
//   out_token[r, w] = token[r];  out_logprob[r, w] = logprob[r]
//   generated[r] += 1;  length[r] += 1        (length: the position of the row's next input,
//                                              which is also the count of its cached keys)
//   active[r] = 0 when token[r] is one of stop_tokens, or when generated[r] >= limit[r]
//   attend[r] = active[r] ? length[r] + 1 : 0 (the keys the next step's query reads, its own
//                                              new key included; 0 makes an idle row cheap)
//
// Rows with active[r] == 0 are left alone. The caller keeps w < W (a window holds at most W
// tokens of a row); the CPU checks it, the CUDA kernel trusts it.
//
// Shapes, all on one device: token, generated, base, length, limit, active, attend i32 [R];
// logprob f32 [R]; out_token i32 [R, W]; out_logprob f32 [R, W]; stop_tokens i32 [S] (S >= 0).
#include "kernels/tensor.h"

namespace sy {

struct RolloutRows {
  Tensor generated, base, length, limit, active, attend;  // i32 [R]
  Tensor out_token;                                       // i32 [R, W]
  Tensor out_logprob;                                     // f32 [R, W]
};

void advance_rollout_rows(const RolloutRows& rows, const Tensor& token, const Tensor& logprob,
                          const Tensor& stop_tokens);

namespace cpu {
void advance_rollout_rows(const RolloutRows& rows, const Tensor& token, const Tensor& logprob,
                          const Tensor& stop_tokens);
}  // namespace cpu
namespace cuda {
// kernels/cuda/rollout_rows.cu; defined in CUDA builds only.
void advance_rollout_rows(const RolloutRows& rows, const Tensor& token, const Tensor& logprob,
                          const Tensor& stop_tokens);
}  // namespace cuda
}  // namespace sy
