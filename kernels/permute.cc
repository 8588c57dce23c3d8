// Argument checks and device dispatch for token permutation by expert (see permute.h), and the
// capacity formula.
#include "kernels/permute.h"

#include <algorithm>
#include <cmath>

#include "kernels/dispatch.h"

namespace sy {
namespace {

// The plan's index tensors must describe N*k slots and M rows.
void check_plan(const DispatchPlan& plan, const char* op) {
  SY_CHECK(plan.slot_row.defined() && plan.row_slot.defined())
      << op << ": the dispatch plan is empty; build it with make_dispatch_plan";
  SY_CHECK(plan.num_rows >= 0)
      << op << ": the dispatch plan has a capacity and is not finished; call "
      << "finish_dispatch_plan first (only a dropless plan's rows are known before)";
  check_dtype(plan.slot_row, DType::kI32, "plan slot_row");
  check_dtype(plan.row_slot, DType::kI32, "plan row_slot");
  check_shape(plan.slot_row, {plan.num_tokens * plan.top_k}, "plan slot_row");
  check_shape(plan.row_slot, {plan.num_rows}, "plan row_slot");
}

// A [rows, D] tensor: returns D.
int64_t row_width(const Tensor& t, const char* what) {
  SY_CHECK(t.defined() && t.ndim() == 2)
      << what << " must be [rows, D], got " << shape_str(t.shape());
  return t.dim(1);
}

}  // namespace

int64_t expert_capacity(double capacity_factor, int64_t num_tokens, int top_k, int num_experts) {
  SY_CHECK(num_tokens >= 0 && top_k > 0 && num_experts > 0)
      << "expert_capacity: " << num_tokens << " tokens, top_k " << top_k << ", " << num_experts
      << " experts";
  if (capacity_factor <= 0) return -1;
  const double exact = capacity_factor * static_cast<double>(num_tokens * top_k) / num_experts;
  // A factor such as 1.1 is not exact in binary: 1.1 * 10 is 11.000000000000002, which must
  // stay 11, not round up to 12.
  const double nearest = std::round(exact);
  if (std::fabs(exact - nearest) <= 1e-9 * std::max(1.0, exact)) {
    return static_cast<int64_t>(nearest);
  }
  return static_cast<int64_t>(std::ceil(exact));
}

DispatchPlan start_dispatch_plan(const Tensor& indices, int num_experts, int64_t capacity,
                                 PlanReadback readback) {
  SY_CHECK(indices.defined() && indices.ndim() == 2)
      << "make_dispatch_plan: indices must be [N, k], got " << shape_str(indices.shape());
  check_dtype(indices, DType::kI32, "make_dispatch_plan indices");
  SY_CHECK(num_experts > 0) << "make_dispatch_plan: " << num_experts << " experts";
  SY_CHECK(readback == PlanReadback::kHost || capacity < 0)
      << "make_dispatch_plan: a plan with a capacity needs its counts on the host";
#ifdef SWITCHYARD_HAVE_CUDA
  // Checks the indices on the device; finish_dispatch_plan reports any outside [0, E).
  if (indices.device().is_cuda()) {
    return cuda::start_dispatch_plan(indices, num_experts, capacity, readback);
  }
#endif
  if (!indices.device().is_cpu()) no_kernel("make_dispatch_plan", indices.device());
  const int32_t* idx = indices.data<int32_t>();
  const int64_t k = indices.dim(1);
  for (int64_t s = 0; s < indices.numel(); ++s) {
    SY_CHECK(idx[s] >= 0 && idx[s] < num_experts)
        << "make_dispatch_plan: indices[" << s / k << ", " << s % k << "] = " << idx[s]
        << " is not an expert in [0, " << num_experts << ")";
  }
  DispatchPlan plan = cpu::make_dispatch_plan(indices, num_experts, capacity);
  plan.device_offsets = Tensor::empty({num_experts + 1}, DType::kI64);
  std::copy(plan.expert_offsets.begin(), plan.expert_offsets.end(),
            plan.device_offsets.data<int64_t>());
  if (readback == PlanReadback::kNone) {
    // The same contract as on a GPU, so that CPU tests catch a consumer reading host counts.
    plan.expert_counts.clear();
    plan.expert_offsets.clear();
    plan.device_only = true;
  }
  return plan;
}

void finish_dispatch_plan(DispatchPlan& plan) {
  SY_CHECK(!plan.device_only)
      << "finish_dispatch_plan: the plan was started with PlanReadback::kNone (no host counts)";
  if (plan.ready()) return;
#ifdef SWITCHYARD_HAVE_CUDA
  cuda::finish_dispatch_plan(plan);
#endif
}

DispatchPlan make_dispatch_plan(const Tensor& indices, int num_experts, int64_t capacity) {
  DispatchPlan plan = start_dispatch_plan(indices, num_experts, capacity);
  finish_dispatch_plan(plan);
  return plan;
}

namespace {

// Calls copy(block_rows, compact_rows) for every non-empty group.
template <typename Copy>
void for_each_group_block(const Tensor& padded, const Tensor& compact,
                          const std::vector<int64_t>& offsets, int64_t block, Copy copy) {
  const int64_t groups = static_cast<int64_t>(offsets.size()) - 1;
  SY_CHECK(groups >= 0 && padded.ndim() == 2 && compact.ndim() == 2 &&
           padded.dim(0) == groups * block && padded.dim(1) == compact.dim(1) &&
           compact.dim(0) == offsets.back())
      << "row blocks: " << groups << " groups of " << block << " rows in "
      << shape_str(padded.shape()) << ", compact rows " << shape_str(compact.shape());
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t count = offsets[g + 1] - offsets[g];
    SY_CHECK(0 <= count && count <= block)
        << "group " << g << " has " << count << " rows, more than a block of " << block;
    if (count)
      copy(padded.rows(g * block, g * block + count), compact.rows(offsets[g], offsets[g + 1]));
  }
}

}  // namespace

