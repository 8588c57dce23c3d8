// AdamW on CPU, elementwise: moments m, v updated from g, bias-corrected by 1 - beta^step,
// then p -= lr (m_hat / (sqrt(v_hat) + eps) + weight_decay p), the decay applied to the
// parameter before this step's update (decoupled, as in Loshchilov & Hutter).
#include "kernels/adamw.h"

#include <cmath>

namespace sy::cpu {

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const AdamWParams& p, const Tensor& copy) {
  const float correction1 = static_cast<float>(1.0 - std::pow(double{p.beta1}, p.step));
  const float correction2 = static_cast<float>(1.0 - std::pow(double{p.beta2}, p.step));
  const int64_t n = param.numel();
  float* w = param.data<float>();
  const float* g = grad.data<float>();
  float* pm = m.data<float>();
  float* pv = v.data<float>();
  bf16* out = copy.defined() ? copy.data<bf16>() : nullptr;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * p.grad_scale;
    pm[i] = p.beta1 * pm[i] + (1.0f - p.beta1) * gi;
    pv[i] = p.beta2 * pv[i] + (1.0f - p.beta2) * gi * gi;
    const float m_hat = pm[i] / correction1, v_hat = pv[i] / correction2;
    w[i] -= p.lr * (m_hat / (std::sqrt(v_hat) + p.eps) + p.weight_decay * w[i]);
    if (out) out[i] = f32_to_bf16(w[i]);
  }
}

// The reference for the many-tensor step: each entry on its own, with its own decay.
void adamw_step_many(const std::vector<AdamWTensors>& tensors, const AdamWParams& p) {
  for (const AdamWTensors& t : tensors) {
    AdamWParams own = p;
    own.weight_decay = t.weight_decay;
    cpu::adamw_step(t.param, t.grad, t.m, t.v, own, t.copy);
  }
}

}  // namespace sy::cpu
