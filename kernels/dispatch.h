#pragma once
// Each op is declared once (kernels/<op>.h, namespace sy) and dispatches on its tensors'
// device to sy::cpu (kernels/cpu/<op>.cc: plain fp32, the reference) or sy::cuda
// (kernels/cuda/<op>.cu). An op with no kernel for a device says so and aborts.
#include "kernels/tensor.h"

namespace sy {
[[noreturn]] void no_kernel(const char* op, Device device);
// Activations are f32 on every device and may be bf16 on CUDA (the CPU reference is f32 only).
void check_float(const Tensor& t, const char* what);
}  // namespace sy
