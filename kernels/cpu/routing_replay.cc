// CPU reference for routing replay (kernels/routing_replay.h), row by row. topk_replay forms
// the weights with topk_forward's float operations (kernels/cpu/router.cc): the chosen scores
// summed in order, one factor scale / sum (or scale), each weight score * factor. It also
// checks the index values the CUDA kernels trust.
#include "kernels/routing_replay.h"

#include <algorithm>
#include <cstring>

namespace sy::cpu {

void routes_append(const Tensor& routes, const Tensor& indices, int layer, const Tensor& slot,
                   const Tensor& start, const Tensor& count) {
  const int64_t slots = routes.dim(0), capacity = routes.dim(1), layers = routes.dim(2);
  const int64_t k = routes.dim(3), rows = slot.dim(0), steps = indices.dim(0) / rows;
  const int32_t *S = slot.data<int32_t>(), *B = start.data<int32_t>(), *C = count.data<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    SY_CHECK(C[r] >= 0 && C[r] <= steps)
        << "routes_append: count of row " << r << " is " << C[r] << "; it must be in [0, " << steps
        << "] (the tokens per row of indices " << shape_str(indices.shape()) << ")";
    if (C[r] == 0) continue;
    SY_CHECK(S[r] >= 0 && S[r] < slots) << "routes_append: slot of row " << r << " is " << S[r]
                                        << "; the buffer has slots [0, " << slots << ")";
    SY_CHECK(B[r] >= 0 && B[r] + static_cast<int64_t>(C[r]) <= capacity)
        << "routes_append: row " << r << " writes positions [" << B[r] << ", "
        << static_cast<int64_t>(B[r]) + C[r] << ") but a slot holds positions [0, " << capacity
        << ")";
  }
  const int32_t* in = indices.data<int32_t>();
  int32_t* out = routes.data<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < C[r]; ++t) {
      const int64_t position = static_cast<int64_t>(S[r]) * capacity + B[r] + t;
      std::memcpy(out + (position * layers + layer) * k, in + (r * steps + t) * k,
                  k * sizeof(int32_t));
    }
  }
}

void topk_replay(const Tensor& indices, const Tensor& weights, const Tensor& scores,
                 const Tensor& routes, const TopKOptions& options) {
  const int64_t n = scores.dim(0), experts = scores.dim(1);
  const int k = options.k;
  const float* s = scores.data<float>();
  const int32_t* given = routes.data<int32_t>();
  int32_t* idx = indices.data<int32_t>();
  float* w = weights.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int32_t* g = given + i * k;
    if (g[0] < 0) continue;
    for (int j = 0; j < k; ++j) {
      SY_CHECK(g[j] >= 0 && g[j] < experts) << "topk_replay: row " << i << " replays expert "
                                            << g[j] << ", outside [0, " << experts << ")";
    }
    const float* si = s + i * experts;
    float sum = 0;
    for (int j = 0; j < k; ++j) sum += si[g[j]];
    const float factor = options.normalize ? options.scale / sum : options.scale;
    for (int j = 0; j < k; ++j) {
      idx[i * k + j] = g[j];
      w[i * k + j] = si[g[j]] * factor;
    }
  }
}

void routing_differs(const Tensor& differs, const Tensor& indices, const Tensor& routes) {
  const int64_t n = indices.dim(0), k = indices.dim(1);
  const int32_t *a = indices.data<int32_t>(), *b = routes.data<int32_t>();
  int32_t* d = differs.data<int32_t>();
  // Equal as sets: each side's experts all appear on the other side.
  auto contains = [k](const int32_t* row, int32_t e) {
    return std::find(row, row + k, e) != row + k;
  };
  for (int64_t i = 0; i < n; ++i) {
    const int32_t *ai = a + i * k, *bi = b + i * k;
    if (bi[0] < 0) continue;
    bool same = true;
    for (int64_t j = 0; j < k && same; ++j) same = contains(bi, ai[j]) && contains(ai, bi[j]);
    if (!same) d[i] = 1;
  }
}

}  // namespace sy::cpu
