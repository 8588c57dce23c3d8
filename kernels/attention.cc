// Argument checks and device dispatch for causal grouped-query attention (see attention.h).
#include "kernels/attention.h"

#include <atomic>

#include "kernels/dispatch.h"

namespace sy {
namespace {

// Checks the shapes shared by forward and backward; q [B, Tq, H, hd], k/v [B, Tk, Hkv, hd].
void check_attention_args(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                          const Tensor& lse) {
  SY_CHECK(q.defined() && q.ndim() == 4)
      << "attention q must be [B, Tq, H, hd], got " << shape_str(q.shape());
  SY_CHECK(k.defined() && k.ndim() == 4)
      << "attention k must be [B, Tk, Hkv, hd], got " << shape_str(k.shape());
  const int64_t b = q.dim(0), tq = q.dim(1), h = q.dim(2), hd = q.dim(3);
  const int64_t tk = k.dim(1), hkv = k.dim(2);
  SY_CHECK(hd > 0) << "attention: head dim must be positive, got " << hd;
  SY_CHECK(hkv > 0 && h % hkv == 0)
      << "attention: " << h << " query heads are not a multiple of " << hkv << " KV heads";
  SY_CHECK(tq <= tk) << "attention: " << tq << " queries but only " << tk << " keys";
  check_shape(k, {b, tk, hkv, hd}, "attention k");
  check_shape(v, {b, tk, hkv, hd}, "attention v");
  check_shape(out, q.shape(), "attention out");
  check_shape(lse, {b, h, tq}, "attention lse");
  // f32 everywhere; bf16 too on CUDA (the CPU reference is f32 only).
  if (!q.device().is_cuda() || q.dtype() != DType::kBF16) {
    check_dtype(q, DType::kF32, "attention q");
  }
  check_dtype(k, q.dtype(), "attention k");
  check_dtype(v, q.dtype(), "attention v");
  check_dtype(out, q.dtype(), "attention out");
  check_dtype(lse, DType::kF32, "attention lse");
}

std::atomic<bool>& deterministic_flag() {
  static std::atomic<bool> deterministic{true};
  return deterministic;
}

}  // namespace

void set_attention_deterministic(bool deterministic) { deterministic_flag().store(deterministic); }
bool attention_deterministic() { return deterministic_flag().load(); }

void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                       const Tensor& v) {
  check_attention_args(q, k, v, out, lse);
  check_same_device({&out, &lse, &q, &k, &v}, "attention_forward");
  if (q.device().is_cpu()) return cpu::attention_forward(out, lse, q, k, v);
#ifdef SWITCHYARD_HAVE_CUDA
  if (q.device().is_cuda()) return cuda::attention_forward(out, lse, q, k, v);
#endif
  no_kernel("attention_forward", q.device());
}

void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse) {
  check_attention_args(q, k, v, out, lse);
  check_shape(dq, q.shape(), "attention dq");
  check_shape(dk, k.shape(), "attention dk");
  check_shape(dv, v.shape(), "attention dv");
  check_shape(dout, q.shape(), "attention dout");
  check_dtype(dq, q.dtype(), "attention dq");
  check_dtype(dk, q.dtype(), "attention dk");
  check_dtype(dv, q.dtype(), "attention dv");
  check_dtype(dout, q.dtype(), "attention dout");
  check_same_device({&dq, &dk, &dv, &dout, &q, &k, &v, &out, &lse}, "attention_backward");
  if (q.device().is_cpu()) return cpu::attention_backward(dq, dk, dv, dout, q, k, v, out, lse);
#ifdef SWITCHYARD_HAVE_CUDA
  if (q.device().is_cuda()) {
    return cuda::attention_backward(dq, dk, dv, dout, q, k, v, out, lse);
  }
#endif
  no_kernel("attention_backward", q.device());
}

}  // namespace sy