void rows_to_blocks(const Tensor& padded, const Tensor& compact,
                    const std::vector<int64_t>& offsets, int64_t block) {
  for_each_group_block(padded, compact, offsets, block,
                       [](const Tensor& p, const Tensor& c) { p.copy_from(c); });
}

void rows_from_blocks(const Tensor& compact, const Tensor& padded,
                      const std::vector<int64_t>& offsets, int64_t block) {
  for_each_group_block(padded, compact, offsets, block,
                       [](const Tensor& p, const Tensor& c) { c.copy_from(p); });
}

void permute_forward(const Tensor& out, const Tensor& x, const DispatchPlan& plan) {
  check_plan(plan, "permute_forward");
  const int64_t d = row_width(x, "permute x");
  check_shape(x, {plan.num_tokens, d}, "permute x");
  check_shape(out, {plan.num_rows, d}, "permute out");
  check_dtype(out, x.dtype(), "permute out");
  check_same_device({&out, &x, &plan.slot_row, &plan.row_slot}, "permute_forward");
  if (x.device().is_cpu()) return cpu::permute_forward(out, x, plan);
#ifdef SWITCHYARD_HAVE_CUDA
  if (x.device().is_cuda()) return cuda::permute_forward(out, x, plan);
#endif
  no_kernel("permute_forward", x.device());
}

void permute_backward(const Tensor& dx, const Tensor& dout, const DispatchPlan& plan) {
  check_plan(plan, "permute_backward");
  const int64_t d = row_width(dout, "permute dout");
  check_shape(dout, {plan.num_rows, d}, "permute dout");
  check_shape(dx, {plan.num_tokens, d}, "permute dx");
  check_dtype(dx, dout.dtype(), "permute dx");
  check_same_device({&dx, &dout, &plan.slot_row, &plan.row_slot}, "permute_backward");
  if (dx.device().is_cpu()) return cpu::permute_backward(dx, dout, plan);
#ifdef SWITCHYARD_HAVE_CUDA
  if (dx.device().is_cuda()) return cuda::permute_backward(dx, dout, plan);
#endif
  no_kernel("permute_backward", dx.device());
}

void unpermute_forward(const Tensor& out, const Tensor& y, const Tensor& weights,
                       const DispatchPlan& plan) {
  check_plan(plan, "unpermute_forward");
  const int64_t d = row_width(y, "unpermute y");
  check_shape(y, {plan.num_rows, d}, "unpermute y");
  check_shape(weights, {plan.num_tokens, plan.top_k}, "unpermute weights");
  check_shape(out, {plan.num_tokens, d}, "unpermute out");
  check_dtype(out, y.dtype(), "unpermute out");
  check_same_device({&out, &y, &weights, &plan.slot_row, &plan.row_slot}, "unpermute_forward");
  if (y.device().is_cpu()) return cpu::unpermute_forward(out, y, weights, plan);
#ifdef SWITCHYARD_HAVE_CUDA
  if (y.device().is_cuda()) return cuda::unpermute_forward(out, y, weights, plan);
#endif
  no_kernel("unpermute_forward", y.device());
}

void unpermute_backward(const Tensor& dy, const Tensor& dweights, const Tensor& dout,
                        const Tensor& y, const Tensor& weights, const DispatchPlan& plan) {
  check_plan(plan, "unpermute_backward");
  const int64_t d = row_width(y, "unpermute y");
  check_shape(y, {plan.num_rows, d}, "unpermute y");
  check_shape(dy, {plan.num_rows, d}, "unpermute dy");
  check_shape(weights, {plan.num_tokens, plan.top_k}, "unpermute weights");
  check_shape(dweights, {plan.num_tokens, plan.top_k}, "unpermute dweights");
  check_shape(dout, {plan.num_tokens, d}, "unpermute dout");
  check_dtype(dy, y.dtype(), "unpermute dy");
  check_dtype(dout, y.dtype(), "unpermute dout");
  check_same_device({&dy, &dweights, &dout, &y, &weights, &plan.slot_row, &plan.row_slot},
                    "unpermute_backward");
  if (y.device().is_cpu()) return cpu::unpermute_backward(dy, dweights, dout, y, weights, plan);
#ifdef SWITCHYARD_HAVE_CUDA
  if (y.device().is_cuda()) {
    return cuda::unpermute_backward(dy, dweights, dout, y, weights, plan);
  }
#endif
  no_kernel("unpermute_backward", y.device());
}

}  // namespace sy
