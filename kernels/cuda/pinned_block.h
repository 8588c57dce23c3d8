#pragma once
// Pinned host memory for a copy that must not wait for the GPU's queue to drain (CUDA builds
// only; plain C++). The event, recorded after the copy that last used the block, says when the
// block may be rewritten: prepare() waits for it (long done, as a rule) before handing the
// memory out again. Used by the staged uploads and HostReadback (kernels/tensor.cc) and by
// AdamW's chunk table (kernels/cuda/adamw.cu).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>
#include <cstddef>

#include "kernels/cuda/stream_state.h"

namespace sy::cuda {

struct PinnedBlock {
  void* host = nullptr;
  size_t capacity = 0;
  cudaEvent_t done = nullptr;  // on the device the block serves
  bool recorded = false;

  PinnedBlock() = default;
  PinnedBlock(const PinnedBlock&) = delete;
  PinnedBlock& operator=(const PinnedBlock&) = delete;
  ~PinnedBlock() {
    // At thread exit; the runtime may already be going away, so nothing is checked.
    if (recorded) cudaEventSynchronize(done);
    if (done) cudaEventDestroy(done);
    if (host) cudaFreeHost(host);
  }
  // Waits for the block's last copy, then makes room for `bytes`; the block's device is
  // current. Returns the memory, free to write.
  void* prepare(size_t bytes) {
    if (recorded) SY_CUDA_CHECK(cudaEventSynchronize(done));
    recorded = false;
    if (done == nullptr) SY_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    if (capacity < bytes) {
      if (host) SY_CUDA_CHECK(cudaFreeHost(host));
      host = nullptr;
      capacity = std::bit_ceil(std::max(bytes, size_t{4096}));
      SY_CUDA_CHECK(cudaMallocHost(&host, capacity));
    }
    return host;
  }
  // After queueing the copy that uses the block on `stream`.
  void record(cudaStream_t stream) {
    SY_CUDA_CHECK(cudaEventRecord(done, stream));
    recorded = true;
  }
};

}  // namespace sy::cuda
