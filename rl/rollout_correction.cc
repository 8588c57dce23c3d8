#include "rl/rollout_correction.h"

#include <cmath>

#include "kernels/check.h"
#include "rl/token_checks.h"

namespace sy::rl {

TisSums tis_weights(const Tensor& weights, const Tensor& old_logp, const Tensor& rollout_logp,
                    const Tensor& mask, double cap, TisLevel level) {
  SY_CHECK(cap >= 1 && std::isfinite(cap)) << "tis cap must be finite and >= 1, got " << cap;
  check_mask(mask);
  check_per_token(weights, mask, "weights");
  check_per_token(old_logp, mask, "old_logp");
  check_per_token(rollout_logp, mask, "rollout_logp");
  const int64_t rows = mask.dim(0), cols = mask.dim(1);
  const float* m = mask.data<float>();
  const float* old = old_logp.data<float>();
  const float* roll = rollout_logp.data<float>();
  float* w = weights.data<float>();
  TisSums sums;
  // One unit's weight from the log of its ratio; the sums see it once.
  auto weigh = [&](double log_ratio) {
    const double ratio = std::exp(log_ratio);  // +inf past the range of double: truncated
    sums.units += 1;
    if (std::isnan(ratio)) {
      sums.non_finite += 1;
      return ratio;
    }
    const bool truncated = ratio > cap;
    sums.truncated += truncated;
    const double weight = truncated ? cap : ratio;
    sums.weight += weight;
    return weight;
  };
  for (int64_t b = 0; b < rows; ++b) {
    const int64_t row = b * cols;
    if (level == TisLevel::kToken) {
      for (int64_t t = 0; t < cols; ++t) {
        const int64_t i = row + t;
        w[i] = m[i] == 0 ? 0.0f : static_cast<float>(weigh(static_cast<double>(old[i]) - roll[i]));
      }
      continue;
    }
    double log_ratio = 0, n = 0;
    for (int64_t t = 0; t < cols; ++t) {
      if (m[row + t] == 0) continue;
      log_ratio += static_cast<double>(old[row + t]) - roll[row + t];
      n += 1;
    }
    const float weight = n > 0 ? static_cast<float>(weigh(log_ratio / n)) : 0.0f;
    for (int64_t t = 0; t < cols; ++t) w[row + t] = m[row + t] == 0 ? 0.0f : weight;
  }
  return sums;
}

}  // namespace sy::rl
