// GPU parity of token permutation by expert: the CUDA dispatch plan must equal the CPU plan
// exactly (counts, offsets, slot_row, row_slot, with and without capacity dropping), and
// permute / unpermute, forward and backward, must match the CPU on the same random inputs in
// f32 and bf16; two GPU runs must agree bit for bit.
//
// Tolerances: gathers are exact. Sums run in the CPU's order, so f32 results are held to
// 1e-6 relative (+1e-6 of the tensor's peak); bf16 outputs (inputs rounded to bf16 for both
// sides, CPU in fp32) to 1e-2 relative + 1e-3 of the peak, the rounding of the result.
// dweights are f32 dot products summed in another order: 1e-5 relative + 1e-6 of the peak.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <ostream>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/permute.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::close_to;
using testing::kGpu;
using testing::on_gpu;
using testing::rounded;

using testing::all_close;
using testing::random_ints;
using testing::random_normal;
using testing::rng_for_test;

struct Case {
  int64_t n;
  int k, experts;
  int64_t capacity;  // -1: dropless
  int64_t d;
};
void PrintTo(const Case& c, std::ostream* os) {
  *os << "N" << c.n << "_k" << c.k << "_E" << c.experts << "_cap"
      << (c.capacity < 0 ? std::string("none") : std::to_string(c.capacity)) << "_D" << c.d;
}

::testing::AssertionResult same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) {
    return ::testing::AssertionFailure() << "shapes or dtypes differ";
  }
  const Tensor ha = a.to(Device::cpu()), hb = b.to(Device::cpu());
  if (std::memcmp(ha.raw(), hb.raw(), ha.nbytes()) != 0) {
    return ::testing::AssertionFailure() << "contents differ";
  }
  return ::testing::AssertionSuccess();
}

std::vector<int64_t> i64_values(const Tensor& t) {
  const Tensor h = t.to(Device::cpu());  // a copy: contiguous
  return std::vector<int64_t>(h.data<int64_t>(), h.data<int64_t>() + h.numel());
}

class PermuteGpuTest : public ::testing::TestWithParam<Case> {};

TEST_P(PermuteGpuTest, PlanEqualsCpuPlan) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  auto rng = rng_for_test();
  Tensor indices = random_ints({c.n, c.k}, 0, c.experts, rng);
  const DispatchPlan cpu = make_dispatch_plan(indices, c.experts, c.capacity);
  const DispatchPlan gpu = make_dispatch_plan(indices.to(kGpu), c.experts, c.capacity);
  EXPECT_EQ(gpu.num_tokens, cpu.num_tokens);
  EXPECT_EQ(gpu.top_k, cpu.top_k);
  EXPECT_EQ(gpu.num_experts, cpu.num_experts);
  EXPECT_EQ(gpu.num_rows, cpu.num_rows);
  EXPECT_EQ(gpu.expert_counts, cpu.expert_counts);
  EXPECT_EQ(gpu.expert_offsets, cpu.expert_offsets);
  EXPECT_EQ(gpu.slot_row.device(), kGpu);
  EXPECT_EQ(gpu.row_slot.device(), kGpu);
  EXPECT_EQ(gpu.slot_row.to_i32_vector(), cpu.slot_row.to_i32_vector());
  EXPECT_EQ(gpu.row_slot.to_i32_vector(), cpu.row_slot.to_i32_vector());
}

TEST_P(PermuteGpuTest, ForwardAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const bool f32 = dtype == DType::kF32;
    const double rtol = f32 ? 1e-6 : 1e-2, peak_tol = f32 ? 1e-6 : 1e-3;
    const char* name = dtype_name(dtype);
    auto rng = rng_for_test();
    Tensor indices = random_ints({c.n, c.k}, 0, c.experts, rng);
    const DispatchPlan cpu = make_dispatch_plan(indices, c.experts, c.capacity);
    const DispatchPlan gpu = make_dispatch_plan(indices.to(kGpu), c.experts, c.capacity);
    const int64_t m = cpu.num_rows;
    Tensor x = rounded(random_normal({c.n, c.d}, rng), dtype);
    Tensor y = rounded(random_normal({m, c.d}, rng), dtype);
    Tensor dperm = rounded(random_normal({m, c.d}, rng), dtype);
    Tensor dcombined = rounded(random_normal({c.n, c.d}, rng), dtype);
    Tensor weights = random_normal({c.n, c.k}, rng);

    Tensor out = Tensor::empty({m, c.d});
    permute_forward(out, x, cpu);
    Tensor out_gpu = Tensor::empty({m, c.d}, dtype, kGpu);
    permute_forward(out_gpu, on_gpu(x, dtype), gpu);
    EXPECT_TRUE(close_to(out_gpu, out, 0, 0)) << name << " permute out";

    Tensor dx = Tensor::empty({c.n, c.d});
    permute_backward(dx, dperm, cpu);
    Tensor dx_gpu = on_gpu(random_normal({c.n, c.d}, rng), dtype);  // written, not added
    permute_backward(dx_gpu, on_gpu(dperm, dtype), gpu);
    EXPECT_TRUE(close_to(dx_gpu, dx, rtol, peak_tol)) << name << " permute dx";

    Tensor combined = Tensor::empty({c.n, c.d});
    unpermute_forward(combined, y, weights, cpu);
    Tensor combined_gpu = Tensor::empty({c.n, c.d}, dtype, kGpu);
    unpermute_forward(combined_gpu, on_gpu(y, dtype), weights.to(kGpu), gpu);
    EXPECT_TRUE(close_to(combined_gpu, combined, rtol, peak_tol)) << name << " unpermute out";

    Tensor dy = Tensor::empty({m, c.d});
    Tensor dweights = Tensor::empty({c.n, c.k});
    unpermute_backward(dy, dweights, dcombined, y, weights, cpu);
    Tensor dy_gpu = on_gpu(random_normal({m, c.d}, rng), dtype);
    Tensor dweights_gpu = random_normal({c.n, c.k}, rng).to(kGpu);
    unpermute_backward(dy_gpu, dweights_gpu, on_gpu(dcombined, dtype), on_gpu(y, dtype),
                       weights.to(kGpu), gpu);
    EXPECT_TRUE(close_to(dy_gpu, dy, rtol, peak_tol)) << name << " unpermute dy";
    EXPECT_TRUE(close_to(dweights_gpu, dweights, 1e-5, 1e-6)) << name << " unpermute dweights";
  }
}

