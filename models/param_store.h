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
  Tensor grad;   // fp32, accumulates over micro-batches; zeroed by zero_grad()
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
  void zero_grad();
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

// A 64-bit mix of a seed and a string (FNV-1a, then splitmix64): stable across platforms.
uint64_t hash_seed(uint64_t seed, const std::string& key, uint64_t index = 0);

}  // namespace sy
