#pragma once
// Token permutation by expert and its inverse.
//
// N tokens each routed to k experts give N*k slots; slot s = n*k + j is token n's j-th choice
// (indices [N, k] from topk). The plan orders slots into rows grouped by expert (expert 0's
// rows first), each group in slot order. With capacity >= 0 an expert keeps at most
// `capacity` slots, the earliest in slot order; the overflow is dropped (slot_row = -1) and
// contributes nothing. capacity < 0 is dropless.
//
// permute:   out[r, :] = x[row_slot[r] / k, :]                      x [N, D] -> out [M, D]
//   backward: dx[n, :] = sum of dout over the kept rows of token n  (written)
// unpermute: out[n, :] = sum_j weights[n, j] * y[slot_row[n*k + j], :] over kept slots
//   backward: dy[r, :] = weights[slot] * dout[token, :]              (written)
//             dweights[n, j] = <dout[n, :], y[row, :]>, 0 if dropped  (written)
// Dtypes: indices, slot_row, row_slot i32; weights, dweights f32; activations (x, out, y,
// dout, dx, dy) f32, or on CUDA all bf16 (sums in fp32). The plan lives on the indices'
// device; on CUDA its host vectors cost one small device-to-host copy.
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/tensor.h"

namespace sy {

// capacity for a capacity factor: ceil(factor * N * k / E); factor <= 0 means dropless (-1).
int64_t expert_capacity(double capacity_factor, int64_t num_tokens, int top_k, int num_experts);

struct DispatchPlan {
  int64_t num_tokens = 0;
  int top_k = 0;
  int num_experts = 0;
  int64_t num_rows = 0;                 // M: kept slots
  std::vector<int64_t> expert_counts;   // [E] rows per expert (after dropping), on the host
  std::vector<int64_t> expert_offsets;  // [E + 1] exclusive prefix sum of expert_counts
  Tensor slot_row;                      // i32 [N*k], -1 for a dropped slot
  Tensor row_slot;                      // i32 [M]
  // Between start_dispatch_plan and finish_dispatch_plan on a GPU: the offsets' copy to the
  // host, on its way. Until then the host vectors are empty, and num_rows is N*k for a
  // dropless plan (capacity < 0) and -1 for one with a capacity.
  std::shared_ptr<HostReadback> pending;
  // i64 [E + 1] on the indices' device: expert_offsets as the device knows them, complete
  // once start_dispatch_plan returns (what a consumer that must not wait reads instead).
  Tensor device_offsets;
  // A plan started with PlanReadback::kNone: nothing was queued for the host, the host vectors
  // stay empty for good, and its consumers read device_offsets (the decode path, which must
  // queue no copy to the host so that a step can be captured as a CUDA graph).
  bool device_only = false;
  bool ready() const { return pending == nullptr; }
  int64_t num_dropped() const { return num_tokens * top_k - num_rows; }
};

// indices i32 [N, k] with values in [0, num_experts).
DispatchPlan make_dispatch_plan(const Tensor& indices, int num_experts, int64_t capacity);

// make_dispatch_plan in two halves, so the GPU has work while the host waits for the expert
// counts: start_dispatch_plan queues the plan's device part and the copy of its offsets;
// finish_dispatch_plan waits for that copy only, fills the host vectors (and num_rows) and
// reports indices outside [0, E). A dropless plan's slot_row and row_slot are complete once
// queued, so the permutes may be queued in between; with a capacity they refuse an unfinished
// plan. Indices outside [0, E) are dropped on the device and reported by finish_dispatch_plan,
// before which rows that used them hold slot 0. On the CPU start does all the work.
//
// With PlanReadback::kNone (dropless plans only) start queues no copy to the host: the plan is
// device_only, finish_dispatch_plan refuses it, and indices outside [0, E) go unreported (they
// are dropped as always; a top-k over the router's scores never makes one).
enum class PlanReadback { kHost, kNone };
DispatchPlan start_dispatch_plan(const Tensor& indices, int num_experts, int64_t capacity,
                                 PlanReadback readback = PlanReadback::kHost);
void finish_dispatch_plan(DispatchPlan& plan);

// Row groups between the compact layout (group g at rows [offsets[g], offsets[g + 1])) and a
// padded one of G blocks of `block` rows (group g at rows [g * block, g * block + count)),
// both [rows, D] tensors: copies the groups' rows only; the rest of each block is untouched.
// On a GPU the copies are stream-ordered (no wait).
void rows_to_blocks(const Tensor& padded, const Tensor& compact,
                    const std::vector<int64_t>& offsets, int64_t block);
void rows_from_blocks(const Tensor& compact, const Tensor& padded,
                      const std::vector<int64_t>& offsets, int64_t block);

void permute_forward(const Tensor& out, const Tensor& x, const DispatchPlan& plan);
void permute_backward(const Tensor& dx, const Tensor& dout, const DispatchPlan& plan);
void unpermute_forward(const Tensor& out, const Tensor& y, const Tensor& weights,
                       const DispatchPlan& plan);
void unpermute_backward(const Tensor& dy, const Tensor& dweights, const Tensor& dout,
                        const Tensor& y, const Tensor& weights, const DispatchPlan& plan);
namespace cpu {
DispatchPlan make_dispatch_plan(const Tensor& indices, int num_experts, int64_t capacity);
void permute_forward(const Tensor& out, const Tensor& x, const DispatchPlan& plan);
void permute_backward(const Tensor& dx, const Tensor& dout, const DispatchPlan& plan);
void unpermute_forward(const Tensor& out, const Tensor& y, const Tensor& weights,
                       const DispatchPlan& plan);
void unpermute_backward(const Tensor& dy, const Tensor& dweights, const Tensor& dout,
                        const Tensor& y, const Tensor& weights, const DispatchPlan& plan);
}  // namespace cpu
namespace cuda {
// kernels/cuda/permute.cu; defined in CUDA builds only.
DispatchPlan start_dispatch_plan(const Tensor& indices, int num_experts, int64_t capacity,
                                 PlanReadback readback);
void finish_dispatch_plan(DispatchPlan& plan);
void permute_forward(const Tensor& out, const Tensor& x, const DispatchPlan& plan);
void permute_backward(const Tensor& dx, const Tensor& dout, const DispatchPlan& plan);
void unpermute_forward(const Tensor& out, const Tensor& y, const Tensor& weights,
                       const DispatchPlan& plan);
void unpermute_backward(const Tensor& dy, const Tensor& dweights, const Tensor& dout,
                        const Tensor& y, const Tensor& weights, const DispatchPlan& plan);
}  // namespace cuda
}  // namespace sy
