#pragma once
// Embedding lookup. out[n, :] = table[ids[n], :]; ids i32 [N], table [V, D], out [N, D].
// Backward: dtable[ids[n], :] += dout[n, :] (a parameter gradient: accumulates).
// An id outside [0, V) is a programming error (data readers validate ids first).
// Dtypes: f32; on CUDA the table and out may each also be bf16 (dout too); dtable is f32.
#include "kernels/tensor.h"

namespace sy {
void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table);
void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& ids);
namespace cpu {
void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table);
void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& ids);
}  // namespace cpu
namespace cuda {
// kernels/cuda/embedding.cu; defined in CUDA builds only.
void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table);
void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& ids);
}  // namespace cuda
}  // namespace sy
