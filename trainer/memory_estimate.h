#pragma once
// What a run will hold per rank, estimated from the config before anything is allocated, so
// that a model too large for the machine is refused with "needs X GiB, Y GiB available"
// instead of ending in an allocation failure halfway through building it.
//
// The estimate counts what is sure to be there (every parameter's fp32 master weights and, for
// training, its fp32 gradient and AdamW's two moments; the bf16 compute copy of each matrix)
// plus a rough figure for one micro-batch's activations kept for the backward (per block: the
// attention's inputs, q/k/v and output, and the FFN's or experts' hidden states; the output
// head's logits chunk). It leaves out allocator slack, workspaces and the BLAS library's own
// buffers, so it errs low: a refusal is certain to be right, a pass is not a promise.
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "kernels/tensor.h"
#include "models/model_spec.h"

namespace sy {

struct MemoryPlan {
  // What the run does with the model: training holds gradients and optimizer state,
  // inference (generate, score, convert) only the weights.
  bool training = true;
  DType compute = DType::kF32;   // activations and the compute copy of matrices
  DType moments = DType::kF32;   // AdamW's m and v
  int64_t expert_parallel = 1;   // ranks that split the experts
  int64_t optimizer_shards = 1;  // ZeRO-1: data-parallel ranks that split the moments
  int64_t micro_batch = 0;       // sequences per forward/backward (0: no activations)
  int64_t seq_len = 0;           // tokens per sequence
};

struct MemoryEstimate {
  int64_t parameters = 0;        // held by this rank (its share of the experts)
  int64_t weight_bytes = 0;      // fp32 master weights and the compute copy
  int64_t gradient_bytes = 0;    // fp32
  int64_t optimizer_bytes = 0;   // AdamW moments (this rank's shard)
  int64_t activation_bytes = 0;  // one micro-batch, rough
  int64_t kv_cache_bytes = 0;    // a rollout engine's KV pool (RL), else 0
  int64_t total() const {
    return weight_bytes + gradient_bytes + optimizer_bytes + activation_bytes + kv_cache_bytes;
  }
  // "weights 1.0, gradients 0.5, AdamW moments 1.0, activations 0.7 GiB; 2.7e+08 parameters"
  // (with "KV cache 0.2" before "GiB" where there is one).
  std::string breakdown() const;
};

// The per-rank estimate, computed in 64 bits (and doubles where a product could pass 2^63).
MemoryEstimate estimate_memory(const ModelSpec& spec, const MemoryPlan& plan);

// Bytes the device could give this process now: for the CPU, /proc/meminfo's MemAvailable
// (-1 when it cannot be read); for a GPU, what the driver reports free.
int64_t available_memory_bytes(Device device);

// OK when `estimate` fits in `available` bytes (a negative `available` means unknown: OK);
// else ResourceExhausted: "<what> needs X GiB per rank (...), Y GiB available on <device>;
// <fix>", where an empty `fix` names the model's sizes and train.micro_batch.
absl::Status check_memory_fits(const MemoryEstimate& estimate, int64_t available, Device device,
                               const std::string& what, const std::string& fix = "");

// estimate_memory + available_memory_bytes + check_memory_fits.
absl::Status check_memory_for(const ModelSpec& spec, const MemoryPlan& plan, Device device,
                              const std::string& what);

}  // namespace sy
