#pragma once
// Freed GPU blocks kept for reuse, in front of CUDA's stream-ordered pool.
//
// Why: a training step allocates and frees the same sizes step after step (activations,
// gradients, scratch), and cudaMallocAsync costs the host 2-12 us per call even when its
// pool has the memory. A timeline of the benchmark step showed one call per MoE layer
// taking 0.3-0.7 ms (the pool mapping memory again for a 369 MB block), right where the
// GPU waits for the host to issue the expert GEMMs. Taking a block back from this cache
// costs a map lookup.
//
// The cache knows nothing about CUDA: it holds (pointer, block size) pairs. Sizes are
// rounded up (allocation_size) to 512 bytes below 1 MiB and to 1/16 of their power of two
// above, so a size that varies a little from step to step (a dropless MoE layer's rows
// under expert parallelism) still lands on few block sizes, wasting at most ~6%. take()
// serves the smallest cached block of at least the asked size and at most 5/4 of it.
//
// Ordering (the caller's contract, the same as cudaMallocAsync / cudaFreeAsync on one
// stream): a block is put back when the host drops the last tensor using it, after the
// work using it has been queued; the next taker's work is queued later on the same stream.
// So a StreamFanout piece (kernels/streams.h) must not make and drop tensors: a block dropped
// on one side stream could be taken by another while the first still runs (it was so with
// the pool too; the pieces, per-expert GEMMs, allocate nothing).
// Not thread-safe by itself: tensor.cc holds one per device behind a mutex.
#include <cstddef>
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

namespace sy {

// The block size an allocation of `bytes` takes (0 stays 0).
size_t allocation_size(size_t bytes);

class BlockCache {
 public:
  // A cached block for `bytes` (already an allocation_size) and its size, or {nullptr, 0}.
  std::pair<void*, size_t> take(size_t bytes);
  // Keeps the block (of block_bytes, as take() or the allocation gave it) for reuse.
  void put(void* block, size_t block_bytes);
  // Empties the cache, returning every block (to hand back to the pool, e.g. when an
  // allocation fails for memory).
  std::vector<std::pair<void*, size_t>> drain();
  size_t cached_bytes() const { return cached_bytes_; }
  size_t cached_blocks() const { return blocks_.size(); }

 private:
  std::multimap<size_t, void*> blocks_;  // by size
  size_t cached_bytes_ = 0;
};

}  // namespace sy
