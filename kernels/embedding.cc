#include "kernels/embedding.h"

#include "kernels/dispatch.h"

namespace sy {

void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table) {
  check_dtype(ids, DType::kI32, "embedding ids");
  check_float(table, "embedding table");
  check_float(out, "embedding out");
  check_shape(out, {ids.numel(), table.dim(1)}, "embedding out");
  check_same_device({&out, &ids, &table}, "embedding_forward");
  if (out.device().is_cpu()) return cpu::embedding_forward(out, ids, table);
#ifdef SWITCHYARD_HAVE_CUDA
  if (out.device().is_cuda()) return cuda::embedding_forward(out, ids, table);
#endif
  no_kernel("embedding_forward", out.device());
}

void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& ids) {
  check_dtype(ids, DType::kI32, "embedding ids");
  check_dtype(dtable, DType::kF32, "embedding dtable");
  check_float(dout, "embedding dout");
  check_shape(dout, {ids.numel(), dtable.dim(1)}, "embedding dout");
  check_same_device({&dtable, &dout, &ids}, "embedding_backward");
  if (dtable.device().is_cpu()) return cpu::embedding_backward(dtable, dout, ids);
#ifdef SWITCHYARD_HAVE_CUDA
  if (dtable.device().is_cuda()) return cuda::embedding_backward(dtable, dout, ids);
#endif
  no_kernel("embedding_backward", dtable.device());
}

}  // namespace sy
