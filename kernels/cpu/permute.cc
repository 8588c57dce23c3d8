// CPU reference for token permutation by expert, fp32.
// The plan is a counting sort of the N*k slots by expert, stable in slot order, so each
// expert keeps its earliest `capacity` slots. permute gathers token rows into that order;
// unpermute scatters expert outputs back, weighted, summing a token's kept slots. Both are
// linear, so their backwards are the transposed gathers (dx, dy, dweights written).
#include "kernels/permute.h"

#include <algorithm>
#include <cstring>

namespace sy::cpu {

DispatchPlan make_dispatch_plan(const Tensor& indices, int num_experts, int64_t capacity) {
  DispatchPlan plan;
  plan.num_tokens = indices.dim(0);
  plan.top_k = static_cast<int>(indices.dim(1));
  plan.num_experts = num_experts;
  const int64_t slots = indices.numel();
  const int32_t* expert = indices.data<int32_t>();

  // Pass 1: each slot's rank within its expert, or -1 once the expert is full.
  plan.slot_row = Tensor::empty({slots}, DType::kI32);
  int32_t* slot_row = plan.slot_row.data<int32_t>();
  plan.expert_counts.assign(num_experts, 0);
  for (int64_t s = 0; s < slots; ++s) {
    int64_t& count = plan.expert_counts[expert[s]];
    const bool kept = capacity < 0 || count < capacity;
    slot_row[s] = kept ? static_cast<int32_t>(count++) : -1;
  }
  plan.expert_offsets.assign(num_experts + 1, 0);
  for (int e = 0; e < num_experts; ++e) {
    plan.expert_offsets[e + 1] = plan.expert_offsets[e] + plan.expert_counts[e];
  }
  plan.num_rows = plan.expert_offsets[num_experts];

  // Pass 2: rank -> row, and the inverse map.
  plan.row_slot = Tensor::empty({plan.num_rows}, DType::kI32);
  int32_t* row_slot = plan.row_slot.data<int32_t>();
  for (int64_t s = 0; s < slots; ++s) {
    if (slot_row[s] < 0) continue;
    slot_row[s] += static_cast<int32_t>(plan.expert_offsets[expert[s]]);
    row_slot[slot_row[s]] = static_cast<int32_t>(s);
  }
  return plan;
}

void permute_forward(const Tensor& out, const Tensor& x, const DispatchPlan& plan) {
  const int64_t d = x.dim(1);
  const int32_t* row_slot = plan.row_slot.data<int32_t>();
  const float* src = x.data<float>();
  float* dst = out.data<float>();
  for (int64_t r = 0; r < plan.num_rows; ++r) {
    std::memcpy(dst + r * d, src + (row_slot[r] / plan.top_k) * d, d * sizeof(float));
  }
}

void permute_backward(const Tensor& dx, const Tensor& dout, const DispatchPlan& plan) {
  const int64_t d = dx.dim(1);
  const int32_t* slot_row = plan.slot_row.data<int32_t>();
  const float* g = dout.data<float>();
  float* gx = dx.data<float>();
  for (int64_t n = 0; n < plan.num_tokens; ++n) {
    float* row = gx + n * d;
    std::fill_n(row, d, 0.0f);
    for (int j = 0; j < plan.top_k; ++j) {
      const int32_t r = slot_row[n * plan.top_k + j];
      if (r < 0) continue;
      for (int64_t c = 0; c < d; ++c) row[c] += g[r * d + c];
    }
  }
}

void unpermute_forward(const Tensor& out, const Tensor& y, const Tensor& weights,
                       const DispatchPlan& plan) {
  const int64_t d = y.dim(1);
  const int32_t* slot_row = plan.slot_row.data<int32_t>();
  const float *src = y.data<float>(), *w = weights.data<float>();
  float* dst = out.data<float>();
  for (int64_t n = 0; n < plan.num_tokens; ++n) {
    float* row = dst + n * d;
    std::fill_n(row, d, 0.0f);
    for (int j = 0; j < plan.top_k; ++j) {
      const int64_t s = n * plan.top_k + j;
      if (slot_row[s] < 0) continue;
      const float* yr = src + slot_row[s] * d;
      for (int64_t c = 0; c < d; ++c) row[c] += w[s] * yr[c];
    }
  }
}

void unpermute_backward(const Tensor& dy, const Tensor& dweights, const Tensor& dout,
                        const Tensor& y, const Tensor& weights, const DispatchPlan& plan) {
  const int64_t d = y.dim(1);
  const int32_t *slot_row = plan.slot_row.data<int32_t>(),
                *row_slot = plan.row_slot.data<int32_t>();
  const float *g = dout.data<float>(), *yv = y.data<float>(), *w = weights.data<float>();
  float *gy = dy.data<float>(), *gw = dweights.data<float>();
  for (int64_t r = 0; r < plan.num_rows; ++r) {
    const int32_t s = row_slot[r];
    const float* gn = g + (s / plan.top_k) * d;
    for (int64_t c = 0; c < d; ++c) gy[r * d + c] = w[s] * gn[c];
  }
  for (int64_t s = 0; s < plan.num_tokens * plan.top_k; ++s) {
    const int32_t r = slot_row[s];
    const float* gn = g + (s / plan.top_k) * d;
    float dot = 0;
    if (r >= 0) {
      for (int64_t c = 0; c < d; ++c) dot += gn[c] * yv[r * d + c];
    }
    gw[s] = dot;  // a dropped slot did not contribute: zero gradient
  }
}

}  // namespace sy::cpu
