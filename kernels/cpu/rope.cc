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

// theta^(-2i/hd) for i < hd/2, in double.
std::vector<double> inverse_frequencies(int64_t hd, float theta) {
  std::vector<double> inv_freq(hd / 2);
  for (int64_t i = 0; i < hd / 2; ++i) {
    inv_freq[i] = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / hd);
  }
  return inv_freq;
}

// Row r's (cos, sin) pairs, interleaved: the table's row, or formed from the position.
void angles_of_row(float* cs, int32_t position, const std::vector<double>& inv_freq) {
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const double angle = position * inv_freq[i];
    cs[2 * i] = static_cast<float>(std::cos(angle));
    cs[2 * i + 1] = static_cast<float>(std::sin(angle));
  }
}

// Every head of row r rotated by sign * angle, from the row's (cos, sin) pairs; each pair is
// read before it is written, so out may alias x. sign * sin is exact (a negation or not).
void rotate_row(float* dst, const float* src, const float* cs, int64_t heads, int64_t hd,
                float sign) {
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < heads; ++h) {
    const float* xv = src + h * hd;
    float* yv = dst + h * hd;
    for (int64_t i = 0; i < half; ++i) {
      const float c = cs[2 * i], s = sign * cs[2 * i + 1];
      const float x0 = xv[i], x1 = xv[i + half];
      yv[i] = x0 * c - x1 * s;
      yv[i + half] = x0 * s + x1 * c;
    }
  }
}

// out = rotation of x by sign * angle.
void rotate(const Tensor& out, const Tensor& x, const Tensor& positions, float theta, float sign) {
  const int64_t rows = x.dim(0) * x.dim(1), heads = x.dim(2), hd = x.dim(3);
  const int32_t* pos = positions.data<int32_t>();
  const std::vector<double> inv_freq = inverse_frequencies(hd, theta);
  std::vector<float> cs(hd);
  for (int64_t r = 0; r < rows; ++r) {
    angles_of_row(cs.data(), pos[r], inv_freq);
    rotate_row(out.data<float>() + r * heads * hd, x.data<float>() + r * heads * hd, cs.data(),
               heads, hd, sign);
  }
}

}  // namespace

void rope_forward(const Tensor& out, const Tensor& x, const Tensor& positions, float theta) {
  rotate(out, x, positions, theta, 1.0f);
}

void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& positions, float theta) {
  rotate(dx, dout, positions, theta, -1.0f);
}

void rope_table(const Tensor& table, const Tensor& positions, float theta) {
  const int64_t rows = positions.numel(), half = table.dim(1);
  const std::vector<double> inv_freq = inverse_frequencies(2 * half, theta);
  for (int64_t r = 0; r < rows; ++r)
    angles_of_row(table.data<float>() + r * 2 * half, positions.data<int32_t>()[r], inv_freq);
}

void rope_rotate(const Tensor& out, const Tensor& x, const Tensor& table, float sign) {
  const int64_t rows = x.dim(0) * x.dim(1), heads = x.dim(2), hd = x.dim(3);
  for (int64_t r = 0; r < rows; ++r) {
    rotate_row(out.data<float>() + r * heads * hd, x.data<float>() + r * heads * hd,
               table.data<float>() + r * hd, heads, hd, sign);
  }
}

}  // namespace sy::cpu
