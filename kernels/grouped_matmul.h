#pragma once
// Grouped linear layers with the group sizes on the device: for every group e,
//   y[offsets[e] : offsets[e + 1]] = x[offsets[e] : offsets[e + 1]] @ w[e]^T,
// x [M, K], w [E, N, K] (one [N, K] weight per group, as the experts' stacked w13 / w2),
// y [M, N], offsets i64 [E + 1] non-decreasing from 0 to at most M (a DispatchPlan's
// device_offsets). Rows of y past offsets[E] are left as they are.
//
// Why: a MoE layer's experts take rows in counts only the device knows. Every other expert
// GEMM path (one GEMM per expert, or one batched GEMM over blocks padded to the largest
// count) must first copy those counts to the host and wait, which stalls each MoE layer of
// a decode step and rules out capturing the step as a CUDA graph. This op reads the
// offsets on the device: nothing waits, and a group with no rows reads none of its weight.
//
// Dtypes: f32 and bf16 (one type for x, w, y; fp32 accumulation). On CUDA, bf16 with N and K
// multiples of 16 runs the device-offset kernel (tensor cores); anything else there copies
// the offsets to the host (a wait) and runs one cuBLAS GEMM per group.
#include "kernels/tensor.h"

namespace sy {
void grouped_matmul(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& offsets);
// Whether grouped_matmul runs on `device` in `dtype` for these sizes with no host wait.
bool grouped_matmul_waits_for_nothing(Device device, DType dtype, int64_t n, int64_t k);

// How the CUDA kernel tiles the work: kWide (chunks of 64 rows, K whole: measured on an H100,
// 1.31 ms of a 2.5 ms bench-model decode step) or kAdaptive (chunks of 32 rows when groups
// hold 16 rows or fewer on average, and K split into slices summed in order where the grid
// has too few blocks, as w2's N of 1024 gives; its parity test and timing have not yet run on
// a GPU, so it is not the default). The process starts with SWITCHYARD_GROUPED_MATMUL=
// wide|auto (default wide).
enum class GroupedTiling { kWide, kAdaptive };
void set_grouped_matmul_tiling(GroupedTiling tiling);
GroupedTiling grouped_matmul_tiling();
namespace cpu {
void grouped_matmul(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& offsets);
}  // namespace cpu
namespace cuda {
// kernels/cuda/grouped_matmul.cu; defined in CUDA builds only.
void grouped_matmul(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& offsets);
bool grouped_matmul_on_device(DType dtype, int64_t n, int64_t k);
}  // namespace cuda
}  // namespace sy
