#include "models/rollout/kv_pool.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/kv_cache.h"
#ifdef SWITCHYARD_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif

namespace sy {

KvPool::KvPool(const KvPoolShape& shape, DType dtype, Device device) : shape_(shape) {
  for (int64_t l = 0; l < shape.layers; ++l) {
    const Shape s = {shape.slots, shape.max_len, shape.kv_heads, shape.head_dim};
    k_.push_back(Tensor::empty(s, dtype, device));
    v_.push_back(Tensor::empty(s, dtype, device));
  }
}

absl::StatusOr<std::unique_ptr<KvPool>> KvPool::create(const KvPoolShape& shape, DType dtype,
                                                       Device device, int64_t workspace_bytes,
                                                       int64_t row_workspace_bytes) {
  SY_CHECK(shape.layers > 0 && shape.slots > 0 && shape.max_len > 0 && shape.kv_heads > 0 &&
           shape.head_dim > 0)
      << "KV pool shape: every size must be positive";
#ifdef SWITCHYARD_HAVE_CUDA
  if (device.is_cuda()) {
    // What our allocator keeps for reuse is free to us too.
    const int64_t available = cuda::free_memory_bytes(device.index) + memory_stats(device).cached;
    KvPoolShape one = shape;
    one.slots = 1;
    const int64_t per_row = one.bytes(dtype) + row_workspace_bytes;
    const int64_t need = shape.bytes(dtype) + workspace_bytes + shape.slots * row_workspace_bytes;
    if (need > available) {
      const int64_t fit = (available - workspace_bytes) / std::max<int64_t>(1, per_row);
      return absl::ResourceExhaustedError(
          absl::StrCat("the rollout engine's KV cache for ", shape.slots, " rows of ",
                       shape.max_len, " positions needs ", shape.bytes(dtype) >> 20, " MiB plus ",
                       (need - shape.bytes(dtype)) >> 20, " MiB of working memory, but ",
                       device.str(), " has ", available >> 20, " MiB free; ",
                       fit > 0 ? absl::StrCat("the largest batch that fits is ", fit,
                                              " rows: lower the batch size (the engine's max_rows)")
                               : "not even one row fits: shorten the prompts or max_new_tokens"));
    }
  }
#endif
  return std::unique_ptr<KvPool>(new KvPool(shape, dtype, device));
}

Tensor PoolAttention::attend(const Tensor& q, const Tensor& k, const Tensor& v) {
  const Tensor& cache_k = pool_.k(layer_);
  const Tensor& cache_v = pool_.v(layer_);
  Tensor out = Tensor::empty(q.shape(), q.dtype(), q.device());
  if (step_.mode == PoolStep::Mode::kPrefill) {
    Tensor lse = Tensor::empty({q.dim(0), q.dim(2), q.dim(1)}, DType::kF32, q.device());
    attention_forward(out, lse, q, k, v);
    kv_cache_append(cache_k, cache_v, k, v, step_.slot, step_.start, step_.count);
  } else {
    kv_cache_append(cache_k, cache_v, k, v, step_.slot, step_.start, step_.count);
    decode_attention(out, q, cache_k, cache_v, step_.slot, step_.attend);
  }
  return out;
}

}  // namespace sy
