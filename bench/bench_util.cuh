#pragma once
// What the GPU benchmarks in bench/ share: random bf16 inputs, the median time of a piece of
// GPU work, and the largest difference of one set of outputs from another.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"

namespace sy::bench {

constexpr int kWarmup = 3;  // runs before the timed ones (allocator pools, cuBLASLt's cache)

// N(0, scale^2) values, rounded to bf16, on GPU 0.
inline Tensor random_bf16(const Shape& shape, std::mt19937_64& rng, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> values(static_cast<size_t>(n));
  for (float& x : values) x = normal(rng);
  return Tensor::from_f32(values, shape).to(DType::kBF16).to(Device::cuda(0));
}

// Median milliseconds of `repeats` runs of fn after kWarmup, each between two events on the
// ops' stream.
inline double median_ms(const std::function<void()>& fn, int repeats) {
  cudaEvent_t start, stop;
  SY_CUDA_CHECK(cudaEventCreate(&start));
  SY_CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < kWarmup; ++i) fn();
  std::vector<double> ms;
  for (int i = 0; i < repeats; ++i) {
    SY_CUDA_CHECK(cudaEventRecord(start, cuda::stream()));
    fn();
    SY_CUDA_CHECK(cudaEventRecord(stop, cuda::stream()));
    SY_CUDA_CHECK(cudaEventSynchronize(stop));
    float elapsed = 0;
    SY_CUDA_CHECK(cudaEventElapsedTime(&elapsed, start, stop));
    ms.push_back(elapsed);
  }
  SY_CUDA_CHECK(cudaEventDestroy(start));
  SY_CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// max |a - b| / max |b| over the pairs of tensors.
inline double max_rel_err(const std::vector<const Tensor*>& a,
                          const std::vector<const Tensor*>& b) {
  double diff = 0, peak = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const std::vector<float> x = a[i]->to_f32_vector(), y = b[i]->to_f32_vector();
    for (size_t j = 0; j < x.size(); ++j) {
      diff = std::max(diff, std::fabs(static_cast<double>(x[j]) - y[j]));
      peak = std::max(peak, std::fabs(static_cast<double>(y[j])));
    }
  }
  return peak > 0 ? diff / peak : diff;
}

// GPU 0's name; exits with a message naming the program when no GPU is visible.
inline std::string gpu_name_or_exit(const char* program) {
  if (!cuda_available()) {
    std::fprintf(stderr, "%s: no GPU visible\n", program);
    std::exit(1);
  }
  cudaDeviceProp prop;
  SY_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  return prop.name;
}

}  // namespace sy::bench
