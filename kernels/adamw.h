#pragma once
// One AdamW step (decoupled weight decay, bias-corrected moments), all f32, same shape:
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   m_hat = m / (1 - beta1^step);  v_hat = v / (1 - beta2^step)
//   p -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)
// step counts from 1. Which parameters decay is the optimizer's choice (pass 0 to skip).
#include <cstdint>

#include "kernels/tensor.h"

namespace sy {

struct AdamWParams {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  int64_t step = 1;
};

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const AdamWParams& p);
namespace cpu {
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const AdamWParams& p);
}  // namespace cpu
namespace cuda {
// kernels/cuda/adamw.cu (one launch per tensor); defined in CUDA builds only.
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const AdamWParams& p);
}  // namespace cuda
}  // namespace sy
