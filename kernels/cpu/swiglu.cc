// SwiGLU on CPU: out = silu(g) * u with g = h[:, :F], u = h[:, F:], silu(g) = g sigmoid(g).
// Backward (written): du = dout silu(g), dg = dout u sigmoid(g) (1 + g (1 - sigmoid(g))).
#include "kernels/swiglu.h"

#include <cmath>

namespace sy::cpu {
namespace {
float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
}  // namespace

void swiglu_forward(const Tensor& out, const Tensor& h) {
  const int64_t n = out.dim(0), f = out.dim(1);
  const float* ph = h.data<float>();
  float* po = out.data<float>();
  for (int64_t row = 0; row < n; ++row) {
    const float* g = ph + row * 2 * f;
    const float* u = g + f;
    for (int64_t j = 0; j < f; ++j) po[row * f + j] = g[j] * sigmoid(g[j]) * u[j];
  }
}

void swiglu_backward(const Tensor& dh, const Tensor& dout, const Tensor& h) {
  const int64_t n = dout.dim(0), f = dout.dim(1);
  const float* ph = h.data<float>();
  const float* pdo = dout.data<float>();
  float* pdh = dh.data<float>();
  for (int64_t row = 0; row < n; ++row) {
    const float* g = ph + row * 2 * f;
    const float* u = g + f;
    float* dg = pdh + row * 2 * f;
    float* du = dg + f;
    for (int64_t j = 0; j < f; ++j) {
      const float gj = g[j], uj = u[j], dy = pdo[row * f + j], s = sigmoid(gj);
      dg[j] = dy * uj * s * (1.0f + gj * (1.0f - s));
      du[j] = dy * gj * s;
    }
  }
}

}  // namespace sy::cpu
