#pragma once
// AdamW over a ParamStore with fp32 or bf16 moments (the update in fp32 either way), global-norm
// gradient clipping, and decoupled weight decay on the parameters marked for it. Non-trainable
// entries (routing bias) are skipped. Its state (moments and step count) round-trips through
// checkpoints exactly.
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "configs/switchyard.pb.h"
#include "kernels/adamw.h"
#include "models/param_store.h"
#include "parallel/communicator.h"

namespace sy {

struct OptimizerSettings {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;
  float grad_clip = 1.0f;  // 0: no clipping
  // How m and v are stored: kF32, or kBF16 (rounded to nearest even after each update: 8 bytes
  // per parameter less memory and traffic; needs betas <= 0.99, see OptimizerConfig).
  DType moment_dtype = DType::kF32;
};

// OptimizerConfig's moment_dtype as the moments' tensor dtype.
DType moment_dtype_of(switchyard::OptimizerConfig::MomentDtype moments);

// The ranks an optimizer step involves. Null members mean one process.
//   ep:    expert gradients' squared norms are summed over it (each EP rank holds different
//          experts), so the norm is that of the whole model;
//   world / edp: with zero1, the AdamW state and update of dense parameters are sharded over
//          the world, those of expert parameters over the expert-data-parallel group; each
//          parameter belongs to one rank of its group (balanced by size, in registration
//          order), which updates it and broadcasts the new values.
struct OptimizerParallel {
  Communicator* world = nullptr;
  Communicator* ep = nullptr;
  Communicator* edp = nullptr;
  bool zero1 = false;
};

class AdamW {
 public:
  AdamW(ParamStore& store, const OptimizerSettings& settings,
        const OptimizerParallel& parallel = {});

  // Global L2 norm of all trainable gradients, over every rank's parameters (collective when
  // there is an ep group).
  double grad_norm() const;
  // Clips (when grad_clip > 0 and the norm exceeds it), then takes one step at `lr`.
  // Returns the gradient norm before clipping. A norm that is not finite (NaN or inf: the run
  // diverged) updates nothing: parameters, moments and steps_taken() stay as they were, and
  // the caller decides what to do about the skipped step. On a GPU with one EP rank (or none), the clip
  // scale is computed there and the update queued before the host waits for the norm; the
  // parameters, moments and norm are the same bits as the host's way.
  double step(float lr);
  int64_t steps_taken() const { return steps_; }

  // "adam_m.<param>" and "adam_v.<param>" tensors of the parameters this rank updates, in the
  // moment dtype, for checkpoints (with zero1, only its shard).
  std::vector<std::pair<std::string, Tensor>> state() const;
  // Restores what state() wrote; names and shapes must match this rank's parameters. f32 and
  // bf16 tensors are both accepted and converted to this optimizer's moment dtype, so a run can
  // resume with the other one.
  absl::Status load_state(const std::vector<std::pair<std::string, Tensor>>& tensors,
                          int64_t steps);

 private:
  struct Slot {
    Param* param;
    Communicator* group;  // where the parameter is replicated (null: this process only)
    int owner;            // rank in `group` that updates it
    bool owned;
    Tensor m, v;  // allocated only when owned
  };
  // The gradients in the order the norm adds them: the dense slots', then the expert slots'.
  std::vector<Tensor> grads_in_norm_order() const;
  // The norm from each gradient's sum of squares, in that order (collective when there is an
  // ep group).
  double norm_from_squares(std::span<const double> squares) const;

  ParamStore& store_;
  OptimizerSettings settings_;
  OptimizerParallel parallel_;
  std::vector<Slot> slots_;
  std::vector<size_t> norm_order_;  // indices into slots_: the dense ones, then the expert ones
  size_t num_dense_ = 0;
  // When the GPU computes the clip scale: 8-byte slots there for each gradient's sum of
  // squares (in the norm's order), then the scale. Undefined: the host computes it.
  Tensor gpu_squares_and_scale_;
  int64_t steps_ = 0;
};

}  // namespace sy
