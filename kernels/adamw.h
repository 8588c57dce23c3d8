#pragma once
// One AdamW step (decoupled weight decay, bias-corrected moments), computed in f32, same shape:
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   m_hat = m / (1 - beta1^step);  v_hat = v / (1 - beta2^step)
//   p -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)
// step counts from 1. param and grad are f32; m and v are both f32 or both bf16 (DeepSeek-V3's
// storage: read widened to f32, the update as above from the new f32 m and v, which are then
// stored rounded to nearest even). Which parameters decay is the optimizer's choice (pass 0 to
// skip). g is grad * grad_scale (gradient clipping folded into the update; grad is not written),
// the scale a host number or, on CUDA, a float in device memory that earlier work on the stream
// writes (grad_scale_device: the optimizer computes the clip scale there and queues the update
// without waiting for the gradient norm).
// With `copy` (bf16, same shape) the updated parameter is also written there, rounded: the
// compute copy a bf16 model reads, refreshed in the same pass over memory.
#include <cstdint>
#include <vector>

#include "kernels/tensor.h"

namespace sy {

struct AdamWParams {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  int64_t step = 1;
  float grad_scale = 1.0f;
  // CUDA only: when set, the scale is read from here when the kernel runs, and grad_scale
  // must be left at 1.
  const float* grad_scale_device = nullptr;
};

// Gradient clipping's scale, for AdamWParams::grad_scale: clip / (norm + 1e-6) when clip > 0 and
// the gradients' global L2 norm exceeds it, else 1. In double, rounded once to float. A norm
// that is not finite gives NaN, and a NaN or infinite scale makes the step a no-op (param, m, v
// and copy left as they were), so a diverged step queued on the GPU before the host sees its
// norm changes nothing.
float clip_scale(double norm, float clip);

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const AdamWParams& p, const Tensor& copy = Tensor());

// The same step over many parameters at once (a whole model: one kernel launch on the GPU
// instead of one per tensor), each entry exactly as adamw_step would update it alone.
// Entries share p's lr, betas, eps, step and grad_scale; the weight decay is per entry (the
// optimizer decays matrices, not norms or biases), so p.weight_decay must be 0: a value there
// would be ambiguous. Every entry is checked as adamw_step checks its arguments (messages name
// the entry: "adamw_step_many tensors[3].grad ..."), all entries on one device with one moment
// dtype. Entries must not overlap in memory (on the GPU they are updated concurrently).
struct AdamWTensors {
  Tensor param, grad, m, v;  // m, v: f32 or bf16
  Tensor copy;  // optional bf16 compute copy
  float weight_decay = 0.0f;
};
void adamw_step_many(const std::vector<AdamWTensors>& tensors, const AdamWParams& p);

namespace cpu {
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const AdamWParams& p, const Tensor& copy);
void adamw_step_many(const std::vector<AdamWTensors>& tensors, const AdamWParams& p);
}  // namespace cpu
namespace cuda {
// kernels/cuda/adamw.cu; defined in CUDA builds only. adamw_step: one launch for the tensor;
// adamw_step_many: one upload of a descriptor table and one launch for all of them.
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const AdamWParams& p, const Tensor& copy);
void adamw_step_many(const std::vector<AdamWTensors>& tensors, const AdamWParams& p);
// clip_scale on the GPU, for AdamWParams::grad_scale_device: from squares (device memory, n
// doubles: each gradient tensor's sum of squares), norm = sqrt(a + b) with a the sum of
// squares[0, split) and b that of squares[split, n), each added in index order (the
// optimizer's dense and expert parts, summed as its host code sums them), then *scale (device
// memory) = clip_scale(norm, clip), the same bits as on the host. One small launch on stream(),
// on the current GPU (the squares' and the scale's).
void clip_scale_from_squares(const double* squares, int64_t n, int64_t split, float clip,
                             float* scale);
}  // namespace cuda
}  // namespace sy
