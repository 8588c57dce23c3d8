// Fused softmax cross-entropy: argument checks and device dispatch.
#include "kernels/cross_entropy.h"

#include <utility>

#include "kernels/dispatch.h"

namespace sy {
namespace {

// logits [N, V], targets i32 [N], and each per-row f32 tensor in `rows` is [N].
void check_cross_entropy(const Tensor& logits, const Tensor& targets,
                         std::initializer_list<std::pair<const Tensor*, const char*>> rows) {
  SY_CHECK(logits.ndim() == 2) << "cross_entropy logits have shape " << shape_str(logits.shape())
                               << ", expected [N, V]";
  check_float(logits, "cross_entropy logits");
  const int64_t n = logits.dim(0);
  check_shape(targets, {n}, "cross_entropy targets");
  check_dtype(targets, DType::kI32, "cross_entropy targets");
  for (auto [t, what] : rows) {
    check_shape(*t, {n}, what);
    check_dtype(*t, DType::kF32, what);
  }
}

}  // namespace

void cross_entropy_forward(const Tensor& losses, const Tensor& lse, const Tensor& logits,
                           const Tensor& targets, int ignore_index) {
  check_cross_entropy(logits, targets,
                      {{&losses, "cross_entropy losses"}, {&lse, "cross_entropy lse"}});
  check_same_device({&losses, &lse, &logits, &targets}, "cross_entropy_forward");
  if (logits.device().is_cpu()) {
    return cpu::cross_entropy_forward(losses, lse, logits, targets, ignore_index);
  }
#ifdef SWITCHYARD_HAVE_CUDA
  if (logits.device().is_cuda()) {
    return cuda::cross_entropy_forward(losses, lse, logits, targets, ignore_index);
  }
#endif
  no_kernel("cross_entropy_forward", logits.device());
}

void cross_entropy_backward(const Tensor& dlogits, const Tensor& dlosses, const Tensor& logits,
                            const Tensor& lse, const Tensor& targets, int ignore_index) {
  check_cross_entropy(logits, targets,
                      {{&dlosses, "cross_entropy dlosses"}, {&lse, "cross_entropy lse"}});
  check_shape(dlogits, logits.shape(), "cross_entropy dlogits");
  check_dtype(dlogits, logits.dtype(), "cross_entropy dlogits");
  check_same_device({&dlogits, &dlosses, &logits, &lse, &targets}, "cross_entropy_backward");
  if (logits.device().is_cpu()) {
    return cpu::cross_entropy_backward(dlogits, dlosses, logits, lse, targets, ignore_index);
  }
#ifdef SWITCHYARD_HAVE_CUDA
  if (logits.device().is_cuda()) {
    return cuda::cross_entropy_backward(dlogits, dlosses, logits, lse, targets, ignore_index);
  }
#endif
  no_kernel("cross_entropy_backward", logits.device());
}

void cross_entropy_forward_backward(const Tensor& losses, const Tensor& lse, const Tensor& dlogits,
                                    const Tensor& dlosses, const Tensor& logits,
                                    const Tensor& targets, int ignore_index) {
  check_cross_entropy(logits, targets,
                      {{&losses, "cross_entropy losses"},
                       {&lse, "cross_entropy lse"},
                       {&dlosses, "cross_entropy dlosses"}});
  check_shape(dlogits, logits.shape(), "cross_entropy dlogits");
  check_dtype(dlogits, logits.dtype(), "cross_entropy dlogits");
  check_same_device({&losses, &lse, &dlogits, &dlosses, &logits, &targets},
                    "cross_entropy_forward_backward");
  if (logits.device().is_cpu()) {
    return cpu::cross_entropy_forward_backward(losses, lse, dlogits, dlosses, logits, targets,
                                               ignore_index);
  }
#ifdef SWITCHYARD_HAVE_CUDA
  if (logits.device().is_cuda()) {
    return cuda::cross_entropy_forward_backward(losses, lse, dlogits, dlosses, logits, targets,
                                                ignore_index);
  }
#endif
  no_kernel("cross_entropy_forward_backward", logits.device());
}

}  // namespace sy