// The plan in two halves, as the MoE layer queues it: a dropless plan's permute may be queued
// before finish_dispatch_plan and gives the CPU's rows; a plan with a capacity refuses that;
// once finished, the plan is the CPU's.
TEST_P(PermuteGpuTest, StartedPlanPermutesBeforeItsCountsArrive) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  auto rng = rng_for_test();
  const Tensor indices = random_ints({c.n, c.k}, 0, c.experts, rng);
  const Tensor x = random_normal({c.n, c.d}, rng);
  const DispatchPlan cpu = make_dispatch_plan(indices, c.experts, c.capacity);
  Tensor expected = Tensor::empty({cpu.num_rows, c.d});
  permute_forward(expected, x, cpu);

  DispatchPlan gpu = start_dispatch_plan(indices.to(kGpu), c.experts, c.capacity);
  EXPECT_FALSE(gpu.ready());
  EXPECT_TRUE(gpu.expert_counts.empty());
  Tensor out;
  if (c.capacity < 0) {
    EXPECT_EQ(gpu.num_rows, c.n * c.k);
    out = Tensor::empty({gpu.num_rows, c.d}, DType::kF32, kGpu);
    permute_forward(out, x.to(kGpu), gpu);
  } else {
    EXPECT_EQ(gpu.num_rows, -1);
  }
  finish_dispatch_plan(gpu);
  EXPECT_TRUE(gpu.ready());
  EXPECT_EQ(gpu.num_rows, cpu.num_rows);
  EXPECT_EQ(gpu.expert_counts, cpu.expert_counts);
  EXPECT_EQ(gpu.expert_offsets, cpu.expert_offsets);
  EXPECT_EQ(gpu.slot_row.to_i32_vector(), cpu.slot_row.to_i32_vector());
  EXPECT_EQ(gpu.row_slot.to_i32_vector(), cpu.row_slot.to_i32_vector());
  if (!out.defined()) {
    out = Tensor::empty({gpu.num_rows, c.d}, DType::kF32, kGpu);
    permute_forward(out, x.to(kGpu), gpu);
  }
  EXPECT_TRUE(all_close(out.to(Device::cpu()), expected, 0.0, 0.0));
  finish_dispatch_plan(gpu);  // a finished plan: nothing to do
  EXPECT_EQ(gpu.num_rows, cpu.num_rows);
}

// PlanReadback::kNone queues no copy to the host: the device part (offsets, slot_row,
// row_slot) equals the CPU plan's and the permute is the CPU's, with no host counts ever.
TEST_P(PermuteGpuTest, DeviceOnlyPlanEqualsCpuPlanOnTheDevice) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  if (c.capacity >= 0) GTEST_SKIP() << "device-only plans are dropless";
  auto rng = rng_for_test();
  const Tensor indices = random_ints({c.n, c.k}, 0, c.experts, rng);
  const Tensor x = random_normal({c.n, c.d}, rng);
  const DispatchPlan cpu = make_dispatch_plan(indices, c.experts, c.capacity);
  Tensor expected = Tensor::empty({cpu.num_rows, c.d});
  permute_forward(expected, x, cpu);
  DispatchPlan gpu =
      start_dispatch_plan(indices.to(kGpu), c.experts, c.capacity, PlanReadback::kNone);
  EXPECT_TRUE(gpu.device_only);
  EXPECT_TRUE(gpu.ready());  // nothing pending
  EXPECT_TRUE(gpu.expert_counts.empty());
  EXPECT_EQ(gpu.num_rows, c.n * c.k);
  Tensor out = Tensor::empty({gpu.num_rows, c.d}, DType::kF32, kGpu);
  permute_forward(out, x.to(kGpu), gpu);
  EXPECT_EQ(i64_values(gpu.device_offsets), cpu.expert_offsets);
  EXPECT_EQ(gpu.slot_row.to_i32_vector(), cpu.slot_row.to_i32_vector());
  EXPECT_EQ(gpu.row_slot.to_i32_vector(), cpu.row_slot.to_i32_vector());
  EXPECT_TRUE(all_close(out.to(Device::cpu()), expected, 0.0, 0.0));
}

