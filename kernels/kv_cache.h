#pragma once
// The rollout engine's KV cache: one pool per attention layer, allocated once for the
// engine's capacity, k and v each [S, L, Hkv, hd] (S slots, one live sequence each, of at
// most L positions). A sequence keeps its slot from its prefill until it retires; nothing is
// allocated or copied per token.
//
// kv_cache_append: the keys and values of new positions written into their slots:
//   cache_k[slot[r], start[r] + t] = k[r, t]  (and v alike) for t < count[r]
//   k, v [R, T, Hkv, hd]; slot, start, count i32 [R] on the cache's device; count[r] <= T,
//   start[r] + count[r] <= L (checked on the CPU; the CUDA kernel trusts the engine). A row
//   with count 0 writes nothing (an idle row of a fixed-size decode batch).
//
// decode_attention: causal attention of new queries against their slot's cached keys:
//   q [R, Tq, H, hd]; for row r, query t sits at position length[r] - Tq + t and attends to
//   the keys at positions 0 .. length[r] - Tq + t of slot slot[r] (length[r] counts the
//   slot's valid positions, the new ones included, so the keys of the new positions are
//   appended first). scale 1 / sqrt(hd); query head h reads KV head h / (H / Hkv).
//   out [R, Tq, H, hd] written; rows with length[r] == 0 are written as zeros.
//   Tq == 1 is a decode step; Tq > 1 verifies draft tokens or prefills a chunk.
//
// Dtypes: the cache, k, v, q and out share one dtype: f32 (CPU and CUDA) or bf16 (CUDA;
// fp32 arithmetic inside). Indices i32. Nothing waits for the host.
#include "kernels/tensor.h"

namespace sy {

void kv_cache_append(const Tensor& cache_k, const Tensor& cache_v, const Tensor& k,
                     const Tensor& v, const Tensor& slot, const Tensor& start,
                     const Tensor& count);
void decode_attention(const Tensor& out, const Tensor& q, const Tensor& cache_k,
                      const Tensor& cache_v, const Tensor& slot, const Tensor& length);

// Which CUDA kernel decode_attention runs in bf16: kScalar (2-byte loads, a lane per 1-8 dims
// of a key; measured on an H100 at ~26% of HBM bandwidth on the bench model's decode) or
// kVector (16-byte loads, hd / 8 lanes a key, for head dims 8, 16, 32, 64, 128, 256; its
// parity test and timing have not yet run on a GPU, so it is not the default). The process
// starts with SWITCHYARD_DECODE_ATTENTION=scalar|vector (default scalar). f32 and other head
// dims always take the scalar kernel.
enum class DecodeAttentionKernel { kScalar, kVector };
void set_decode_attention_kernel(DecodeAttentionKernel kernel);
DecodeAttentionKernel decode_attention_kernel();

namespace cpu {
void kv_cache_append(const Tensor& cache_k, const Tensor& cache_v, const Tensor& k,
                     const Tensor& v, const Tensor& slot, const Tensor& start,
                     const Tensor& count);
void decode_attention(const Tensor& out, const Tensor& q, const Tensor& cache_k,
                      const Tensor& cache_v, const Tensor& slot, const Tensor& length);
}  // namespace cpu
namespace cuda {
// kernels/cuda/kv_cache.cu; defined in CUDA builds only.
void kv_cache_append(const Tensor& cache_k, const Tensor& cache_v, const Tensor& k,
                     const Tensor& v, const Tensor& slot, const Tensor& start,
                     const Tensor& count);
void decode_attention(const Tensor& out, const Tensor& q, const Tensor& cache_k,
                      const Tensor& cache_v, const Tensor& slot, const Tensor& length);
}  // namespace cuda
}  // namespace sy
