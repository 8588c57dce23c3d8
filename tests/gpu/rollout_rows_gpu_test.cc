// The rollout engine's row bookkeeping on the GPU against the CPU op, on random row states
// (active and idle rows, stop tokens hit and missed, limits reached and not), over several
// steps in a row as the engine runs it. Integer bookkeeping and copied log-probs: exact.
// Skips without a GPU.
#include <random>

#include "gtest/gtest.h"
#include "kernels/rollout_rows.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::kGpu;

RolloutRows to_device(const RolloutRows& r, Device dev) {
  return {r.generated.to(dev), r.base.to(dev),   r.length.to(dev),    r.limit.to(dev),
          r.active.to(dev),    r.attend.to(dev), r.out_token.to(dev), r.out_logprob.to(dev)};
}

TEST(RolloutRowsGpu, MatchesTheCpuOverSeveralSteps) {
  SKIP_WITHOUT_GPU();
  auto rng = testing::rng_for_test();
  for (int64_t r_count : {1, 37, 300}) {
    const int64_t width = 6;
    std::uniform_int_distribution<int32_t> small(0, 3);
    std::vector<int32_t> generated(r_count), length(r_count), limit(r_count), active(r_count),
        attend(r_count);
    for (int64_t r = 0; r < r_count; ++r) {
      generated[r] = small(rng);
      length[r] = 5 + generated[r];
      limit[r] = generated[r] + 1 + small(rng);
      active[r] = small(rng) != 0;
      attend[r] = active[r] ? length[r] + 1 : 0;
    }
    RolloutRows cpu{.generated = Tensor::from_i32(generated, {r_count}),
                    .base = Tensor::from_i32(generated, {r_count}),
                    .length = Tensor::from_i32(length, {r_count}),
                    .limit = Tensor::from_i32(limit, {r_count}),
                    .active = Tensor::from_i32(active, {r_count}),
                    .attend = Tensor::from_i32(attend, {r_count}),
                    .out_token = testing::random_ints({r_count, width}, 0, 50, rng),
                    .out_logprob = testing::random_normal({r_count, width}, rng)};
    RolloutRows gpu = to_device(cpu, kGpu);
    const Tensor stops = Tensor::from_i32({3, 11}, {2});
    for (int step = 0; step < width - 1; ++step) {
      const Tensor token = testing::random_ints({r_count}, 0, 16, rng);
      const Tensor logprob = testing::random_normal({r_count}, rng);
      advance_rollout_rows(cpu, token, logprob, stops);
      advance_rollout_rows(gpu, token.to(kGpu), logprob.to(kGpu), stops.to(kGpu));
    }
    const RolloutRows back = to_device(gpu, Device::cpu());
    EXPECT_EQ(back.generated.to_i32_vector(), cpu.generated.to_i32_vector()) << r_count;
    EXPECT_EQ(back.length.to_i32_vector(), cpu.length.to_i32_vector()) << r_count;
    EXPECT_EQ(back.active.to_i32_vector(), cpu.active.to_i32_vector()) << r_count;
    EXPECT_EQ(back.attend.to_i32_vector(), cpu.attend.to_i32_vector()) << r_count;
    EXPECT_EQ(back.out_token.to_i32_vector(), cpu.out_token.to_i32_vector()) << r_count;
    EXPECT_EQ(back.out_logprob.to_f32_vector(), cpu.out_logprob.to_f32_vector()) << r_count;
  }
}

}  // namespace
}  // namespace sy
