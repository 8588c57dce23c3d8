#pragma once
// ParamStore: every trainable tensor of a model, by HF-style name ("layers.3.attn.wq").
// Each parameter has fp32 master weights, a gradient of the same shape, a sync group (which
// ranks average its gradient: all of them for dense parameters, the expert-data-parallel
// group for expert parameters) and whether weight decay applies. Optimizers, gradient sync
// and checkpoints see only the store, never the modules.
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "kernels/hash.h"  // hash_seed, used with parameter names
#include "kernels/tensor.h"

namespace sy {

enum class SyncGroup { kDense, kExpert };

enum class Init {
  kNormal,  // N(0, std)
  kOnes,    // norm gains
  kZeros,
};

struct Param {
  std::string name;
  Tensor value;  // fp32 master weights
  // fp32, accumulates over micro-batches. zero_grad() does not clear it: it marks it
  // unwritten, and the step's first writer overwrites instead of adding (take_grad_beta,
  // grad_to_add below); finish_grads() zeroes what no writer reached.
  Tensor grad;
  bool grad_unwritten = false;
  // With a bf16 compute dtype: the bf16 copy of a matrix (ndim >= 2) that GEMMs read,
  // refreshed from `value` by ParamStore::refresh_compute(). Undefined otherwise.
  Tensor compute;
  // The tensor GEMMs read: the compute copy when there is one, else the master weights.
  const Tensor& w() const { return compute.defined() ? compute : value; }
  SyncGroup group = SyncGroup::kDense;
  bool decay = true;
  // False for state that travels with the weights but is not learned by gradient descent
  // (the auxiliary-loss-free routing bias): optimizers skip it, checkpoints keep it.
  bool trainable = true;
  Init init = Init::kNormal;
  float init_std = 0.0f;
  // For stacked expert tensors [E_local, ...]: the global index of the first local expert,
  // so each expert's initial values depend on its global index alone, not on the layout.
  int64_t expert_offset = 0;
};

class ParamStore {
 public:
  // compute: the dtype activations and GEMM operands use. bf16 (CUDA only) keeps a bf16
  // copy of every matrix next to its fp32 master weights.
  explicit ParamStore(Device device = Device::cpu(), DType compute = DType::kF32);
  ParamStore(const ParamStore&) = delete;
  ParamStore& operator=(const ParamStore&) = delete;

  // Registers a parameter; names must be unique. The returned reference stays valid.
  Param& add(std::string name, Shape shape, SyncGroup group, Init init, float init_std, bool decay);
  Param* find(const std::string& name);
  const Param* find(const std::string& name) const;
  std::vector<Param*> params();
  std::vector<const Param*> params() const;

  // Deterministic init from the seed: each parameter (and each expert slice) draws from its
  // own stream, derived from (seed, name, expert index), so values do not depend on the order
  // of registration or on how experts are spread over ranks.
  void initialize(uint64_t seed);
  // Starts a step's gradients: marks every gradient unwritten (no memory is touched).
  void zero_grad();
  // Zeroes the gradients still unwritten since zero_grad() (parameters this backward did not
  // reach), so that every gradient is complete. The model's backward entry points call it.
  void finish_grads();
  int64_t num_elements() const;
  Device device() const { return device_; }
  DType compute_dtype() const { return compute_; }

  // Whoever writes master weights (initialize, the optimizer, checkpoint loading, weight
  // copies) calls values_changed(); refresh_compute() then re-derives the compute copies
  // once, on the model's next forward. Both are no-ops without compute copies.
  void values_changed() { ++version_; }
  void refresh_compute();
  // For a writer that also wrote every compute copy from the new values (the optimizer's
  // fused update): marks the copies current.
  void compute_copies_written() { compute_version_ = version_; }

 private:
  Device device_;
  DType compute_;
  uint64_t version_ = 1, compute_version_ = 0;
  std::deque<Param> params_;  // deque: references stay valid as parameters are added
};

// Gradient writers. A GEMM writing p's weight gradient passes take_grad_beta(p) as its
// beta: 0 (overwrite) for the first contribution since zero_grad(), 1 (add) after. That
// saves zeroing every gradient (4.8 GB a step for a 1.2B-parameter model) and each
// first weight-gradient GEMM reading its output back. Writers that can only add (norm gains,
// the embedding's scatter) take grad_to_add(p), zeroed first if still unwritten. Both mark
// p written.
float take_grad_beta(Param& p);
const Tensor& grad_to_add(Param& p);

}  // namespace sy
