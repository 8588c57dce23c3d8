#pragma once
// Routing replay (R3): the experts each token of a rollout was routed to, recorded by the
// rollout engine, then handed back to the training forwards of the same sequences so that they
// route every token as the rollout did.
//
// routes_append: the experts of new positions written into their slots of a routes buffer, as
// kv_cache_append stores keys (kernels/kv_cache.h):
//   routes[slot[r], start[r] + t, layer, :] = indices[r * T + t, :]   for t < count[r]
//   routes i32 [S, L, layers, k] (S slots of L positions); indices i32 [R * T, k] (one
//   forward's top-k of MoE layer `layer`, T = indices.dim(0) / R); slot, start, count i32 [R]
//   on the buffer's device; count[r] <= T, start[r] + count[r] <= L, 0 <= layer < layers
//   (checked on the CPU; the CUDA kernel trusts the engine). A row with count 0 writes nothing.
//
// topk_replay: a computed top-k (topk_forward's indices and weights) replaced by given routes:
//   for each row n with routes[n, 0] >= 0:
//     indices[n, j] = routes[n, j]
//     weights[n, j] = scale * s_j (/ S when normalize), s_j = scores[n, routes[n, j]],
//                     S = s_0 + ... + s_{k-1} summed in j order
//   that is topk_forward's weights for these experts (kernels/router.h; the same float
//   operations, so a row replayed with its own top-k keeps its weights bit for bit), and
//   topk_backward is the backward. Rows with routes[n, 0] < 0 keep their computed experts
//   (a token the routes do not cover). The selection's bias and groups play no part: the
//   experts are given. An expert id outside [0, E) in a replayed row is an error on the CPU;
//   the CUDA kernel gives it weight 0 (the dispatch plan then reports the id).
//
// routing_differs: differs[n] = 1 for each row n with routes[n, 0] >= 0 whose experts in
//   indices[n, :] and routes[n, :] differ as sets (order ignored); every other entry is left
//   as it is, so calls for each MoE layer on one `differs` mark the tokens routed differently
//   in at least one layer.
//
// Shapes: indices, routes i32 [N, k]; weights f32 [N, k]; scores f32 [N, E]; differs i32 [N].
// All on one device (CPU or CUDA); nothing waits for the host.
#include "kernels/router.h"
#include "kernels/tensor.h"

namespace sy {

void routes_append(const Tensor& routes, const Tensor& indices, int layer, const Tensor& slot,
                   const Tensor& start, const Tensor& count);
void topk_replay(const Tensor& indices, const Tensor& weights, const Tensor& scores,
                 const Tensor& routes, const TopKOptions& options);
void routing_differs(const Tensor& differs, const Tensor& indices, const Tensor& routes);

namespace cpu {
void routes_append(const Tensor& routes, const Tensor& indices, int layer, const Tensor& slot,
                   const Tensor& start, const Tensor& count);
void topk_replay(const Tensor& indices, const Tensor& weights, const Tensor& scores,
                 const Tensor& routes, const TopKOptions& options);
void routing_differs(const Tensor& differs, const Tensor& indices, const Tensor& routes);
}  // namespace cpu
namespace cuda {
// kernels/cuda/routing_replay.cu; defined in CUDA builds only.
void routes_append(const Tensor& routes, const Tensor& indices, int layer, const Tensor& slot,
                   const Tensor& start, const Tensor& count);
void topk_replay(const Tensor& indices, const Tensor& weights, const Tensor& scores,
                 const Tensor& routes, const TopKOptions& options);
void routing_differs(const Tensor& differs, const Tensor& indices, const Tensor& routes);
}  // namespace cuda
}  // namespace sy
