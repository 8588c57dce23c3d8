#include "kernels/dispatch.h"

namespace sy {
void no_kernel(const char* op, Device device) {
  SY_CHECK(false) << op << " has no kernel for " << device.str();
  __builtin_unreachable();
}

void check_float(const Tensor& t, const char* what) {
  if (t.device().is_cuda() && t.dtype() == DType::kBF16) return;
  check_dtype(t, DType::kF32, what);
}

}  // namespace sy
