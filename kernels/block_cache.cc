#include "kernels/block_cache.h"

#include <bit>

namespace sy {

size_t allocation_size(size_t bytes) {
  constexpr size_t kSmall = size_t{1} << 20, kSmallStep = 512;
  if (bytes == 0) return 0;
  if (bytes <= kSmall) return (bytes + kSmallStep - 1) / kSmallStep * kSmallStep;
  // 16 sizes per power of two: step = 2^floor(log2(bytes)) / 16.
  const size_t step = std::bit_floor(bytes) / 16;
  return (bytes + step - 1) / step * step;
}

std::pair<void*, size_t> BlockCache::take(size_t bytes) {
  auto it = blocks_.lower_bound(bytes);
  if (it == blocks_.end() || it->first > bytes + bytes / 4) return {nullptr, 0};
  const std::pair<void*, size_t> block{it->second, it->first};
  cached_bytes_ -= it->first;
  blocks_.erase(it);
  return block;
}

void BlockCache::put(void* block, size_t block_bytes) {
  blocks_.emplace(block_bytes, block);
  cached_bytes_ += block_bytes;
}

std::vector<std::pair<void*, size_t>> BlockCache::drain() {
  std::vector<std::pair<void*, size_t>> out;
  out.reserve(blocks_.size());
  for (const auto& [bytes, block] : blocks_) out.emplace_back(block, bytes);
  blocks_.clear();
  cached_bytes_ = 0;
  return out;
}

}  // namespace sy
