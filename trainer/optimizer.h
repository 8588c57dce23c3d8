#pragma once
// AdamW over a ParamStore with fp32 moments, global-norm gradient clipping, and decoupled
// weight decay on the parameters marked for it. Non-trainable entries (routing bias) are
// skipped. Its state (moments and step count) round-trips through checkpoints exactly.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "kernels/adamw.h"
#include "models/param_store.h"

namespace sy {

struct OptimizerSettings {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;
  float grad_clip = 1.0f;  // 0: no clipping
};

class AdamW {
 public:
  AdamW(ParamStore& store, const OptimizerSettings& settings);

  // Global L2 norm of all trainable gradients (over this process's parameters).
  double grad_norm() const;
  // Clips (when grad_clip > 0 and the norm exceeds it), then takes one step at `lr`.
  // Returns the gradient norm before clipping.
  double step(float lr);
  int64_t steps_taken() const { return steps_; }

  // "adam_m.<param>" and "adam_v.<param>" tensors, plus the step count, for checkpoints.
  std::vector<std::pair<std::string, Tensor>> state() const;
  // Restores what state() wrote; names and shapes must match this store's parameters.
  absl::Status load_state(const std::vector<std::pair<std::string, Tensor>>& tensors,
                          int64_t steps);

 private:
  struct Slot {
    Param* param;
    Tensor m, v;
  };
  ParamStore& store_;
  OptimizerSettings settings_;
  std::vector<Slot> slots_;
  int64_t steps_ = 0;
};

}  // namespace sy
