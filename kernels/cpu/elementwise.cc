#include "kernels/elementwise.h"

#include <cstring>

namespace sy::cpu {

void add(const Tensor& out, const Tensor& a, const Tensor& b) {
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* po = out.data<float>();
  for (int64_t i = 0, n = out.numel(); i < n; ++i) po[i] = pa[i] + pb[i];
}

void scale_(const Tensor& x, float s) {
  float* p = x.data<float>();
  for (int64_t i = 0, n = x.numel(); i < n; ++i) p[i] *= s;
}

void fill_(const Tensor& x, float v) { x.fill_(v); }

void concat_cols(const Tensor& out, const Tensor& a, const Tensor& b) {
  const int64_t rows = a.dim(0), ca = a.dim(1), cb = b.dim(1);
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* po = out.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(po + r * (ca + cb), pa + r * ca, ca * sizeof(float));
    std::memcpy(po + r * (ca + cb) + ca, pb + r * cb, cb * sizeof(float));
  }
}

void split_cols(const Tensor& da, const Tensor& db, const Tensor& dout) {
  const int64_t rows = da.dim(0), ca = da.dim(1), cb = db.dim(1);
  const float* pd = dout.data<float>();
  float* pa = da.data<float>();
  float* pb = db.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(pa + r * ca, pd + r * (ca + cb), ca * sizeof(float));
    std::memcpy(pb + r * cb, pd + r * (ca + cb) + ca, cb * sizeof(float));
  }
}

double sum_squares(const Tensor& x) {
  const float* p = x.data<float>();
  double s = 0;
  for (int64_t i = 0, n = x.numel(); i < n; ++i) s += static_cast<double>(p[i]) * p[i];
  return s;
}

void cast(const Tensor& out, const Tensor& x) {
  const int64_t n = x.numel();
  if (out.dtype() == x.dtype()) {
    if (n) std::memcpy(out.raw(), x.raw(), x.nbytes());
  } else if (x.dtype() == DType::kF32) {
    const float* px = x.data<float>();
    bf16* po = out.data<bf16>();
    for (int64_t i = 0; i < n; ++i) po[i] = f32_to_bf16(px[i]);
  } else {
    const bf16* px = x.data<bf16>();
    float* po = out.data<float>();
    for (int64_t i = 0; i < n; ++i) po[i] = bf16_to_f32(px[i]);
  }
}

}  // namespace sy::cpu
