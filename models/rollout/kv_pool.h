#pragma once
// The rollout engine's KV cache: for every attention layer, keys and values
// [slots, max_len, Hkv, hd] in the model's compute dtype, allocated once for the engine's
// capacity (one live sequence per slot, at most max_len cached positions each). Nothing is
// allocated or copied per token: a forward writes its new keys into their slots
// (kv_cache_append) and reads each row's slot (decode_attention), through the KvAttention of
// its layer (PoolAttention below).
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"
#include "models/layers.h"
#include "models/model_spec.h"

namespace sy {

struct KvPoolShape {
  int64_t layers = 0, slots = 0, max_len = 0, kv_heads = 0, head_dim = 0;
  // Bytes of k and v over every layer.
  int64_t bytes(DType dtype) const {
    return 2 * layers * slots * max_len * kv_heads * head_dim * int64_t(dtype_size(dtype));
  }
};

class KvPool {
 public:
  // Allocates the pool on `device`. On a GPU, the forwards' activations must fit beside it:
  // `workspace_bytes` plus `row_workspace_bytes` per slot (a decode step's rows); if they do
  // not fit in the free memory, an error that names the largest slot count that would.
  static absl::StatusOr<std::unique_ptr<KvPool>> create(const KvPoolShape& shape, DType dtype,
                                                        Device device, int64_t workspace_bytes,
                                                        int64_t row_workspace_bytes);

  const KvPoolShape& shape() const { return shape_; }
  const Tensor& k(int layer) const { return k_[layer]; }
  const Tensor& v(int layer) const { return v_[layer]; }

 private:
  KvPool(const KvPoolShape& shape, DType dtype, Device device);
  KvPoolShape shape_;
  std::vector<Tensor> k_, v_;
};

// What one forward of the engine tells every layer's PoolAttention: the rows' slots and
// where their new positions go. All i32 [B] on the pool's device.
struct PoolStep {
  enum class Mode {
    // Prompts right-padded to one length T, from position 0: causal attention over the new
    // positions alone (padding sits after each row's real positions, so no real query sees
    // it), then the first count[r] keys of each row stored at positions 0 .. count[r] - 1.
    kPrefill,
    // One new position per row at start[r] (its keys stored when count[r] is 1), its query
    // reading the first attend[r] keys of its slot.
    kDecode,
  };
  Mode mode = Mode::kDecode;
  Tensor slot, start, count, attend;
};

// The KvAttention of one layer of the pool, for the step the engine last described in `step`.
class PoolAttention : public KvAttention {
 public:
  PoolAttention(const KvPool& pool, int layer, const PoolStep& step)
      : pool_(pool), layer_(layer), step_(step) {}
  Tensor attend(const Tensor& q, const Tensor& k, const Tensor& v) override;

 private:
  const KvPool& pool_;
  int layer_;
  const PoolStep& step_;
};

}  // namespace sy
