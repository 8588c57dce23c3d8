// SwiGLU on the GPU: out = silu(g) * u with g = h[:, :F], u = h[:, F:], silu(g) = g sigmoid(g);
// backward (written): du = dout silu(g), dg = dout u sigmoid(g) (1 + g (1 - sigmoid(g))).
// h, out, dout, dh are f32 or bf16 (one type per call), the arithmetic fp32. Where F is a
// multiple of a 16-byte vector (8 bf16 or 4 f32) and the tensors are 16-byte aligned, each
// thread moves whole vectors (one row/column division per vector, 128-bit loads and stores):
// the op is bound by memory, and scalar 2-byte accesses left most of the bandwidth unused.
// Otherwise one thread per output element. Both paths compute the same fp32 expressions.
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

template <typename T>
__global__ void swiglu_forward_vec_kernel(T* out, const T* h, int64_t n, int64_t f) {
  constexpr int W = Vec<T>::kWidth;
  const int64_t fv = f / W;  // vectors per output row
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n * fv;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / fv, j = (i % fv) * W;
    Vec<T> g, u, o;
    g.raw = *reinterpret_cast<const uint4*>(h + row * 2 * f + j);
    u.raw = *reinterpret_cast<const uint4*>(h + row * 2 * f + f + j);
#pragma unroll
    for (int w = 0; w < W; ++w) {
      const float gw = to_f32(g.x[w]), uw = to_f32(u.x[w]);
      o.x[w] = from_f32<T>(gw * sigmoid(gw) * uw);
    }
    *reinterpret_cast<uint4*>(out + row * f + j) = o.raw;
  }
}

template <typename T>
__global__ void swiglu_backward_vec_kernel(T* dh, const T* dout, const T* h, int64_t n, int64_t f) {
  constexpr int W = Vec<T>::kWidth;
  const int64_t fv = f / W;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n * fv;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / fv, j = (i % fv) * W;
    const int64_t gi = row * 2 * f + j, ui = gi + f;
    Vec<T> g, u, dy, dg, du;
    g.raw = *reinterpret_cast<const uint4*>(h + gi);
    u.raw = *reinterpret_cast<const uint4*>(h + ui);
    dy.raw = *reinterpret_cast<const uint4*>(dout + row * f + j);
#pragma unroll
    for (int w = 0; w < W; ++w) {
      const float gw = to_f32(g.x[w]), uw = to_f32(u.x[w]), d = to_f32(dy.x[w]);
      const float sw = sigmoid(gw);
      dg.x[w] = from_f32<T>(d * uw * sw * (1.0f + gw * (1.0f - sw)));
      du.x[w] = from_f32<T>(d * gw * sw);
    }
    *reinterpret_cast<uint4*>(dh + gi) = dg.raw;
    *reinterpret_cast<uint4*>(dh + ui) = du.raw;
  }
}

}  // namespace

void swiglu_forward(const Tensor& out, const Tensor& h) {
  const int64_t n = out.dim(0), f = out.dim(1);
  if (n * f == 0) return;
  use_device(h);
  dispatch_float(h.dtype(), "swiglu h", [&](auto tag) {
    using T = decltype(tag);
    if (vectorizable<T>(f, {out.raw(), h.raw()})) {
      swiglu_forward_vec_kernel<T><<<grid_for(n * f / Vec<T>::kWidth), kThreads, 0, stream()>>>(
          ptr<T>(out), ptr<T>(h), n, f);
      launch_check("swiglu_forward_vec_kernel");
      return;
    }
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
    if (vectorizable<T>(f, {dh.raw(), dout.raw(), h.raw()})) {
      swiglu_backward_vec_kernel<T><<<grid_for(n * f / Vec<T>::kWidth), kThreads, 0, stream()>>>(
          ptr<T>(dh), ptr<T>(dout), ptr<T>(h), n, f);
      launch_check("swiglu_backward_vec_kernel");
      return;
    }
    swiglu_backward_kernel<T>
        <<<grid_for(n * f), kThreads, 0, stream()>>>(ptr<T>(dh), ptr<T>(dout), ptr<T>(h), n, f);
    launch_check("swiglu_backward_kernel");
  });
}

}  // namespace sy::cuda