INSTANTIATE_TEST_SUITE_P(Shapes, PermuteGpuTest,
                         ::testing::Values(Case{1, 1, 4, -1, 8},        // a single token
                                           Case{1, 2, 8, -1, 5},        // one token, top-2
                                           Case{0, 2, 4, -1, 8},        // no tokens
                                           Case{37, 2, 8, -1, 64},      // a few tokens
                                           Case{1000, 8, 64, -1, 129},  // many chunks, odd D
                                           Case{1000, 2, 16, 125, 32},  // capacity factor 1
                                           Case{5000, 6, 256, 20, 16},  // heavy dropping
                                           Case{300, 3, 7, 0, 4},       // everything dropped
                                           Case{600, 2, 3, 150, 1024},  // wide rows
                                           Case{2048, 4, 1, -1, 7},     // one expert
                                           // rows of whole 16-byte vectors (D a multiple of
                                           // 8) take the vector kernels; D 5, 7, 129 do not
                                           Case{4096, 2, 16, -1, 1024}),  // the bench's width
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return ::testing::PrintToString(info.param);
                         });

TEST(PermuteGpu, RepeatsBitForBit) {
  SKIP_WITHOUT_GPU();
  const Case c{3000, 4, 32, 400, 96};
  auto rng = rng_for_test();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Tensor indices = random_ints({c.n, c.k}, 0, c.experts, rng).to(kGpu);
    const Tensor x = on_gpu(random_normal({c.n, c.d}, rng), dtype);
    const Tensor dcombined = on_gpu(random_normal({c.n, c.d}, rng), dtype);
    const Tensor weights = random_normal({c.n, c.k}, rng).to(kGpu);
    std::vector<Tensor> runs[2];
    for (auto& run : runs) {
      const DispatchPlan plan = make_dispatch_plan(indices, c.experts, c.capacity);
      const int64_t m = plan.num_rows;
      Tensor out = Tensor::empty({m, c.d}, dtype, kGpu);
      permute_forward(out, x, plan);
      Tensor dx = Tensor::empty({c.n, c.d}, dtype, kGpu);
      permute_backward(dx, out, plan);
      Tensor combined = Tensor::empty({c.n, c.d}, dtype, kGpu);
      unpermute_forward(combined, out, weights, plan);
      Tensor dy = Tensor::empty({m, c.d}, dtype, kGpu);
      Tensor dweights = Tensor::empty({c.n, c.k}, DType::kF32, kGpu);
      unpermute_backward(dy, dweights, dcombined, out, weights, plan);
      run = {plan.slot_row, plan.row_slot, out, dx, combined, dy, dweights};
    }
    for (size_t i = 0; i < runs[0].size(); ++i) {
      EXPECT_TRUE(same_bits(runs[0][i], runs[1][i])) << dtype_name(dtype) << " output " << i;
    }
  }
}

// Bad input on the GPU: an index outside [0, E) is reported when the plan is finished (the
// device part drops it, so nothing is written out of bounds), and a plan with a capacity
// cannot be used before it is finished. Death tests re-run the binary (threadsafe style), so
// the child starts CUDA afresh.
TEST(PermuteGpu, BadIndicesAndUnfinishedPlansAreRefused) {
  SKIP_WITHOUT_GPU();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const Tensor bad = Tensor::from_i32({0, 1, 3, 2, -1, 0}, {3, 2}).to(kGpu);
  EXPECT_DEATH(make_dispatch_plan(bad, 3, -1), "2 of 6 expert indices are outside \\[0, 3\\)");
  EXPECT_DEATH(
      {
        DispatchPlan plan = start_dispatch_plan(bad, 3, -1);
        finish_dispatch_plan(plan);
      },
      "outside \\[0, 3\\)");
  const Tensor good = Tensor::from_i32({0, 1, 2, 2, 1, 0}, {3, 2}).to(kGpu);
  EXPECT_DEATH(
      {
        DispatchPlan plan = start_dispatch_plan(good, 3, 1);
        Tensor out = Tensor::empty({2, 8}, DType::kF32, kGpu);
        permute_forward(out, Tensor::zeros({3, 8}).to(kGpu), plan);
      },
      "not finished; call finish_dispatch_plan first");
}

}  // namespace
}  // namespace sy
