// kernels/block_cache: the size classes of GPU blocks and the cache of freed ones (pure host
// logic; the pointers here are never dereferenced).
#include "kernels/block_cache.h"

#include <algorithm>
#include <cstdint>
#include <random>

#include "gtest/gtest.h"

namespace sy {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

void* fake(uintptr_t address) { return reinterpret_cast<void*>(address); }

TEST(AllocationSize, RoundsSmallSizesTo512Bytes) {
  EXPECT_EQ(allocation_size(0), 0u);
  EXPECT_EQ(allocation_size(1), 512u);
  EXPECT_EQ(allocation_size(512), 512u);
  EXPECT_EQ(allocation_size(513), 1024u);
  EXPECT_EQ(allocation_size(kMiB), kMiB);
}

TEST(AllocationSize, RoundsLargeSizesToASixteenthOfTheirPowerOfTwo) {
  EXPECT_EQ(allocation_size(kMiB + 1), kMiB + kMiB / 16);
  EXPECT_EQ(allocation_size(3 * kMiB), 3 * kMiB);
  EXPECT_EQ(allocation_size(3 * kMiB + 1), 3 * kMiB + 2 * kMiB / 16);
  // The MoE layer's h for 32,768 rows of 2 x 2816 bf16: 369,098,752 bytes = 22 steps of
  // 2^28 / 16; one byte more takes the 23rd.
  EXPECT_EQ(allocation_size(369098752), 369098752u);
  EXPECT_EQ(allocation_size(369098753), 23u * (size_t{1} << 24));
}

TEST(AllocationSize, IsAtLeastTheSizeWastesLittleAndNeverDecreases) {
  std::mt19937_64 rng(7);
  size_t last_in = 0, last_out = 0;
  std::uniform_int_distribution<size_t> step(1, 3 * kMiB);
  for (int i = 0; i < 2000; ++i) {
    const size_t bytes = last_in + step(rng);
    const size_t out = allocation_size(bytes);
    ASSERT_GE(out, bytes);
    ASSERT_LE(out - bytes, std::max<size_t>(511, bytes / 16)) << bytes;
    ASSERT_GE(out, last_out) << bytes;
    EXPECT_EQ(allocation_size(out), out) << "a block size is its own size class";
    last_in = bytes;
    last_out = out;
  }
}

TEST(BlockCache, GivesBackAFreedBlockOfTheSameSize) {
  BlockCache cache;
  EXPECT_EQ(cache.take(4096).first, nullptr);
  cache.put(fake(0x1000), 4096);
  EXPECT_EQ(cache.cached_bytes(), 4096u);
  const auto [block, size] = cache.take(4096);
  EXPECT_EQ(block, fake(0x1000));
  EXPECT_EQ(size, 4096u);
  EXPECT_EQ(cache.cached_bytes(), 0u);
  EXPECT_EQ(cache.take(4096).first, nullptr) << "a block is given out once";
}

TEST(BlockCache, TakesTheSmallestBlockWithinAQuarterAboveTheSize) {
  BlockCache cache;
  cache.put(fake(0x3000), 12 * kMiB);
  cache.put(fake(0x2000), 10 * kMiB);
  cache.put(fake(0x5000), 20 * kMiB);
  // 9 MiB: 10 MiB fits (<= 11.25 MiB), and is the smallest that does.
  auto [block, size] = cache.take(9 * kMiB);
  EXPECT_EQ(block, fake(0x2000));
  EXPECT_EQ(size, 10 * kMiB);
  // 8 MiB: 12 MiB is more than 10 MiB (a quarter above): not served.
  EXPECT_EQ(cache.take(8 * kMiB).first, nullptr);
  // Larger than every block: not served.
  EXPECT_EQ(cache.take(21 * kMiB).first, nullptr);
  EXPECT_EQ(cache.cached_blocks(), 2u);
  EXPECT_EQ(cache.cached_bytes(), 32 * kMiB);
}

TEST(BlockCache, DrainReturnsEveryBlockAndEmptiesTheCache) {
  BlockCache cache;
  cache.put(fake(0x1000), 512);
  cache.put(fake(0x2000), 512);
  cache.put(fake(0x3000), 2 * kMiB);
  auto blocks = cache.drain();
  ASSERT_EQ(blocks.size(), 3u);
  size_t total = 0;
  for (const auto& [block, size] : blocks) total += size;
  EXPECT_EQ(total, 2 * kMiB + 1024);
  EXPECT_EQ(cache.cached_bytes(), 0u);
  EXPECT_EQ(cache.cached_blocks(), 0u);
  EXPECT_EQ(cache.take(512).first, nullptr);
}

}  // namespace
}  // namespace sy
