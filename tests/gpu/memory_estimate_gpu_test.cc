// GPU memory for the run's memory estimate: the free bytes it reads are the driver's, a model
// too large for the GPU is refused naming the device, and an allocation past the GPU's memory
// is a std::bad_alloc that says what to lower, not an abort. Each test skips without a GPU.
#include <new>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "kernels/tensor.h"
#include "models/model_spec.h"
#include "tests/testing/gpu_testing.h"
#include "trainer/memory_estimate.h"
#ifdef SWITCHYARD_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace sy {
namespace {

TEST(MemoryEstimateGpu, FreeBytesAreTheDriversAndAHugeModelIsRefused) {
  SKIP_WITHOUT_GPU();
#ifdef SWITCHYARD_HAVE_CUDA
  const int64_t available = available_memory_bytes(testing::kGpu);
  size_t free_bytes = 0, total_bytes = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total_bytes), cudaSuccess);
  ASSERT_GT(available, 0);
  EXPECT_LE(available, static_cast<int64_t>(total_bytes));

  ModelSpec spec;
  spec.vocab_size = 1 << 24;
  spec.d_model = 1 << 16;
  spec.n_layers = 1;
  spec.n_heads = 32;
  spec.n_kv_heads = 8;
  spec.seq_len = 16;
  spec.dense_ffn_hidden = 64;
  spec.first_k_dense = 1;
  const absl::Status refused =
      check_memory_for(spec, {.compute = DType::kBF16, .micro_batch = 1, .seq_len = 16},
                       testing::kGpu, "training this model");
  EXPECT_TRUE(absl::IsResourceExhausted(refused)) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "GiB free on cuda:0")) << refused;
#endif
}

TEST(MemoryEstimateGpu, AnAllocationPastTheGpusMemoryThrowsBadAlloc) {
  SKIP_WITHOUT_GPU();
  try {
    Tensor t = Tensor::empty({int64_t{1} << 40, 256}, DType::kF32, testing::kGpu);  // 1 PiB
    FAIL() << "allocated " << t.nbytes() << " bytes on the GPU";
  } catch (const std::bad_alloc& error) {
    EXPECT_TRUE(absl::StrContains(error.what(), "on cuda:0")) << error.what();
    EXPECT_TRUE(absl::StrContains(error.what(), "Lower train.micro_batch")) << error.what();
  }
  // The GPU is still usable after the failure.
  Tensor small = Tensor::zeros({4, 4}, DType::kF32, testing::kGpu);
  EXPECT_EQ(small.to(Device::cpu()).to_f32_vector(), std::vector<float>(16, 0.0f));
}

}  // namespace
}  // namespace sy
