// Rotary position embedding on CPU. Pair (i, i + hd/2) of each head vector at position p is
// rotated by p * theta^(-2i/hd):
//   out_i = x_i cos - x_{i+hd/2} sin,   out_{i+hd/2} = x_i sin + x_{i+hd/2} cos.
// The backward is the transpose of that rotation, i.e. the rotation by the negative angle.
// Angles are formed in double: at positions in the thousands an f32 angle is off by ~1e-4 rad.
#include "kernels/rope.h"

#include <cmath>
#include <vector>

namespace sy::cpu {
namespace {

// out = rotation of x by sign * angle; each pair is read before it is written, so out may
// alias x.
void rotate(const Tensor& out, const Tensor& x, const Tensor& positions, float theta, double sign) {
  const int64_t rows = x.dim(0) * x.dim(1), heads = x.dim(2), hd = x.dim(3), half = hd / 2;
  const int32_t* pos = positions.data<int32_t>();
  const float* src = x.data<float>();
  float* dst = out.data<float>();
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / hd);
  }
  std::vector<float> cos_a(half), sin_a(half);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = pos[r] * inv_freq[i];
      cos_a[i] = static_cast<float>(std::cos(angle));
      sin_a[i] = static_cast<float>(sign * std::sin(angle));
    }
    for (int64_t h = 0; h < heads; ++h) {
      const float* xv = src + (r * heads + h) * hd;
      float* yv = dst + (r * heads + h) * hd;
      for (int64_t i = 0; i < half; ++i) {
        const float x0 = xv[i], x1 = xv[i + half];
        yv[i] = x0 * cos_a[i] - x1 * sin_a[i];
        yv[i + half] = x0 * sin_a[i] + x1 * cos_a[i];
      }
    }
  }
}

}  // namespace

void rope_forward(const Tensor& out, const Tensor& x, const Tensor& positions, float theta) {
  rotate(out, x, positions, theta, 1.0);
}

void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& positions, float theta) {
  rotate(dx, dout, positions, theta, -1.0);
}

}  // namespace sy::cpu
