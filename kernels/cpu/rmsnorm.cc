// RMSNorm on CPU: y = x * rstd * weight per row of D, rstd = 1 / sqrt(mean(x^2) + eps).
// With r = rstd and s = sum_j dy_j w_j x_j, the backward is
//   dx_j = r (dy_j w_j - x_j r^2 s / D)   (written),   dweight_j += sum_rows dy_j x_j r.
// Row sums accumulate in double: this is the oracle the CUDA kernel is held to.
#include "kernels/rmsnorm.h"

#include <cmath>

namespace sy::cpu {

void rmsnorm_forward(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     float eps, const Tensor& residual, const Tensor& sum) {
  const int64_t d = x.dim(-1), n = rstd.numel();
  if (residual.defined()) {  // h = x + residual first (sum may alias either), then its norm
    const float* a = x.data<float>();
    const float* b = residual.data<float>();
    float* h = sum.data<float>();
    for (int64_t i = 0; i < n * d; ++i) h[i] = a[i] + b[i];
  }
  const float* px = (residual.defined() ? sum : x).data<float>();
  const float* w = weight.data<float>();
  float* py = y.data<float>();
  float* pr = rstd.data<float>();
  for (int64_t row = 0; row < n; ++row) {
    const float* xr = px + row * d;
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(xr[j]) * xr[j];
    const float r = static_cast<float>(1.0 / std::sqrt(ss / d + eps));
    float* yr = py + row * d;
    for (int64_t j = 0; j < d; ++j) yr[j] = xr[j] * r * w[j];
    pr[row] = r;
  }
}

void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dy, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd, const Tensor& residual) {
  const int64_t d = x.dim(-1), n = rstd.numel();
  const float* px = x.data<float>();
  const float* pdy = dy.data<float>();
  const float* w = weight.data<float>();
  const float* pr = rstd.data<float>();
  float* pdx = dx.data<float>();
  float* dw = dweight.data<float>();
  const float* res = residual.defined() ? residual.data<float>() : nullptr;
  for (int64_t row = 0; row < n; ++row) {
    const float* xr = px + row * d;
    const float* dyr = pdy + row * d;
    const float r = pr[row];
    double s = 0;
    for (int64_t j = 0; j < d; ++j) {
      s += static_cast<double>(dyr[j]) * w[j] * xr[j];
      dw[j] += dyr[j] * xr[j] * r;
    }
    const float c = static_cast<float>(s / d) * r * r;
    float* dxr = pdx + row * d;
    for (int64_t j = 0; j < d; ++j) {
      float v = r * (dyr[j] * w[j] - xr[j] * c);
      if (res) v += res[row * d + j];  // read before dx is written: res may be dx
      dxr[j] = v;
    }
  }
}

}  // namespace sy::cpu
