// MoE router on the GPU, fp32, one warp per token row; the contract is the CPU reference's
// (kernels/cpu/router.cc), with up to kMaxExperts experts.
// Scores: softmax over a row (warp max, warp sum) or an elementwise sigmoid; backward from the
// saved scores.
// Top-k: the warp keeps the row's keys (score + bias) in shared memory and picks the k best
// one at a time: each lane proposes its best eligible expert, a butterfly reduction keeps the
// larger key, equal keys going to the lower index (the CPU's ranking, so the selection is the
// CPU's exactly: keys and group keys are the same single float additions). With groups,
// each lane first sums the top two keys of its groups and the warp picks the best
// topk_groups groups the same way. The weights' sum runs over the chosen experts in
// selection order, as on the CPU. NaN keys rank last.
// Top-k backward: each lane gathers, for its experts, the contributions of the slots that
// chose them (no scatter, so repeated indices are summed deterministically); indices outside
// [0, E) contribute nothing.
#include <climits>

#include "kernels/cuda/common.cuh"
#include "kernels/router.h"

namespace sy::cuda {
namespace {

constexpr int kMaxExperts = 2048;  // keeps one warp's top-k state under 48 KB of shared memory
constexpr int kRowWarps = 8;       // rows (warps) per block for the score kernels
constexpr unsigned kFullMask = 0xffffffffu;

int64_t row_blocks(int64_t rows, int warps) { return (rows + warps - 1) / warps; }

__global__ void softmax_scores_kernel(float* scores, const float* logits, int64_t n, int experts) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;  // the whole warp leaves together
  const float* x = logits + row * experts;
  float* s = scores + row * experts;
  float m = -INFINITY;
  for (int e = lane; e < experts; e += 32) m = fmaxf(m, x[e]);
  m = warp_max(m);
  float sum = 0.0f;
  for (int e = lane; e < experts; e += 32) sum += s[e] = expf(x[e] - m);
  sum = warp_sum(sum);
  for (int e = lane; e < experts; e += 32) s[e] /= sum;
}

__global__ void sigmoid_scores_kernel(float* scores, const float* logits, int64_t count) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    scores[i] = 1.0f / (1.0f + expf(-logits[i]));
  }
}

__global__ void softmax_scores_backward_kernel(float* dlogits, const float* dscores,
                                               const float* scores, int64_t n, int experts) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;
  const float* s = scores + row * experts;
  const float* ds = dscores + row * experts;
  float dot = 0.0f;
  for (int e = lane; e < experts; e += 32) dot += ds[e] * s[e];
  dot = warp_sum(dot);
  float* dx = dlogits + row * experts;
  for (int e = lane; e < experts; e += 32) dx[e] = s[e] * (ds[e] - dot);
}

__global__ void sigmoid_scores_backward_kernel(float* dlogits, const float* dscores,
                                               const float* scores, int64_t count) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dlogits[i] = dscores[i] * scores[i] * (1.0f - scores[i]);
  }
}

struct TopKArgs {
  int k, n_groups, topk_groups, normalize;
  float scale;
};

// The CPU's ranking: larger key first, equal keys by lower index.
__device__ __forceinline__ bool ranks_before(float ka, int a, float kb, int b) {
  return ka > kb || (ka == kb && a < b);
}

// Every lane ends with the best (key, index) proposed by any lane.
__device__ __forceinline__ void warp_best(float& key, int& index) {
  for (int o = 16; o > 0; o >>= 1) {
    const float other_key = __shfl_xor_sync(kFullMask, key, o);
    const int other_index = __shfl_xor_sync(kFullMask, index, o);
    if (ranks_before(other_key, other_index, key, index)) {
      key = other_key;
      index = other_index;
    }
  }
}

// The best of `count` candidates with keys key[] whose flag is set; clears the winner's flag.
// At least one flag must be set (every lane gets the same answer).
__device__ __forceinline__ int take_best(const float* key, unsigned char* flag, int count,
                                         int lane) {
  float best_key = -INFINITY;
  int best = INT_MAX;
  for (int e = lane; e < count; e += 32) {
    if (flag[e] && ranks_before(key[e], e, best_key, best)) {
      best_key = key[e];
      best = e;
    }
  }
  warp_best(best_key, best);
  __syncwarp();  // every lane has read the flags
  if (lane == 0) flag[best] = 0;
  __syncwarp();
  return best;
}

