#pragma once
// Learning-rate schedule: linear warmup from 0 to the peak over warmup_steps, then decay from
// the peak to min_lr_ratio * peak at the last step (cosine or linear), or constant.
// Steps count from 0; lr(0) of a run with warmup is peak / warmup_steps, never 0.
#include <cstdint>

namespace sy {

enum class Decay { kCosine, kLinear, kConstant };

struct Schedule {
  double peak_lr = 3e-4;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  Decay decay = Decay::kCosine;
  double min_lr_ratio = 0.1;

  double lr(int64_t step) const;
};

}  // namespace sy
