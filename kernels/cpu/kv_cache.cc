// CPU reference for the slot KV cache (kernels/kv_cache.h), f32: a row-by-row copy into the
// slots, and per (row, query, head) a stable softmax over the visible cached keys. It also
// checks the index values the CUDA kernels trust.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/kv_cache.h"

namespace sy::cpu {

void kv_cache_append(const Tensor& cache_k, const Tensor& cache_v, const Tensor& k,
                     const Tensor& v, const Tensor& slot, const Tensor& start,
                     const Tensor& count) {
  const int64_t slots = cache_k.dim(0), capacity = cache_k.dim(1);
  const int64_t rows = k.dim(0), steps = k.dim(1);
  const int64_t width = k.dim(2) * k.dim(3);  // one position: Hkv * hd values
  const int32_t *S = slot.data<int32_t>(), *B = start.data<int32_t>(), *C = count.data<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    SY_CHECK(C[r] >= 0 && C[r] <= steps)
        << "kv_cache_append: count of row " << r << " is " << C[r] << "; it must be in [0, "
        << steps << "] (the T of k " << shape_str(k.shape()) << ")";
    if (C[r] == 0) continue;
    SY_CHECK(S[r] >= 0 && S[r] < slots) << "kv_cache_append: slot of row " << r << " is " << S[r]
                                        << "; the cache has slots [0, " << slots << ")";
    SY_CHECK(B[r] >= 0 && B[r] + static_cast<int64_t>(C[r]) <= capacity)
        << "kv_cache_append: row " << r << " writes positions [" << B[r] << ", "
        << static_cast<int64_t>(B[r]) + C[r] << ") but a slot holds positions [0, " << capacity
        << ")";
  }
  const float *K = k.data<float>(), *V = v.data<float>();
  float *CK = cache_k.data<float>(), *CV = cache_v.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t dst = (static_cast<int64_t>(S[r]) * capacity + B[r]) * width;
    const int64_t src = r * steps * width;
    const size_t bytes = static_cast<size_t>(C[r]) * width * sizeof(float);
    if (bytes == 0) continue;
    std::memcpy(CK + dst, K + src, bytes);
    std::memcpy(CV + dst, V + src, bytes);
  }
}

void decode_attention(const Tensor& out, const Tensor& q, const Tensor& cache_k,
                      const Tensor& cache_v, const Tensor& slot, const Tensor& length) {
  const int64_t slots = cache_k.dim(0), capacity = cache_k.dim(1), kv_heads = cache_k.dim(2);
  const int64_t rows = q.dim(0), tq = q.dim(1), heads = q.dim(2), hd = q.dim(3);
  const int64_t group = heads / kv_heads;
  const int32_t *S = slot.data<int32_t>(), *Len = length.data<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    if (Len[r] == 0) continue;
    SY_CHECK(Len[r] >= tq && Len[r] <= capacity)
        << "decode_attention: length of row " << r << " is " << Len[r] << "; it must be 0 (idle) "
        << "or in [Tq, L] = [" << tq << ", " << capacity << "] (the new positions count)";
    SY_CHECK(S[r] >= 0 && S[r] < slots) << "decode_attention: slot of row " << r << " is " << S[r]
                                        << "; the cache has slots [0, " << slots << ")";
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float *Q = q.data<float>(), *CK = cache_k.data<float>(), *CV = cache_v.data<float>();
  float* O = out.data<float>();
  std::vector<float> p(capacity);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < tq; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        const float* qi = Q + ((r * tq + t) * heads + h) * hd;
        float* oi = O + ((r * tq + t) * heads + h) * hd;
        std::fill(oi, oi + hd, 0.0f);
        if (Len[r] == 0) continue;
        const int64_t last = Len[r] - tq + t, g = h / group;
        const auto key = [&](const float* base, int64_t j) {
          return base + ((static_cast<int64_t>(S[r]) * capacity + j) * kv_heads + g) * hd;
        };
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j <= last; ++j) {
          const float* kj = key(CK, j);
          float s = 0;
          for (int64_t d = 0; d < hd; ++d) s += qi[d] * kj[d];
          p[j] = scale * s;
          m = std::max(m, p[j]);
        }
        float sum = 0;
        for (int64_t j = 0; j <= last; ++j) {
          p[j] = std::exp(p[j] - m);
          sum += p[j];
        }
        for (int64_t j = 0; j <= last; ++j) {
          const float w = p[j] / sum;
          const float* vj = key(CV, j);
          for (int64_t d = 0; d < hd; ++d) oi[d] += w * vj[d];
        }
      }
    }
  }
}

}  // namespace sy::cpu
