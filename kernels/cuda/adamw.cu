// AdamW on the GPU, elementwise over f32 param / grad / m / v (and the optional bf16 copy),
// one launch per parameter tensor: m, v updated from g, bias-corrected by 1 - beta^step (formed on
// the host in double, as the CPU reference does), then p -= lr (m_hat / (sqrt(v_hat) + eps) + wd
// p), the decay applied to the parameter before this step's update (decoupled).
#include <cmath>

#include "kernels/adamw.h"
#include "kernels/cuda/common.cuh"

namespace sy::cuda {
namespace {

__global__ void adamw_kernel(float* w, const float* g, float* m, float* v, __nv_bfloat16* copy,
                             int64_t n, float lr, float beta1, float beta2, float eps,
                             float weight_decay, float correction1, float correction2,
                             float grad_scale) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gi = g[i] * grad_scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float m_hat = mi / correction1, v_hat = vi / correction2;
    const float wi = w[i] - lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * w[i]);
    w[i] = wi;
    if (copy) copy[i] = __float2bfloat16_rn(wi);
  }
}

}  // namespace

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const AdamWParams& p, const Tensor& copy) {
  const int64_t n = param.numel();
  if (n == 0) return;
  use_device(param);
  const float correction1 = static_cast<float>(1.0 - std::pow(double{p.beta1}, p.step));
  const float correction2 = static_cast<float>(1.0 - std::pow(double{p.beta2}, p.step));
  adamw_kernel<<<grid_for(n), kThreads, 0, stream()>>>(
      ptr<float>(param), ptr<float>(grad), ptr<float>(m), ptr<float>(v),
      copy.defined() ? ptr<__nv_bfloat16>(copy) : nullptr, n, p.lr, p.beta1, p.beta2, p.eps,
      p.weight_decay, correction1, correction2, p.grad_scale);
  launch_check("adamw_kernel");
}

}  // namespace sy::cuda