// Bytes of shared memory one warp needs for E experts and G groups: keys [E], chosen [E],
// group keys [G], then flags for experts [E] and groups [G].
size_t topk_warp_bytes(int experts, int groups) {
  const size_t bytes = (2 * sizeof(float) + 1) * experts + (sizeof(float) + 1) * groups;
  return (bytes + 15) / 16 * 16;
}

__global__ void topk_forward_kernel(int32_t* indices, float* weights, const float* scores,
                                    const float* bias, int64_t n, int experts, TopKArgs a,
                                    int warps, size_t warp_bytes) {
  extern __shared__ unsigned char topk_smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * warps + warp;
  if (row >= n) return;  // the whole warp leaves together
  unsigned char* base = topk_smem + warp * warp_bytes;
  float* key = reinterpret_cast<float*>(base);
  int* chosen = reinterpret_cast<int*>(key + experts);
  float* group_key = reinterpret_cast<float*>(chosen + experts);
  unsigned char* eligible = reinterpret_cast<unsigned char*>(group_key + a.n_groups);
  unsigned char* group_open = eligible + experts;
  const float* s = scores + row * experts;
  for (int e = lane; e < experts; e += 32) {
    const float x = s[e] + (bias ? bias[e] : 0.0f);
    key[e] = isnan(x) ? -INFINITY : x;
    eligible[e] = 1;
  }
  __syncwarp();
  if (a.n_groups > 1) {
    const int group_size = experts / a.n_groups;
    for (int g = lane; g < a.n_groups; g += 32) {
      float first = -INFINITY, second = -INFINITY;
      for (int e = g * group_size; e < (g + 1) * group_size; ++e) {
        if (key[e] > first) {
          second = first;
          first = key[e];
        } else if (key[e] > second) {
          second = key[e];
        }
      }
      const float gk = group_size == 1 ? first : first + second;
      group_key[g] = isnan(gk) ? -INFINITY : gk;
      group_open[g] = 1;
    }
    __syncwarp();
    // Chosen groups end with group_open 0; flip that into eligibility.
    for (int r = 0; r < a.topk_groups; ++r) take_best(group_key, group_open, a.n_groups, lane);
    for (int e = lane; e < experts; e += 32) eligible[e] = !group_open[e / group_size];
    __syncwarp();
  }
  float sum = 0.0f;
  for (int j = 0; j < a.k; ++j) {
    const int e = take_best(key, eligible, experts, lane);
    if (lane == 0) chosen[j] = e;
    sum += s[e];
  }
  __syncwarp();
  const float factor = a.normalize ? a.scale / sum : a.scale;
  for (int j = lane; j < a.k; j += 32) {
    indices[row * a.k + j] = chosen[j];
    weights[row * a.k + j] = s[chosen[j]] * factor;
  }
}

__global__ void topk_backward_kernel(float* dscores, const float* dweights, const int32_t* indices,
                                     const float* scores, int64_t n, int experts, TopKArgs a) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;
  const float* s = scores + row * experts;
  const float* dw = dweights + row * a.k;
  const int32_t* c = indices + row * a.k;
  // The sums every lane needs, in the CPU's order (k is small).
  float sum = 0.0f, dot = 0.0f;
  if (a.normalize) {
    for (int j = 0; j < a.k; ++j) {
      if (c[j] < 0 || c[j] >= experts) continue;
      sum += s[c[j]];
    }
    for (int j = 0; j < a.k; ++j) {
      if (c[j] < 0 || c[j] >= experts) continue;
      dot += dw[j] * s[c[j]];
    }
  }
  float* ds = dscores + row * experts;
  for (int e = lane; e < experts; e += 32) {
    float g = 0.0f;
    for (int j = 0; j < a.k; ++j) {
      if (c[j] != e) continue;
      g += a.normalize ? a.scale * (dw[j] - dot / sum) / sum : a.scale * dw[j];
    }
    ds[e] = g;
  }
}

TopKArgs topk_args(const TopKOptions& o) {
  return {o.k, o.n_groups, o.topk_groups, o.normalize ? 1 : 0, o.scale};
}

void check_router_tensor(const Tensor& t, const char* what) {
  check_dtype(t, DType::kF32, what);
  SY_CHECK(t.dim(1) <= kMaxExperts)
      << what << ": " << t.dim(1) << " experts; the CUDA router takes at most " << kMaxExperts;
}

}  // namespace

