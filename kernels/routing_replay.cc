// Argument checks and device dispatch for routing replay (see routing_replay.h). Shapes and
// dtypes are checked here; index values live on the tensors' device and are checked by the
// CPU ops only.
#include "kernels/routing_replay.h"

#include "kernels/dispatch.h"

namespace sy {
namespace {

void check_routes(const Tensor& t, int64_t rows, int64_t k, const char* what) {
  SY_CHECK(t.defined() && t.ndim() == 2)
      << what << " must be i32 [N, k], got "
      << (t.defined() ? shape_str(t.shape()) : "an undefined tensor");
  check_dtype(t, DType::kI32, what);
  if (rows >= 0) check_shape(t, {rows, k}, what);
}

void check_index(const Tensor& t, int64_t rows, const char* what) {
  SY_CHECK(t.defined()) << what << " is not set (want i32 [" << rows << "], one per row)";
  check_shape(t, {rows}, what);
  check_dtype(t, DType::kI32, what);
}

}  // namespace

void routes_append(const Tensor& routes, const Tensor& indices, int layer, const Tensor& slot,
                   const Tensor& start, const Tensor& count) {
  SY_CHECK(routes.defined() && routes.ndim() == 4)
      << "routes_append: routes must be i32 [S, L, layers, k], got "
      << (routes.defined() ? shape_str(routes.shape()) : "an undefined tensor");
  check_dtype(routes, DType::kI32, "routes_append routes");
  SY_CHECK(layer >= 0 && layer < routes.dim(2))
      << "routes_append: layer " << layer << " outside the buffer's " << routes.dim(2) << " layers";
  check_routes(indices, -1, routes.dim(3), "routes_append indices");
  SY_CHECK(indices.dim(1) == routes.dim(3))
      << "routes_append: indices " << shape_str(indices.shape()) << " hold " << indices.dim(1)
      << " experts per token, the buffer " << routes.dim(3);
  SY_CHECK(slot.defined() && slot.ndim() == 1) << "routes_append: slot must be i32 [R]";
  const int64_t rows = slot.dim(0);
  SY_CHECK(rows > 0 ? indices.dim(0) % rows == 0 : indices.dim(0) == 0)
      << "routes_append: " << indices.dim(0) << " tokens do not split into " << rows << " rows";
  check_index(slot, rows, "routes_append slot");
  check_index(start, rows, "routes_append start");
  check_index(count, rows, "routes_append count");
  check_same_device({&routes, &indices, &slot, &start, &count}, "routes_append");
  if (indices.numel() == 0) return;
  if (routes.device().is_cpu()) {
    return cpu::routes_append(routes, indices, layer, slot, start, count);
  }
#ifdef SWITCHYARD_HAVE_CUDA
  if (routes.device().is_cuda()) {
    return cuda::routes_append(routes, indices, layer, slot, start, count);
  }
#endif
  no_kernel("routes_append", routes.device());
}

void topk_replay(const Tensor& indices, const Tensor& weights, const Tensor& scores,
                 const Tensor& routes, const TopKOptions& options) {
  SY_CHECK(scores.defined() && scores.ndim() == 2)
      << "topk_replay scores must be [N, E], got " << shape_str(scores.shape());
  check_dtype(scores, DType::kF32, "topk_replay scores");
  const int64_t n = scores.dim(0);
  SY_CHECK(options.k >= 1) << "topk_replay: k = " << options.k;
  check_routes(indices, n, options.k, "topk_replay indices");
  check_routes(routes, n, options.k, "topk_replay routes");
  check_shape(weights, {n, options.k}, "topk_replay weights");
  check_dtype(weights, DType::kF32, "topk_replay weights");
  check_same_device({&indices, &weights, &scores, &routes}, "topk_replay");
  if (n == 0) return;
  if (scores.device().is_cpu()) return cpu::topk_replay(indices, weights, scores, routes, options);
#ifdef SWITCHYARD_HAVE_CUDA
  if (scores.device().is_cuda()) {
    return cuda::topk_replay(indices, weights, scores, routes, options);
  }
#endif
  no_kernel("topk_replay", scores.device());
}

void routing_differs(const Tensor& differs, const Tensor& indices, const Tensor& routes) {
  check_routes(indices, -1, 0, "routing_differs indices");
  const int64_t n = indices.dim(0), k = indices.dim(1);
  check_routes(routes, n, k, "routing_differs routes");
  check_index(differs, n, "routing_differs differs");
  check_same_device({&differs, &indices, &routes}, "routing_differs");
  if (n == 0) return;
  if (indices.device().is_cpu()) return cpu::routing_differs(differs, indices, routes);
#ifdef SWITCHYARD_HAVE_CUDA
  if (indices.device().is_cuda()) return cuda::routing_differs(differs, indices, routes);
#endif
  no_kernel("routing_differs", indices.device());
}

}  // namespace sy
