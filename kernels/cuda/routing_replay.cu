// Routing replay on the GPU (kernels/routing_replay.h); the contract is the CPU reference's
// (kernels/cpu/routing_replay.cc).
//   routes_append: one thread per (row, position, choice) of the forward's top-k, a scatter
//     into the routes buffer; rows with count 0 and padding positions cost one index test.
//     Launched inside a decode step: it reads the engine's row tensors on the device only.
//   topk_replay, routing_differs: one thread per token row (k is small). topk_replay sums the
//     chosen scores in order and multiplies by one factor, as topk_forward does
//     (kernels/cuda/router.cu), so a row replayed with its own top-k keeps its weights exactly.
// The kernels trust slot, start and count; a replayed expert id outside [0, E) gets weight 0.
#include "kernels/cuda/common.cuh"
#include "kernels/routing_replay.h"

namespace sy::cuda {
namespace {

__global__ void routes_append_kernel(int32_t* routes, const int32_t* indices, const int32_t* slot,
                                     const int32_t* start, const int32_t* count, int64_t rows,
                                     int64_t steps, int64_t capacity, int64_t layers, int layer,
                                     int64_t k) {
  const int64_t n = rows * steps * k;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = i % k, rt = i / k, t = rt % steps, r = rt / steps;
    if (t >= count[r]) continue;
    const int64_t position = static_cast<int64_t>(slot[r]) * capacity + start[r] + t;
    routes[(position * layers + layer) * k + j] = indices[i];
  }
}

__global__ void topk_replay_kernel(int32_t* indices, float* weights, const float* scores,
                                   const int32_t* routes, int64_t n, int experts, int k,
                                   int normalize, float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t* g = routes + i * k;
    if (g[0] < 0) continue;
    const float* s = scores + i * experts;
    float sum = 0.0f;
    for (int j = 0; j < k; ++j) sum += g[j] >= 0 && g[j] < experts ? s[g[j]] : 0.0f;
    const float factor = normalize ? scale / sum : scale;
    for (int j = 0; j < k; ++j) {
      const int32_t e = g[j];
      indices[i * k + j] = e;
      weights[i * k + j] = e >= 0 && e < experts ? s[e] * factor : 0.0f;
    }
  }
}

__global__ void routing_differs_kernel(int32_t* differs, const int32_t* indices,
                                       const int32_t* routes, int64_t n, int k) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t *a = indices + i * k, *b = routes + i * k;
    if (b[0] < 0) continue;
    bool same = true;
    for (int j = 0; j < k && same; ++j) {
      bool a_in_b = false, b_in_a = false;
      for (int m = 0; m < k; ++m) {
        a_in_b |= a[j] == b[m];
        b_in_a |= b[j] == a[m];
      }
      same = a_in_b && b_in_a;
    }
    if (!same) differs[i] = 1;
  }
}

}  // namespace

void routes_append(const Tensor& routes, const Tensor& indices, int layer, const Tensor& slot,
                   const Tensor& start, const Tensor& count) {
  use_device(routes);
  const int64_t rows = slot.dim(0), k = routes.dim(3), steps = indices.dim(0) / rows;
  routes_append_kernel<<<grid_for(indices.numel()), kThreads, 0, stream()>>>(
      ptr<int32_t>(routes), ptr<int32_t>(indices), ptr<int32_t>(slot), ptr<int32_t>(start),
      ptr<int32_t>(count), rows, steps, routes.dim(1), routes.dim(2), layer, k);
  launch_check("routes_append_kernel");
}

void topk_replay(const Tensor& indices, const Tensor& weights, const Tensor& scores,
                 const Tensor& routes, const TopKOptions& options) {
  use_device(scores);
  const int64_t n = scores.dim(0);
  topk_replay_kernel<<<grid_for(n), kThreads, 0, stream()>>>(
      ptr<int32_t>(indices), ptr<float>(weights), ptr<float>(scores), ptr<int32_t>(routes), n,
      static_cast<int>(scores.dim(1)), options.k, options.normalize ? 1 : 0, options.scale);
  launch_check("topk_replay_kernel");
}

void routing_differs(const Tensor& differs, const Tensor& indices, const Tensor& routes) {
  use_device(indices);
  const int64_t n = indices.dim(0);
  routing_differs_kernel<<<grid_for(n), kThreads, 0, stream()>>>(
      ptr<int32_t>(differs), ptr<int32_t>(indices), ptr<int32_t>(routes), n,
      static_cast<int>(indices.dim(1)));
  launch_check("routing_differs_kernel");
}

}  // namespace sy::cuda
