#pragma once
// Helpers shared by the GPU parity tests (tests/gpu/): skip cleanly where no GPU is visible,
// put a CPU reference input on the GPU in a dtype, and round it the same way on the CPU so
// the reference sees exactly the values the kernel sees.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/tensor.h"
#include "tests/testing/testing.h"

#define SKIP_WITHOUT_GPU() \
  if (!::sy::cuda_available()) GTEST_SKIP() << "no GPU visible: GPU tests skipped"

namespace sy::testing {

inline const Device kGpu = Device::cuda(0);
inline constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// What a `dtype` tensor holds for the f32 values of `host` (bf16 rounds), as f32 on the CPU.
inline Tensor rounded(const Tensor& host, DType dtype) {
  return dtype == DType::kBF16 ? host.to(DType::kBF16).to(DType::kF32) : host;
}
// `host` on the GPU as `dtype`.
inline Tensor on_gpu(const Tensor& host, DType dtype) { return host.to(dtype).to(kGpu); }
// A CPU f32 tensor with every element `value` (NaN: proves an output is written, not read).
inline Tensor filled(const Shape& shape, float value) {
  Tensor t = Tensor::empty(shape);
  t.fill_(value);
  return t;
}

// `host` (f32, CPU) on the GPU as `dtype` with host's shape, as a view starting `shift`
// elements into a buffer that much longer (NaN before it). shift 1 puts the data off every
// 16-byte boundary, so an op must take its non-vector kernels.
inline Tensor on_gpu_shifted(const Tensor& host, DType dtype, int64_t shift) {
  if (shift == 0) return on_gpu(host, dtype);
  const int64_t n = host.numel();
  Tensor padded = filled({n + shift}, kNaN);
  std::memcpy(padded.data<float>() + shift, host.data<float>(), n * sizeof(float));
  return on_gpu(padded, dtype).rows(shift, n + shift).view(host.shape());
}

// all_close of a GPU result against its CPU reference with an absolute floor relative to the
// reference's largest magnitude: |gpu - cpu| <= rtol |cpu| + peak_tol * max|cpu|.
inline ::testing::AssertionResult close_to(const Tensor& gpu, const Tensor& cpu, double rtol,
                                           double peak_tol) {
  const std::vector<float> ref = cpu.to_f32_vector();
  double peak = 0;
  for (float x : ref) peak = std::max(peak, std::fabs(static_cast<double>(x)));
  return all_close(gpu.to_f32_vector(), std::vector<double>(ref.begin(), ref.end()), rtol,
                   peak_tol * peak);
}

}  // namespace sy::testing
