// Rollout row bookkeeping: argument checks and device dispatch.
#include "kernels/rollout_rows.h"

#include "kernels/dispatch.h"

namespace sy {

void advance_rollout_rows(const RolloutRows& rows, const Tensor& token, const Tensor& logprob,
                          const Tensor& stop_tokens) {
  SY_CHECK(token.ndim() == 1) << "advance_rollout_rows token has shape " << shape_str(token.shape())
                              << ", expected [R]";
  const int64_t r = token.dim(0);
  check_dtype(token, DType::kI32, "advance_rollout_rows token");
  check_shape(logprob, {r}, "advance_rollout_rows logprob");
  check_dtype(logprob, DType::kF32, "advance_rollout_rows logprob");
  for (const Tensor* t :
       {&rows.generated, &rows.base, &rows.length, &rows.limit, &rows.active, &rows.attend}) {
    check_shape(*t, {r}, "advance_rollout_rows row state");
    check_dtype(*t, DType::kI32, "advance_rollout_rows row state");
  }
  SY_CHECK(rows.out_token.ndim() == 2 && rows.out_token.dim(0) == r)
      << "advance_rollout_rows out_token has shape " << shape_str(rows.out_token.shape())
      << ", expected [" << r << ", W]";
  check_dtype(rows.out_token, DType::kI32, "advance_rollout_rows out_token");
  check_shape(rows.out_logprob, rows.out_token.shape(), "advance_rollout_rows out_logprob");
  check_dtype(rows.out_logprob, DType::kF32, "advance_rollout_rows out_logprob");
  SY_CHECK(stop_tokens.ndim() == 1) << "advance_rollout_rows stop_tokens must be [S]";
  check_dtype(stop_tokens, DType::kI32, "advance_rollout_rows stop_tokens");
  check_same_device({&token, &logprob, &rows.generated, &rows.base, &rows.length, &rows.limit,
                     &rows.active, &rows.attend, &rows.out_token, &rows.out_logprob, &stop_tokens},
                    "advance_rollout_rows");
  if (token.device().is_cpu()) return cpu::advance_rollout_rows(rows, token, logprob, stop_tokens);
#ifdef SWITCHYARD_HAVE_CUDA
  if (token.device().is_cuda())
    return cuda::advance_rollout_rows(rows, token, logprob, stop_tokens);
#endif
  no_kernel("advance_rollout_rows", token.device());
}

}  // namespace sy
