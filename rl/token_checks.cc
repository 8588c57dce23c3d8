#include "rl/token_checks.h"

namespace sy::rl {

void check_mask(const Tensor& mask) {
  SY_CHECK(mask.ndim() == 2) << "mask must be [B, T], got " << shape_str(mask.shape());
  check_dtype(mask, DType::kF32, "mask");
  SY_CHECK(mask.device().is_cpu()) << "mask is on " << mask.device().str() << ", expected cpu";
  const float* m = mask.data<float>();
  for (int64_t i = 0; i < mask.numel(); ++i)
    SY_CHECK(m[i] == 0 || m[i] == 1) << "mask[" << i << "] = " << m[i] << ", expected 0 or 1";
}

void check_per_token(const Tensor& t, const Tensor& mask, const char* what) {
  check_shape(t, mask.shape(), what);
  check_dtype(t, DType::kF32, what);
  SY_CHECK(t.device().is_cpu()) << what << " is on " << t.device().str() << ", expected cpu";
}

}  // namespace sy::rl
