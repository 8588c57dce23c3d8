// SwiGLU on the GPU: out = silu(g) * u with g = h[:, :F], u = h[:, F:], silu(g) = g sigmoid(g);
// backward (written): du = dout silu(g), dg = dout u sigmoid(g) (1 + g (1 - sigmoid(g))).
// h, out, dout, dh are f32 or bf16 (one type per call), the arithmetic fp32. One thread
// per output element, grid-stride.
#include "kernels/cuda/common.cuh"
#include "kernels/swiglu.h"

namespace sy::cuda {
namespace {

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <typename T>
__global__ void swiglu_forward_kernel(T* out, const T* h, int64_t n, int64_t f) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n * f;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / f, j = i % f;
    const float g = to_f32(h[row * 2 * f + j]), u = to_f32(h[row * 2 * f + f + j]);
    out[i] = from_f32<T>(g * sigmoid(g) * u);
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(T* dh, const T* dout, const T* h, int64_t n, int64_t f) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n * f;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / f, j = i % f;
    const int64_t gi = row * 2 * f + j, ui = gi + f;
    const float g = to_f32(h[gi]), u = to_f32(h[ui]), dy = to_f32(dout[i]), s = sigmoid(g);
    dh[gi] = from_f32<T>(dy * u * s * (1.0f + g * (1.0f - s)));
    dh[ui] = from_f32<T>(dy * g * s);
  }
}

}  // namespace

void swiglu_forward(const Tensor& out, const Tensor& h) {
  const int64_t n = out.dim(0), f = out.dim(1);
  if (n * f == 0) return;
  use_device(h);
  dispatch_float(h.dtype(), "swiglu h", [&](auto tag) {
    using T = decltype(tag);
    swiglu_forward_kernel<T>
        <<<grid_for(n * f), kThreads, 0, stream()>>>(ptr<T>(out), ptr<T>(h), n, f);
    launch_check("swiglu_forward_kernel");
  });
}

void swiglu_backward(const Tensor& dh, const Tensor& dout, const Tensor& h) {
  const int64_t n = dout.dim(0), f = dout.dim(1);
  if (n * f == 0) return;
  use_device(h);
  dispatch_float(h.dtype(), "swiglu h", [&](auto tag) {
    using T = decltype(tag);
    swiglu_backward_kernel<T>
        <<<grid_for(n * f), kThreads, 0, stream()>>>(ptr<T>(dh), ptr<T>(dout), ptr<T>(h), n, f);
    launch_check("swiglu_backward_kernel");
  });
}

}  // namespace sy::cuda
