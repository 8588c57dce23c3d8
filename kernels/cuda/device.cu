// Device facts for the per-rank banner line, and a kernel that proves the CUDA toolchain
// builds and runs: the bf16 cast used by the GPU parity tests.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <string>

#include "kernels/cuda/device.h"

namespace sy::cuda {
namespace {

__global__ void f32_to_bf16_kernel(__nv_bfloat16* out, const float* in, int64_t n) {
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __float2bfloat16_rn(in[i]);
}

}  // namespace

std::string device_description(int index) {
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, index) != cudaSuccess)
    return "cuda:" + std::to_string(index) + " (unavailable)";
  return "cuda:" + std::to_string(index) + " " + prop.name + " sm_" + std::to_string(prop.major) +
         std::to_string(prop.minor) + " " + std::to_string(prop.totalGlobalMem >> 30) + " GiB";
}

int64_t free_memory_bytes(int index) {
  int previous = 0;
  SY_CHECK(cudaGetDevice(&previous) == cudaSuccess) << "cudaGetDevice failed";
  SY_CHECK(cudaSetDevice(index) == cudaSuccess) << "cudaSetDevice(" << index << ") failed";
  size_t free_bytes = 0, total = 0;
  const cudaError_t err = cudaMemGetInfo(&free_bytes, &total);
  SY_CHECK(cudaSetDevice(previous) == cudaSuccess) << "cudaSetDevice(" << previous << ") failed";
  SY_CHECK(err == cudaSuccess) << "cudaMemGetInfo on cuda:" << index << ": "
                               << cudaGetErrorString(err);
  return static_cast<int64_t>(free_bytes);
}

void cast_f32_to_bf16(const Tensor& out, const Tensor& in) {
  check_dtype(in, DType::kF32, "cast input");
  check_dtype(out, DType::kBF16, "cast output");
  SY_CHECK(in.numel() == out.numel() && in.device().is_cuda() && out.device() == in.device())
      << "cast_f32_to_bf16 needs same-size tensors on one GPU";
  int64_t n = in.numel();
  if (n == 0) return;
  constexpr int kThreads = 256;
  f32_to_bf16_kernel<<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0,
                       cudaStreamPerThread>>>(static_cast<__nv_bfloat16*>(out.raw()),
                                              in.data<float>(), n);
  cudaError_t err = cudaGetLastError();
  SY_CHECK(err == cudaSuccess) << "f32_to_bf16_kernel launch: " << cudaGetErrorString(err);
}

}  // namespace sy::cuda
