#pragma once
// CUDA-only helpers (this header is usable only when SWITCHYARD_HAVE_CUDA is defined).
#include <cstdint>
#include <string>

#include "kernels/tensor.h"

namespace sy::cuda {
// "cuda:0 NVIDIA H200 sm_90 139 GiB": for the banner line each rank prints.
std::string device_description(int index);
// Bytes the driver reports free on the GPU (outside what our allocator already holds).
int64_t free_memory_bytes(int index);
// out (bf16) = round-to-nearest-even(in (f32)), on the GPU's per-thread stream.
void cast_f32_to_bf16(const Tensor& out, const Tensor& in);
}  // namespace sy::cuda
