// GPU checks of the tensor layer; each test skips with a message where no GPU is present.
#include <vector>

#include "gtest/gtest.h"
#include "kernels/elementwise.h"
#include "kernels/tensor.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"
#ifdef SWITCHYARD_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif

namespace sy {
namespace {

TEST(TensorGpu, RoundTripThroughDeviceKeepsValuesAndViews) {
  SKIP_WITHOUT_GPU();
  auto rng = testing::rng_for_test();
  Tensor host = testing::random_normal({37, 11}, rng);
  Tensor dev = host.to(Device::cuda(0));
  EXPECT_EQ(dev.device(), Device::cuda(0));
  EXPECT_TRUE(testing::all_close(dev.to(Device::cpu()), host, 0, 0));
  EXPECT_TRUE(testing::all_close(dev.rows(5, 9).to(Device::cpu()), host.rows(5, 9), 0, 0));
}

// Host-to-GPU copies up to kStagedUploadBytes go through pinned memory without waiting for
// the GPU: the source may be overwritten at once, more copies than the staging ring holds
// land in order, behind work already queued, and a larger copy takes the waiting path.
TEST(TensorGpu, StagedUploadsLandInOrderAndFreeTheSourceAtOnce) {
  SKIP_WITHOUT_GPU();
  auto rng = testing::rng_for_test();
  const Device gpu = Device::cuda(0);
  // Work queued first (a long fill), then the uploads: each lands after it.
  Tensor busy = Tensor::empty({int64_t{64} << 20}, DType::kF32, gpu);
  fill_(busy, 1.0f);
  std::vector<Tensor> sources, copies;
  for (int i = 0; i < 40; ++i) {  // more than the ring's 16 blocks; sizes vary
    const int64_t n = 1 + (i * 7919) % 30000;
    Tensor host = testing::random_normal({n}, rng);
    Tensor dev = Tensor::empty({n}, DType::kF32, gpu);
    dev.copy_from(host);
    sources.push_back(host.clone());
    host.fill_(-5.0f);  // the source is free as soon as copy_from returns
    copies.push_back(dev);
  }
  Tensor big_host = testing::random_normal({int64_t(kStagedUploadBytes / 4) + 3}, rng);
  Tensor big = big_host.to(gpu);
  for (size_t i = 0; i < copies.size(); ++i) {
    ASSERT_TRUE(testing::all_close(copies[i].to(Device::cpu()), sources[i], 0, 0)) << "copy " << i;
  }
  EXPECT_TRUE(testing::all_close(big.to(Device::cpu()), big_host, 0, 0));
}

// HostReadback: the values at the point it was queued, even when later work overwrites the
// tensor before the host collects them; several outstanding at once; a CPU source copied.
TEST(TensorGpu, HostReadbackReturnsTheValuesWhenQueued) {
  SKIP_WITHOUT_GPU();
  auto rng = testing::rng_for_test();
  const Device gpu = Device::cuda(0);
  std::vector<Tensor> expected;
  std::vector<HostReadback> reads;
  Tensor dev = Tensor::empty({1000, 3}, DType::kF32, gpu);
  for (int i = 0; i < 5; ++i) {
    Tensor host = testing::random_normal({1000, 3}, rng);
    dev.copy_from(host);
    reads.emplace_back(dev.rows(10 * i, 10 * i + 500));
    expected.push_back(host.rows(10 * i, 10 * i + 500).clone());
  }
  fill_(dev, 0.0f);               // after every read was queued
  for (int i = 4; i >= 0; --i) {  // collected in any order
    const Tensor got = reads[i].wait();
    EXPECT_EQ(got.device(), Device::cpu());
    EXPECT_EQ(got.shape(), (Shape{500, 3}));
    EXPECT_TRUE(testing::all_close(got, expected[i], 0, 0)) << "read " << i;
  }
  // bf16 and an empty tensor come back as they are.
  Tensor h16 = testing::random_normal({77}, rng).to(DType::kBF16);
  HostReadback r16(h16.to(gpu));
  const Tensor got16 = r16.wait();
  EXPECT_EQ(got16.dtype(), DType::kBF16);
  EXPECT_TRUE(testing::all_close(got16.to(DType::kF32), h16.to(DType::kF32), 0, 0));
  HostReadback empty(Tensor::empty({0, 4}, DType::kF32, gpu));
  EXPECT_EQ(empty.wait().numel(), 0);
}

// The block cache in front of the stream-ordered pool (kernels/block_cache.h): a freed
// block serves the next tensor of its size class, memory_stats counts blocks in use, the
// high-water mark and the cached ones, and a reused block holds the new tensor's values
// (zeros() on a dirty block, a copy, an op's result).
TEST(TensorGpu, FreedBlocksAreReusedAndCounted) {
  SKIP_WITHOUT_GPU();
  const Device gpu = Device::cuda(0);
  const MemoryStats before = memory_stats(gpu);
  const int64_t bytes = int64_t{3} << 20;  // 3 MiB, its own size class
  const void* first = nullptr;
  {
    Tensor a = Tensor::empty({bytes / 4}, DType::kF32, gpu);
    first = a.raw();
    fill_(a, 7.0f);  // leaves the block dirty
    const MemoryStats held = memory_stats(gpu);
    EXPECT_EQ(held.in_use, before.in_use + bytes);
    EXPECT_GE(held.peak_in_use, held.in_use);
  }
  const MemoryStats freed = memory_stats(gpu);
  EXPECT_EQ(freed.in_use, before.in_use);
  EXPECT_GE(freed.cached, bytes) << "the freed block stays cached";
  // The same size class (a little smaller) takes the same block; zeros() clears it.
  Tensor b = Tensor::zeros({bytes / 4 - 100}, DType::kF32, gpu);
  EXPECT_EQ(b.raw(), first);
  EXPECT_EQ(memory_stats(gpu).cached, freed.cached - bytes);
  for (float v : b.to_f32_vector()) ASSERT_EQ(v, 0.0f);
  // A block reused by an op's output holds that output.
  auto rng = testing::rng_for_test();
  Tensor host = testing::random_normal({bytes / 4 - 100}, rng);
  b = Tensor();  // back to the cache
  Tensor c = host.to(gpu);
  EXPECT_EQ(c.raw(), first);
  EXPECT_TRUE(testing::all_close(c.to(Device::cpu()), host, 0, 0));
  EXPECT_EQ(memory_stats(Device::cpu()).in_use, 0) << "the CPU has no block accounting";
}

#ifdef SWITCHYARD_HAVE_CUDA
TEST(TensorGpu, Bf16CastMatchesCpuRounding) {
  SKIP_WITHOUT_GPU();
  auto rng = testing::rng_for_test();
  Tensor host = testing::random_normal({1000, 3}, rng, 10.0f);
  Tensor out = Tensor::empty(host.shape(), DType::kBF16, Device::cuda(0));
  cuda::cast_f32_to_bf16(out, host.to(Device::cuda(0)));
  EXPECT_TRUE(testing::all_close(out.to(Device::cpu()).to(DType::kF32),
                                 host.to(DType::kBF16).to(DType::kF32), 0, 0));
}
#endif

}  // namespace
}  // namespace sy
