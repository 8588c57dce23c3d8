// Argument checks and device dispatch for the rollout engine's slot KV cache (see kv_cache.h).
// Shapes and dtypes are checked here; index values (slots, starts, lengths) live on the
// tensors' device and are checked by the CPU op only.
#include "kernels/kv_cache.h"

#include <atomic>

#include "kernels/dispatch.h"
#include "kernels/env.h"

namespace sy {
namespace {

std::atomic<DecodeAttentionKernel>& decode_kernel_flag() {
  static std::atomic<DecodeAttentionKernel> flag(
      env_choice("SWITCHYARD_DECODE_ATTENTION", {"scalar", "vector"}) == 0
          ? DecodeAttentionKernel::kScalar
          : DecodeAttentionKernel::kVector);
  return flag;
}

void check_cache(const Tensor& cache_k, const Tensor& cache_v, const char* op) {
  SY_CHECK(cache_k.defined() && cache_k.ndim() == 4)
      << op << ": cache_k must be [S, L, Hkv, hd], got "
      << (cache_k.defined() ? shape_str(cache_k.shape()) : "an undefined tensor");
  check_shape(cache_v, cache_k.shape(), "kv cache v (must match cache_k)");
  if (!cache_k.device().is_cuda() || cache_k.dtype() != DType::kBF16) {
    check_dtype(cache_k, DType::kF32, "kv cache k (f32, or bf16 on CUDA)");
  }
  check_dtype(cache_v, cache_k.dtype(), "kv cache v");
}

void check_index(const Tensor& t, int64_t rows, const char* what) {
  SY_CHECK(t.defined()) << what << " is not set (want i32 [" << rows << "], one per row)";
  check_shape(t, {rows}, what);
  check_dtype(t, DType::kI32, what);
}

}  // namespace

void set_decode_attention_kernel(DecodeAttentionKernel kernel) { decode_kernel_flag().store(kernel); }
DecodeAttentionKernel decode_attention_kernel() { return decode_kernel_flag().load(); }

void kv_cache_append(const Tensor& cache_k, const Tensor& cache_v, const Tensor& k,
                     const Tensor& v, const Tensor& slot, const Tensor& start,
                     const Tensor& count) {
  check_cache(cache_k, cache_v, "kv_cache_append");
  SY_CHECK(k.defined() && k.ndim() == 4)
      << "kv_cache_append: k must be [R, T, Hkv, hd], got "
      << (k.defined() ? shape_str(k.shape()) : "an undefined tensor");
  const int64_t rows = k.dim(0), steps = k.dim(1);
  SY_CHECK(k.dim(2) == cache_k.dim(2) && k.dim(3) == cache_k.dim(3))
      << "kv_cache_append: k " << shape_str(k.shape()) << " has [Hkv, hd] = [" << k.dim(2) << ", "
      << k.dim(3) << "] but the cache " << shape_str(cache_k.shape()) << " holds ["
      << cache_k.dim(2) << ", " << cache_k.dim(3) << "]";
  check_shape(v, k.shape(), "kv_cache_append v (must match k)");
  check_dtype(k, cache_k.dtype(), "kv_cache_append k (the cache's dtype)");
  check_dtype(v, cache_k.dtype(), "kv_cache_append v (the cache's dtype)");
  check_index(slot, rows, "kv_cache_append slot");
  check_index(start, rows, "kv_cache_append start");
  check_index(count, rows, "kv_cache_append count");
  check_same_device({&cache_k, &cache_v, &k, &v, &slot, &start, &count}, "kv_cache_append");
  if (rows == 0 || steps == 0) return;
  if (k.device().is_cpu()) return cpu::kv_cache_append(cache_k, cache_v, k, v, slot, start, count);
#ifdef SWITCHYARD_HAVE_CUDA
  if (k.device().is_cuda()) {
    return cuda::kv_cache_append(cache_k, cache_v, k, v, slot, start, count);
  }
#endif
  no_kernel("kv_cache_append", k.device());
}

void decode_attention(const Tensor& out, const Tensor& q, const Tensor& cache_k,
                      const Tensor& cache_v, const Tensor& slot, const Tensor& length) {
  check_cache(cache_k, cache_v, "decode_attention");
  SY_CHECK(q.defined() && q.ndim() == 4)
      << "decode_attention: q must be [R, Tq, H, hd], got "
      << (q.defined() ? shape_str(q.shape()) : "an undefined tensor");
  const int64_t rows = q.dim(0), heads = q.dim(2), hd = q.dim(3), kv_heads = cache_k.dim(2);
  SY_CHECK(hd == cache_k.dim(3)) << "decode_attention: q head dim " << hd
                                 << " differs from the cache's " << cache_k.dim(3);
  SY_CHECK(kv_heads > 0 && heads % kv_heads == 0)
      << "decode_attention: " << heads << " query heads are not a multiple of the cache's "
      << kv_heads << " KV heads";
  SY_CHECK(q.dim(1) > 0) << "decode_attention: q has no queries (Tq = 0)";
  check_dtype(q, cache_k.dtype(), "decode_attention q (the cache's dtype)");
  check_shape(out, q.shape(), "decode_attention out (must match q)");
  check_dtype(out, cache_k.dtype(), "decode_attention out (the cache's dtype)");
  check_index(slot, rows, "decode_attention slot");
  check_index(length, rows, "decode_attention length");
  check_same_device({&out, &q, &cache_k, &cache_v, &slot, &length}, "decode_attention");
  if (rows == 0) return;
  if (q.device().is_cpu()) return cpu::decode_attention(out, q, cache_k, cache_v, slot, length);
#ifdef SWITCHYARD_HAVE_CUDA
  if (q.device().is_cuda()) return cuda::decode_attention(out, q, cache_k, cache_v, slot, length);
#endif
  no_kernel("decode_attention", q.device());
}

}  // namespace sy
