#pragma once
// Gradient synchronisation after the backward of a step. Every rank trains on its own slice
// of the global batch and its losses are already scaled by global token counts, so the
// gradients are SUMMED: dense gradients over the world, expert gradients over the
// expert-data-parallel group (the ranks holding the same experts). Gradients travel in
// buckets of at most bucket_elements floats, packed in registration order, so a model with
// many small tensors makes few collective calls.
#include <cstdint>
#include <vector>

#include "kernels/tensor.h"
#include "parallel/communicator.h"

namespace sy {

class GradientSync {
 public:
  // dense_grads are summed over `world`, expert_grads over `edp` (f32, same device).
  GradientSync(std::vector<Tensor> dense_grads, std::vector<Tensor> expert_grads,
               Communicator& world, Communicator& edp, int64_t bucket_elements = int64_t{1} << 22);
  void sync();

 private:
  void sync_group(const std::vector<Tensor>& grads, Communicator& comm);
  std::vector<Tensor> dense_, expert_;
  Communicator& world_;
  Communicator& edp_;
  int64_t bucket_elements_;
};

}  // namespace sy
