#pragma once
// The rollout engine's routing recorder (routing replay, R3): the experts each token of a
// live sequence went to, per MoE layer of the trunk, kept beside the KV pool in a buffer
// allocated once, i32 [slots, max_len, layers, k]. Each MoE layer of an engine forward hands
// its top-k to record() (Transformer::set_routing_sink), which stores the rows' new positions
// where the forward's PoolStep says their keys go (kernels/routing_replay.h: routes_append),
// on the device, so a decode step stays free of host copies and waits. When a row finishes,
// the engine reads its slot's positions back (read()), before the slot is reused.
//
// Position p of a sequence holds the experts of its p-th token as an input: the prompt's
// positions from the prefill, then each sampled token's from the decode step that read it.
// The last sampled token is never an input, so a completion of G tokens after a prompt of P
// has routes for P + G - 1 positions: those of the training sequence's inputs.
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "kernels/tensor.h"
#include "models/layers.h"
#include "models/rollout/kv_pool.h"
#include "models/transformer.h"

namespace sy {

class RoutingRecorder : public RoutingSink {
 public:
  // Bytes of the buffer for `slots` rows of `max_len` positions of a model of `spec` (0 for a
  // dense one).
  static int64_t bytes(const ModelSpec& spec, int64_t slots, int64_t max_len);
  // For the engine's pool shape, reading the rows' slots and positions from `step` at each
  // record(); on the model's device. The model must have MoE layers in its trunk.
  RoutingRecorder(const Transformer& model, int64_t slots, int64_t max_len, const PoolStep& step);

  void record(int layer, const Tensor& indices) override;

  // The routes of the first `positions` positions of each (slot, positions) pair, in order,
  // each [positions, layers, k] row-major on the host. One wait for all of them.
  std::vector<std::vector<int32_t>> read(const std::vector<std::pair<int64_t, int64_t>>& rows);

  int layers() const { return static_cast<int>(routes_.dim(2)); }
  int top_k() const { return static_cast<int>(routes_.dim(3)); }

 private:
  const PoolStep& step_;
  Tensor routes_;  // i32 [slots, max_len, layers, k]
};

}  // namespace sy
