// Rotary position embedding on the GPU, half-split pairing: pair (i, i + hd/2) of each head
// vector at position p is rotated by sign * p * theta^(-2i/hd):
//   out_i = x_i cos - x_{i+hd/2} sin,   out_{i+hd/2} = x_i sin + x_{i+hd/2} cos.
// The backward (dx, written) is the rotation by the negative angle. x / out are f32 or
// bf16. Angles, cosines and sines are formed in double, as the CPU reference does (an f32
// angle at positions in the thousands is off by ~1e-4 rad), once per (token, pair index i),
// and used for that pair in every head.
//
// The op is bound by memory. Where hd/2 is a whole number of 16-byte vectors (8 bf16 or 4
// f32) and x and out are 16-byte aligned, a first kernel writes the (cos, sin) of every
// (token, i) to a scratch table, one thread each (the double-precision sines are then spread
// over the whole GPU, not stacked at the start of the threads that move the data), and a
// second one rotates: one thread per (token, group of kHeadsAtOnce heads, W = 8 or 4
// consecutive pairs) reads the W (cos, sin) once and, for each of its heads, x[i0 .. i0+W)
// and x[i0+hd/2 .. i0+hd/2+W) as two 16-byte vectors. Otherwise one thread per (token, i)
// forms its angle and moves scalars through every head. On both paths a thread reads its
// elements before it writes the same elements, and no two threads touch one element, so
// out may alias x.
#include "kernels/cuda/common.cuh"
#include "kernels/rope.h"

namespace sy::cuda {
namespace {

template <typename T>
__global__ void rope_kernel(T* out, const T* x, const int32_t* positions, int64_t rows,
                            int64_t heads, int64_t hd, double theta, double sign) {
  const int64_t half = hd / 2;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < rows * half;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = t / half, i = t % half;
    const double angle =
        positions[r] * pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
    double sin_d, cos_d;
    sincos(angle, &sin_d, &cos_d);
    const float c = static_cast<float>(cos_d), s = static_cast<float>(sign * sin_d);
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t base = (r * heads + h) * hd;
      const float x0 = to_f32(x[base + i]), x1 = to_f32(x[base + i + half]);
      out[base + i] = from_f32<T>(x0 * c - x1 * s);
      out[base + i + half] = from_f32<T>(x0 * s + x1 * c);
    }
  }
}

// cs[r, i] = (cos, sign * sin) of positions[r] * theta^(-2i/hd), the same expressions as
// rope_kernel's. The block's threads share theta^(-2i/hd) through shared memory.
__global__ void rope_angles_kernel(float2* cs, const int32_t* positions, int64_t rows, int64_t hd,
                                   double theta, double sign) {
  extern __shared__ double inv_freq[];  // [hd / 2]
  const int64_t half = hd / 2;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    inv_freq[i] = pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
  }
  __syncthreads();
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < rows * half;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double angle = positions[t / half] * inv_freq[t % half];
    double sin_d, cos_d;
    sincos(angle, &sin_d, &cos_d);
    cs[t] = make_float2(static_cast<float>(cos_d), static_cast<float>(sign * sin_d));
  }
}

// Heads one thread of rope_vec_kernel rotates: their loads are in flight together, and the
// thread reads its (cos, sin) once for all of them.
constexpr int kHeadsAtOnce = 4;
// rope_angles_kernel keeps theta^(-2i/hd) for every i < hd/2 in shared memory.
constexpr int64_t kMaxVecHeadDim = 4096;

template <typename T>
__global__ void rope_vec_kernel(T* out, const T* x, const float2* cs, int64_t rows, int64_t heads,
                                int64_t hd) {
  constexpr int W = Vec<T>::kWidth;
  const int64_t half = hd / 2, vectors = half / W;
  const int64_t head_groups = (heads + kHeadsAtOnce - 1) / kHeadsAtOnce;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       t < rows * head_groups * vectors; t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i0 = (t % vectors) * W, h0 = (t / vectors) % head_groups * kHeadsAtOnce;
    const int64_t r = t / vectors / head_groups;
    // W (cos, sin) pairs: 8 bytes each, 16-byte aligned (i0 is a multiple of W).
    float c[W], s[W];
#pragma unroll
    for (int q = 0; q < W / 2; ++q) {
      const float4 v = *reinterpret_cast<const float4*>(cs + r * half + i0 + 2 * q);
      c[2 * q] = v.x;
      s[2 * q] = v.y;
      c[2 * q + 1] = v.z;
      s[2 * q + 1] = v.w;
    }
    Vec<T> lo[kHeadsAtOnce], hi[kHeadsAtOnce];
#pragma unroll
    for (int k = 0; k < kHeadsAtOnce; ++k) {
      if (h0 + k < heads) {
        const int64_t base = (r * heads + h0 + k) * hd + i0;
        lo[k].raw = *reinterpret_cast<const uint4*>(x + base);
        hi[k].raw = *reinterpret_cast<const uint4*>(x + base + half);
      }
    }
#pragma unroll
    for (int k = 0; k < kHeadsAtOnce; ++k) {
      if (h0 + k < heads) {
        Vec<T> out_lo, out_hi;
#pragma unroll
        for (int e = 0; e < W; ++e) {
          const float x0 = to_f32(lo[k].x[e]), x1 = to_f32(hi[k].x[e]);
          out_lo.x[e] = from_f32<T>(x0 * c[e] - x1 * s[e]);
          out_hi.x[e] = from_f32<T>(x0 * s[e] + x1 * c[e]);
        }
        const int64_t base = (r * heads + h0 + k) * hd + i0;
        *reinterpret_cast<uint4*>(out + base) = out_lo.raw;
        *reinterpret_cast<uint4*>(out + base + half) = out_hi.raw;
      }
    }
  }
}

void rotate(const Tensor& out, const Tensor& x, const Tensor& positions, float theta, double sign) {
  const int64_t rows = x.dim(0) * x.dim(1), heads = x.dim(2), hd = x.dim(3);
  if (rows == 0 || heads == 0 || hd == 0) return;
  use_device(x);
  dispatch_float(x.dtype(), "rope input", [&](auto tag) {
    using T = decltype(tag);
    const int64_t half = hd / 2;
    if (hd <= kMaxVecHeadDim && vectorizable<T>(half, {out.raw(), x.raw()})) {
      Scratch cs(static_cast<size_t>(rows * half) * sizeof(float2));
      rope_angles_kernel<<<grid_for(rows * half), kThreads, half * sizeof(double), stream()>>>(
          cs.as<float2>(), ptr<int32_t>(positions), rows, hd, static_cast<double>(theta), sign);
      launch_check("rope_angles_kernel");
      const int64_t threads =
          rows * ((heads + kHeadsAtOnce - 1) / kHeadsAtOnce) * (half / Vec<T>::kWidth);
      rope_vec_kernel<T><<<grid_for(threads), kThreads, 0, stream()>>>(
          ptr<T>(out), ptr<T>(x), cs.as<float2>(), rows, heads, hd);
      launch_check("rope_vec_kernel");
      return;
    }
    rope_kernel<T><<<grid_for(rows * (hd / 2)), kThreads, 0, stream()>>>(
        ptr<T>(out), ptr<T>(x), ptr<int32_t>(positions), rows, heads, hd,
        static_cast<double>(theta), sign);
    launch_check("rope_kernel");
  });
}

}  // namespace

void rope_forward(const Tensor& out, const Tensor& x, const Tensor& positions, float theta) {
  rotate(out, x, positions, theta, 1.0);
}

void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& positions, float theta) {
  rotate(dx, dout, positions, theta, -1.0);
}

}  // namespace sy::cuda
