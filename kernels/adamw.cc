// One AdamW step: argument checks and device dispatch; the clip scale on the host.
#include "kernels/adamw.h"

#include <cmath>
#include <limits>
#include <ostream>
#include <utility>

#include "kernels/dispatch.h"

namespace sy {
namespace {

// An argument's name in check messages: "adamw grad" for adamw_step, "adamw_step_many
// tensors[3].grad" for an entry of the list. Formatted only when a check fails.
struct ArgName {
  const char* name;
  int64_t entry;  // -1: adamw_step's own argument
};
std::ostream& operator<<(std::ostream& os, const ArgName& a) {
  if (a.entry < 0) return os << "adamw " << a.name;
  return os << "adamw_step_many tensors[" << a.entry << "]." << a.name;
}

// f32 param and grad, f32 or bf16 m and v (the same), an optional bf16 copy, all of one shape on
// one device.
void check_arguments(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                     const Tensor& copy, int64_t entry) {
  SY_CHECK(param.defined()) << ArgName{"param", entry} << " is undefined";
  SY_CHECK(param.dtype() == DType::kF32)
      << ArgName{"param", entry} << " is " << dtype_name(param.dtype()) << ", expected f32";
  auto check = [&](const Tensor& t, DType dtype, const char* name) {
    const ArgName arg{name, entry};
    SY_CHECK(t.defined()) << arg << " is undefined";
    SY_CHECK(t.shape() == param.shape()) << arg << " has shape " << shape_str(t.shape())
                                         << ", expected " << shape_str(param.shape());
    SY_CHECK(t.dtype() == dtype) << arg << " is " << dtype_name(t.dtype()) << ", expected "
                                 << dtype_name(dtype);
    SY_CHECK(t.device() == param.device())
        << arg << " is on " << t.device().str() << ", the parameter on " << param.device().str();
  };
  check(grad, DType::kF32, "grad");
  SY_CHECK(!m.defined() || m.dtype() == DType::kF32 || m.dtype() == DType::kBF16)
      << ArgName{"m", entry} << " is " << dtype_name(m.dtype()) << ", expected f32 or bf16";
  const DType moments = m.defined() ? m.dtype() : DType::kF32;
  check(m, moments, "m");
  check(v, moments, "v");
  if (copy.defined()) check(copy, DType::kBF16, "copy");
}

// A scale in device memory is for CUDA tensors, and replaces grad_scale rather than multiplying it.
void check_grad_scale(const AdamWParams& p, const Device& device, const char* what) {
  if (!p.grad_scale_device) return;
  SY_CHECK(device.is_cuda()) << what << ": grad_scale_device is set for tensors on " << device.str()
                             << "; it is read by the CUDA kernels only";
  SY_CHECK(p.grad_scale == 1.0f) << what << ": grad_scale is " << p.grad_scale
                                 << " and grad_scale_device is set; pass one or the other";
}

}  // namespace

float clip_scale(double norm, float clip) {
  if (!std::isfinite(norm)) return std::numeric_limits<float>::quiet_NaN();
  return clip > 0 && norm > clip ? static_cast<float>(clip / (norm + 1e-6)) : 1.0f;
}

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const AdamWParams& p, const Tensor& copy) {
  check_arguments(param, grad, m, v, copy, -1);
  SY_CHECK(p.step >= 1) << "adamw step " << p.step << " (steps count from 1)";
  check_grad_scale(p, param.device(), "adamw");
  if (param.device().is_cpu()) return cpu::adamw_step(param, grad, m, v, p, copy);
#ifdef SWITCHYARD_HAVE_CUDA
  if (param.device().is_cuda()) return cuda::adamw_step(param, grad, m, v, p, copy);
#endif
  no_kernel("adamw_step", param.device());
}

void adamw_step_many(const std::vector<AdamWTensors>& tensors, const AdamWParams& p) {
  SY_CHECK(p.step >= 1) << "adamw_step_many step " << p.step << " (steps count from 1)";
  SY_CHECK(p.weight_decay == 0.0f)
      << "adamw_step_many takes the weight decay per entry (AdamWTensors::weight_decay); "
         "AdamWParams::weight_decay is "
      << p.weight_decay << ", expected 0";
  for (size_t i = 0; i < tensors.size(); ++i) {
    const AdamWTensors& t = tensors[i];
    const auto entry = static_cast<int64_t>(i);
    check_arguments(t.param, t.grad, t.m, t.v, t.copy, entry);
    SY_CHECK(t.param.device() == tensors[0].param.device())
        << ArgName{"param", entry} << " is on " << t.param.device().str() << ", tensors[0] on "
        << tensors[0].param.device().str();
    // The GPU launch is compiled for one moment type.
    SY_CHECK(t.m.dtype() == tensors[0].m.dtype())
        << ArgName{"m", entry} << " is " << dtype_name(t.m.dtype()) << ", tensors[0].m "
        << dtype_name(tensors[0].m.dtype()) << "; one moment dtype per call";
  }
  if (tensors.empty()) return;
  const Device device = tensors[0].param.device();
  check_grad_scale(p, device, "adamw_step_many");
  if (device.is_cpu()) return cpu::adamw_step_many(tensors, p);
#ifdef SWITCHYARD_HAVE_CUDA
  if (device.is_cuda()) return cuda::adamw_step_many(tensors, p);
#endif
  no_kernel("adamw_step_many", device);
}

}  // namespace sy
