// GPU checks of the tensor layer; each test skips with a message where no GPU is present.
#include "gtest/gtest.h"
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
