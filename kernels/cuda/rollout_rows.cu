// Rollout row bookkeeping on the GPU: one thread per row (kernels/rollout_rows.h). A decode
// batch has at most a few hundred rows, so this is one small launch per step.
#include "kernels/cuda/common.cuh"
#include "kernels/rollout_rows.h"

namespace sy::cuda {
namespace {

__global__ void advance_rollout_rows_kernel(int32_t* generated, const int32_t* base,
                                            int32_t* length, const int32_t* limit, int32_t* active,
                                            int32_t* attend, int32_t* out_token, float* out_logprob,
                                            const int32_t* token, const float* logprob,
                                            const int32_t* stops, int64_t s_count, int64_t r_count,
                                            int64_t width) {
  const int64_t r = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (r >= r_count || active[r] == 0) return;
  const int32_t t = token[r];
  const int64_t w = generated[r] - base[r];
  out_token[r * width + w] = t;
  out_logprob[r * width + w] = logprob[r];
  const int32_t g = generated[r] + 1;
  const int32_t len = length[r] + 1;
  generated[r] = g;
  length[r] = len;
  bool stop = g >= limit[r];
  for (int64_t s = 0; s < s_count && !stop; ++s) stop = t == stops[s];
  active[r] = stop ? 0 : 1;
  attend[r] = stop ? 0 : len + 1;
}

}  // namespace

void advance_rollout_rows(const RolloutRows& rows, const Tensor& token, const Tensor& logprob,
                          const Tensor& stop_tokens) {
  const int64_t r_count = token.dim(0);
  if (r_count == 0) return;
  use_device(token);
  const int64_t s_count = stop_tokens.dim(0);
  advance_rollout_rows_kernel<<<grid_for(r_count), kThreads, 0, stream()>>>(
      ptr<int32_t>(rows.generated), ptr<int32_t>(rows.base), ptr<int32_t>(rows.length),
      ptr<int32_t>(rows.limit), ptr<int32_t>(rows.active), ptr<int32_t>(rows.attend),
      ptr<int32_t>(rows.out_token), ptr<float>(rows.out_logprob), ptr<int32_t>(token),
      ptr<float>(logprob), s_count ? ptr<int32_t>(stop_tokens) : nullptr, s_count, r_count,
      rows.out_token.dim(1));
  launch_check("advance_rollout_rows_kernel");
}

}  // namespace sy::cuda
