// CPU reference for the MoE router, fp32, one token (row) at a time.
// Scores: softmax over experts (max-subtracted) or an elementwise sigmoid; the backward uses
// the saved scores: softmax dl_i = s_i (ds_i - sum_j ds_j s_j), sigmoid dl_i = ds_i s_i (1 - s_i).
// Top-k: experts are ranked by key = score + bias with ties to the lower index; with groups,
// groups are ranked the same way by the sum of their best min(2, group size) keys and only the
// best topk_groups compete. Weights use the unbiased scores: w_j = scale * s_j (/ S, S = sum of
// the chosen scores, when normalizing), so dL/ds_j = scale * (dw_j - sum_i dw_i s_i / S) / S.
#include "kernels/router.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace sy::cpu {
namespace {

// A strict ranking by descending key, equal keys ordered by ascending index.
struct Ranking {
  const float* key;
  bool operator()(int a, int b) const { return key[a] > key[b] || (key[a] == key[b] && a < b); }
};

}  // namespace

void router_scores_forward(const Tensor& scores, const Tensor& logits, ScoreFunction fn) {
  const int64_t n = logits.dim(0), experts = logits.dim(1);
  const float* x = logits.data<float>();
  float* s = scores.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * experts;
    float* si = s + i * experts;
    if (fn == ScoreFunction::kSigmoid) {
      for (int64_t e = 0; e < experts; ++e) si[e] = 1.0f / (1.0f + std::exp(-xi[e]));
      continue;
    }
    const float m = *std::max_element(xi, xi + experts);
    float sum = 0;
    for (int64_t e = 0; e < experts; ++e) sum += si[e] = std::exp(xi[e] - m);
    for (int64_t e = 0; e < experts; ++e) si[e] /= sum;
  }
}

void router_scores_backward(const Tensor& dlogits, const Tensor& dscores, const Tensor& scores,
                            ScoreFunction fn) {
  const int64_t n = scores.dim(0), experts = scores.dim(1);
  const float *s = scores.data<float>(), *ds = dscores.data<float>();
  float* dx = dlogits.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const float* si = s + i * experts;
    const float* dsi = ds + i * experts;
    float* dxi = dx + i * experts;
    if (fn == ScoreFunction::kSigmoid) {
      for (int64_t e = 0; e < experts; ++e) dxi[e] = dsi[e] * si[e] * (1.0f - si[e]);
      continue;
    }
    float dot = 0;
    for (int64_t e = 0; e < experts; ++e) dot += dsi[e] * si[e];
    for (int64_t e = 0; e < experts; ++e) dxi[e] = si[e] * (dsi[e] - dot);
  }
}

void topk_forward(const Tensor& indices, const Tensor& weights, const Tensor& scores,
                  const Tensor& bias, const TopKOptions& options) {
  const int64_t n = scores.dim(0);
  const int experts = static_cast<int>(scores.dim(1));
  const int k = options.k, n_groups = options.n_groups, group_size = experts / n_groups;
  const float* s = scores.data<float>();
  const float* b = bias.defined() ? bias.data<float>() : nullptr;
  int32_t* idx = indices.data<int32_t>();
  float* w = weights.data<float>();
  std::vector<float> key(experts), group_key(n_groups);
  std::vector<int> groups(n_groups), candidates;
  for (int64_t i = 0; i < n; ++i) {
    const float* si = s + i * experts;
    for (int e = 0; e < experts; ++e) key[e] = si[e] + (b ? b[e] : 0.0f);

    candidates.clear();
    if (n_groups == 1) {
      for (int e = 0; e < experts; ++e) candidates.push_back(e);
    } else {
      for (int g = 0; g < n_groups; ++g) {
        float first = -std::numeric_limits<float>::infinity(), second = first;
        for (int e = g * group_size; e < (g + 1) * group_size; ++e) {
          if (key[e] > first) {
            second = first;
            first = key[e];
          } else if (key[e] > second) {
            second = key[e];
          }
        }
        group_key[g] = group_size == 1 ? first : first + second;
      }
      std::iota(groups.begin(), groups.end(), 0);
      std::partial_sort(groups.begin(), groups.begin() + options.topk_groups, groups.end(),
                        Ranking{group_key.data()});
      for (int r = 0; r < options.topk_groups; ++r) {
        for (int e = groups[r] * group_size; e < (groups[r] + 1) * group_size; ++e) {
          candidates.push_back(e);
        }
      }
    }
    std::partial_sort(candidates.begin(), candidates.begin() + k, candidates.end(),
                      Ranking{key.data()});

    float sum = 0;
    for (int j = 0; j < k; ++j) sum += si[candidates[j]];
    const float factor = options.normalize ? options.scale / sum : options.scale;
    for (int j = 0; j < k; ++j) {
      idx[i * k + j] = candidates[j];
      w[i * k + j] = si[candidates[j]] * factor;
    }
  }
}

void topk_backward(const Tensor& dscores, const Tensor& dweights, const Tensor& indices,
                   const Tensor& scores, const TopKOptions& options) {
  const int64_t n = scores.dim(0), experts = scores.dim(1);
  const int k = options.k;
  const float *s = scores.data<float>(), *dw = dweights.data<float>();
  const int32_t* idx = indices.data<int32_t>();
  float* ds = dscores.data<float>();
  std::fill_n(ds, n * experts, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    const float* si = s + i * experts;
    const float* dwi = dw + i * k;
    const int32_t* c = idx + i * k;
    float* dsi = ds + i * experts;
    for (int j = 0; j < k; ++j) {
      SY_CHECK(c[j] >= 0 && c[j] < experts)
          << "topk_backward: expert index " << c[j] << " outside [0, " << experts << ")";
    }
    if (!options.normalize) {
      for (int j = 0; j < k; ++j) dsi[c[j]] += options.scale * dwi[j];
      continue;
    }
    float sum = 0, dot = 0;
    for (int j = 0; j < k; ++j) sum += si[c[j]];
    for (int j = 0; j < k; ++j) dot += dwi[j] * si[c[j]];
    for (int j = 0; j < k; ++j) dsi[c[j]] += options.scale * (dwi[j] - dot / sum) / sum;
  }
}

}  // namespace sy::cpu
