// Softmax entropy on the GPU, one block per row of V logits (f32 or bf16): each thread sums
// exp(x_j - lse) * x_j over its strided share of the row in fp32, the block adds the shares,
// and entropy = lse - that sum. One read of the row; nothing but the N results is written.
#include "kernels/cuda/common.cuh"
#include "kernels/entropy.h"

namespace sy::cuda {
namespace {

template <typename T>
__global__ void softmax_entropy_kernel(float* entropy, const T* logits, const float* lse, int64_t n,
                                       int64_t vocab) {
  __shared__ float shared[32];
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const T* x = logits + row * vocab;
    const float l = lse[row];
    float expected = 0.0f;
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const float v = to_f32(x[j]);
      expected += __expf(v - l) * v;
    }
    expected = block_sum(expected, shared);
    if (threadIdx.x == 0) entropy[row] = l - expected;
  }
}

}  // namespace

void softmax_entropy(const Tensor& entropy, const Tensor& logits, const Tensor& lse) {
  const int64_t n = logits.dim(0), vocab = logits.dim(1);
  if (n == 0) return;
  use_device(logits);
  dispatch_float(logits.dtype(), "softmax_entropy logits", [&](auto tag) {
    using T = decltype(tag);
    softmax_entropy_kernel<T><<<row_grid(n), kThreads, 0, stream()>>>(
        ptr<float>(entropy), ptr<T>(logits), ptr<float>(lse), n, vocab);
    launch_check("softmax_entropy_kernel");
  });
}

}  // namespace sy::cuda
