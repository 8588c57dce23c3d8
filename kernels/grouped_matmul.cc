// Grouped linear layers with device-side group offsets: argument checks and device dispatch.
#include "kernels/grouped_matmul.h"

#include <atomic>

#include "kernels/dispatch.h"
#include "kernels/env.h"

namespace sy {

void grouped_matmul(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& offsets) {
  SY_CHECK(x.ndim() == 2) << "grouped_matmul: x has shape " << shape_str(x.shape())
                          << ", expected [M, K]";
  SY_CHECK(w.ndim() == 3) << "grouped_matmul: w has shape " << shape_str(w.shape())
                          << ", expected [E, N, K]";
  SY_CHECK(w.dim(2) == x.dim(1)) << "grouped_matmul: w " << shape_str(w.shape()) << " and x "
                                 << shape_str(x.shape()) << " disagree on K";
  check_float(x, "grouped_matmul x");
  check_dtype(w, x.dtype(), "grouped_matmul w");
  check_shape(y, {x.dim(0), w.dim(1)}, "grouped_matmul y");
  check_dtype(y, x.dtype(), "grouped_matmul y");
  check_shape(offsets, {w.dim(0) + 1}, "grouped_matmul offsets");
  check_dtype(offsets, DType::kI64, "grouped_matmul offsets");
  check_same_device({&y, &x, &w, &offsets}, "grouped_matmul");
  if (x.device().is_cpu()) return cpu::grouped_matmul(y, x, w, offsets);
#ifdef SWITCHYARD_HAVE_CUDA
  if (x.device().is_cuda()) return cuda::grouped_matmul(y, x, w, offsets);
#endif
  no_kernel("grouped_matmul", x.device());
}

namespace {
std::atomic<GroupedTiling>& tiling_flag() {
  static std::atomic<GroupedTiling> flag(
      env_choice("SWITCHYARD_GROUPED_MATMUL", {"wide", "auto"}) == 0 ? GroupedTiling::kWide
                                                                     : GroupedTiling::kAdaptive);
  return flag;
}
}  // namespace

void set_grouped_matmul_tiling(GroupedTiling tiling) { tiling_flag().store(tiling); }
GroupedTiling grouped_matmul_tiling() { return tiling_flag().load(); }

bool grouped_matmul_waits_for_nothing(Device device, DType dtype, int64_t n, int64_t k) {
  if (device.is_cpu()) return true;
#ifdef SWITCHYARD_HAVE_CUDA
  if (device.is_cuda()) return cuda::grouped_matmul_on_device(dtype, n, k);
#endif
  (void)dtype, (void)n, (void)k;
  return false;
}

}  // namespace sy
