#pragma once
// Argument checks shared by the per-token RL math (advantages, policy and value losses):
// a [B, T] f32 CPU mask of 0s and 1s, and f32 CPU tensors shaped like it.
#include "kernels/tensor.h"

namespace sy::rl {
void check_mask(const Tensor& mask);
void check_per_token(const Tensor& t, const Tensor& mask, const char* what);
}  // namespace sy::rl
