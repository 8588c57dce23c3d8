#include "trainer/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace sy {

double Schedule::lr(int64_t step) const {
  if (step < warmup_steps) return peak_lr * static_cast<double>(step + 1) / warmup_steps;
  if (decay == Decay::kConstant) return peak_lr;
  const int64_t span = std::max<int64_t>(1, total_steps - 1 - warmup_steps);
  const double progress = std::clamp(static_cast<double>(step - warmup_steps) / span, 0.0, 1.0);
  const double shape = decay == Decay::kCosine ? 0.5 * (1.0 + std::cos(std::numbers::pi * progress))
                                               : 1.0 - progress;
  const double min_lr = min_lr_ratio * peak_lr;
  return min_lr + (peak_lr - min_lr) * shape;
}

}  // namespace sy
