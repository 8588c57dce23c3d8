// Argument checks and device dispatch for token sampling (see sampling.h).
#include "kernels/sampling.h"

#include <cstdint>

#include "kernels/dispatch.h"
#include "kernels/hash.h"

namespace sy {
namespace {

void check_param(const Tensor& t, DType dtype, int64_t rows, const char* what) {
  SY_CHECK(t.defined()) << "sample_tokens: " << what << " is not set (want " << dtype_name(dtype)
                        << " [" << rows << "], one value per row)";
  check_shape(t, {rows}, what);
  check_dtype(t, dtype, what);
}

}  // namespace

double sampling_uniform(uint64_t seed, uint64_t row_id, uint64_t position) {
  return sampling_uniform_bits(seed, row_id, position);
}

void sample_tokens(const Tensor& token, const Tensor& logprob, const Tensor& logits,
                   const SamplingParams& params) {
  SY_CHECK(logits.defined() && logits.ndim() == 2)
      << "sample_tokens: logits must be [R, V], got "
      << (logits.defined() ? shape_str(logits.shape()) : "an undefined tensor");
  const int64_t rows = logits.dim(0);
  SY_CHECK(logits.dim(1) > 0) << "sample_tokens: logits have an empty vocabulary, shape "
                              << shape_str(logits.shape());
  SY_CHECK(logits.dim(1) <= INT32_MAX)
      << "sample_tokens: vocabulary of " << logits.dim(1) << " does not fit i32 token ids";
  check_dtype(logits, DType::kF32, "sample_tokens logits");
  SY_CHECK(token.defined() && logprob.defined()) << "sample_tokens: token and logprob outputs must be set";
  check_shape(token, {rows}, "sample_tokens token");
  check_dtype(token, DType::kI32, "sample_tokens token");
  check_shape(logprob, {rows}, "sample_tokens logprob");
  check_dtype(logprob, DType::kF32, "sample_tokens logprob");
  check_param(params.temperature, DType::kF32, rows, "sample_tokens temperature");
  check_param(params.top_p, DType::kF32, rows, "sample_tokens top_p");
  check_param(params.min_p, DType::kF32, rows, "sample_tokens min_p");
  check_param(params.top_k, DType::kI32, rows, "sample_tokens top_k");
  check_param(params.seed, DType::kI64, rows, "sample_tokens seed");
  check_param(params.row_id, DType::kI64, rows, "sample_tokens row_id");
  check_param(params.position, DType::kI32, rows, "sample_tokens position");
  check_param(params.active, DType::kI32, rows, "sample_tokens active");
  check_same_device({&token, &logprob, &logits, &params.temperature, &params.top_p, &params.min_p,
                     &params.top_k, &params.seed, &params.row_id, &params.position,
                     &params.active},
                    "sample_tokens");
  if (rows == 0) return;
  if (logits.device().is_cpu()) return cpu::sample_tokens(token, logprob, logits, params);
#ifdef SWITCHYARD_HAVE_CUDA
  if (logits.device().is_cuda()) return cuda::sample_tokens(token, logprob, logits, params);
#endif
  no_kernel("sample_tokens", logits.device());
}

}  // namespace sy
