// One AdamW step: argument checks and device dispatch.
#include "kernels/adamw.h"

#include <utility>

#include "kernels/dispatch.h"

namespace sy {

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const AdamWParams& p, const Tensor& copy) {
  SY_CHECK(param.defined()) << "adamw param is undefined";
  check_dtype(param, DType::kF32, "adamw param");
  for (auto [t, what] : {std::pair{&grad, "adamw grad"}, {&m, "adamw m"}, {&v, "adamw v"}}) {
    check_shape(*t, param.shape(), what);
    check_dtype(*t, DType::kF32, what);
  }
  SY_CHECK(p.step >= 1) << "adamw step " << p.step << " (steps count from 1)";
  if (copy.defined()) {
    check_shape(copy, param.shape(), "adamw copy");
    check_dtype(copy, DType::kBF16, "adamw copy");
  }
  check_same_device({&param, &grad, &m, &v, &copy}, "adamw_step");
  if (param.device().is_cpu()) return cpu::adamw_step(param, grad, m, v, p, copy);
#ifdef SWITCHYARD_HAVE_CUDA
  if (param.device().is_cuda()) return cuda::adamw_step(param, grad, m, v, p, copy);
#endif
  no_kernel("adamw_step", param.device());
}

}  // namespace sy