void router_scores_forward(const Tensor& scores, const Tensor& logits, ScoreFunction fn) {
  check_router_tensor(logits, "router logits");
  check_dtype(scores, DType::kF32, "router scores");
  const int64_t n = logits.dim(0), experts = logits.dim(1);
  if (logits.numel() == 0) return;
  use_device(logits);
  if (fn == ScoreFunction::kSigmoid) {
    sigmoid_scores_kernel<<<grid_for(logits.numel()), kThreads, 0, stream()>>>(
        ptr<float>(scores), ptr<float>(logits), logits.numel());
    launch_check("sigmoid_scores_kernel");
    return;
  }
  softmax_scores_kernel<<<static_cast<unsigned>(row_blocks(n, kRowWarps)), 32 * kRowWarps, 0,
                          stream()>>>(ptr<float>(scores), ptr<float>(logits), n,
                                      static_cast<int>(experts));
  launch_check("softmax_scores_kernel");
}

void router_scores_backward(const Tensor& dlogits, const Tensor& dscores, const Tensor& scores,
                            ScoreFunction fn) {
  check_router_tensor(scores, "router scores");
  check_dtype(dscores, DType::kF32, "router dscores");
  check_dtype(dlogits, DType::kF32, "router dlogits");
  const int64_t n = scores.dim(0), experts = scores.dim(1);
  if (scores.numel() == 0) return;
  use_device(scores);
  if (fn == ScoreFunction::kSigmoid) {
    sigmoid_scores_backward_kernel<<<grid_for(scores.numel()), kThreads, 0, stream()>>>(
        ptr<float>(dlogits), ptr<float>(dscores), ptr<float>(scores), scores.numel());
    launch_check("sigmoid_scores_backward_kernel");
    return;
  }
  softmax_scores_backward_kernel<<<static_cast<unsigned>(row_blocks(n, kRowWarps)), 32 * kRowWarps,
                                   0, stream()>>>(ptr<float>(dlogits), ptr<float>(dscores),
                                                  ptr<float>(scores), n, static_cast<int>(experts));
  launch_check("softmax_scores_backward_kernel");
}

void topk_forward(const Tensor& indices, const Tensor& weights, const Tensor& scores,
                  const Tensor& bias, const TopKOptions& options) {
  check_router_tensor(scores, "topk scores");
  check_dtype(weights, DType::kF32, "topk weights");
  if (bias.defined()) check_dtype(bias, DType::kF32, "topk bias");
  const int64_t n = scores.dim(0);
  const int experts = static_cast<int>(scores.dim(1));
  if (n == 0) return;
  use_device(scores);
  const size_t warp_bytes = topk_warp_bytes(experts, options.n_groups);
  constexpr size_t kSharedBudget = 48 * 1024;  // no opt-in needed below this
  const int warps = static_cast<int>(std::clamp<size_t>(kSharedBudget / warp_bytes, 1, 8));
  topk_forward_kernel<<<static_cast<unsigned>(row_blocks(n, warps)), 32 * warps, warps * warp_bytes,
                        stream()>>>(ptr<int32_t>(indices), ptr<float>(weights), ptr<float>(scores),
                                    bias.defined() ? ptr<float>(bias) : nullptr, n, experts,
                                    topk_args(options), warps, warp_bytes);
  launch_check("topk_forward_kernel");
}

void topk_backward(const Tensor& dscores, const Tensor& dweights, const Tensor& indices,
                   const Tensor& scores, const TopKOptions& options) {
  check_router_tensor(scores, "topk scores");
  check_dtype(dweights, DType::kF32, "topk dweights");
  check_dtype(dscores, DType::kF32, "topk dscores");
  const int64_t n = scores.dim(0);
  if (n == 0) return;
  use_device(scores);
  topk_backward_kernel<<<static_cast<unsigned>(row_blocks(n, kRowWarps)), 32 * kRowWarps, 0,
                         stream()>>>(ptr<float>(dscores), ptr<float>(dweights),
                                     ptr<int32_t>(indices), ptr<float>(scores), n,
                                     static_cast<int>(scores.dim(1)), topk_args(options));
  launch_check("topk_backward_kernel");
}

}  // namespace sy::cuda
