// Rotary position embedding on the GPU, half-split pairing: pair (i, i + hd/2) of each head
// vector at position p is rotated by sign * p * theta^(-2i/hd):
//   out_i = x_i cos - x_{i+hd/2} sin,   out_{i+hd/2} = x_i sin + x_{i+hd/2} cos.
// The backward (dx, written) is the rotation by the negative angle. x / out are f32 or
// bf16. One thread per (token, pair index i) forms the angle, its cosine and sine in
// double, as the CPU reference does (an f32 angle at positions in the thousands is off by
// ~1e-4 rad), and rotates that pair in every head. Each pair is read before it is
// written, so out may alias x.
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

void rotate(const Tensor& out, const Tensor& x, const Tensor& positions, float theta, double sign) {
  const int64_t rows = x.dim(0) * x.dim(1), heads = x.dim(2), hd = x.dim(3);
  if (rows == 0 || heads == 0 || hd == 0) return;
  use_device(x);
  dispatch_float(x.dtype(), "rope input", [&](auto tag) {
    using T = decltype(tag);
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
