// Softmax entropy: argument checks and device dispatch.
#include "kernels/entropy.h"

#include "kernels/dispatch.h"

namespace sy {

void softmax_entropy(const Tensor& entropy, const Tensor& logits, const Tensor& lse) {
  SY_CHECK(logits.ndim() == 2) << "softmax_entropy logits have shape " << shape_str(logits.shape())
                               << ", expected [N, V]";
  check_float(logits, "softmax_entropy logits");
  const int64_t n = logits.dim(0);
  check_shape(lse, {n}, "softmax_entropy lse");
  check_dtype(lse, DType::kF32, "softmax_entropy lse");
  check_shape(entropy, {n}, "softmax_entropy entropy");
  check_dtype(entropy, DType::kF32, "softmax_entropy entropy");
  check_same_device({&entropy, &logits, &lse}, "softmax_entropy");
  if (logits.device().is_cpu()) return cpu::softmax_entropy(entropy, logits, lse);
#ifdef SWITCHYARD_HAVE_CUDA
  if (logits.device().is_cuda()) return cuda::softmax_entropy(entropy, logits, lse);
#endif
  no_kernel("softmax_entropy", logits.device());
}

}  // namespace sy
