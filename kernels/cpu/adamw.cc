// AdamW on CPU, elementwise: moments m, v updated from g, bias-corrected by 1 - beta^step,
// then p -= lr (m_hat / (sqrt(v_hat) + eps) + weight_decay p), the decay applied to the
// parameter before this step's update (decoupled, as in Loshchilov & Hutter). bf16 moments are
// widened to f32 on reading and rounded to nearest even on storing; the update in between is
// the f32 one, from the new moments before rounding.
#include "kernels/adamw.h"

#include <cmath>
#include <type_traits>

namespace sy::cpu {
namespace {

float widen(float x) { return x; }
float widen(bf16 x) { return bf16_to_f32(x); }
template <typename M>
M stored(float x) {
  if constexpr (std::is_same_v<M, bf16>) {
    return f32_to_bf16(x);
  } else {
    return x;
  }
}

template <typename M>
void adamw_elements(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                    const AdamWParams& p, const Tensor& copy) {
  if (!std::isfinite(p.grad_scale)) return;  // a diverged step: nothing changes
  const float correction1 = static_cast<float>(1.0 - std::pow(double{p.beta1}, p.step));
  const float correction2 = static_cast<float>(1.0 - std::pow(double{p.beta2}, p.step));
  const int64_t n = param.numel();
  float* w = param.data<float>();
  const float* g = grad.data<float>();
  M* pm = m.data<M>();
  M* pv = v.data<M>();
  bf16* out = copy.defined() ? copy.data<bf16>() : nullptr;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * p.grad_scale;
    const float mi = p.beta1 * widen(pm[i]) + (1.0f - p.beta1) * gi;
    const float vi = p.beta2 * widen(pv[i]) + (1.0f - p.beta2) * gi * gi;
    pm[i] = stored<M>(mi);
    pv[i] = stored<M>(vi);
    const float m_hat = mi / correction1, v_hat = vi / correction2;
    w[i] -= p.lr * (m_hat / (std::sqrt(v_hat) + p.eps) + p.weight_decay * w[i]);
    if (out) out[i] = f32_to_bf16(w[i]);
  }
}

}  // namespace

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const AdamWParams& p, const Tensor& copy) {
  if (m.dtype() == DType::kBF16) return adamw_elements<bf16>(param, grad, m, v, p, copy);
  adamw_elements<float>(param, grad, m, v, p, copy);
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
