// AdamW on CUDA against the CPU op: several consecutive steps (so bias corrections change)
// on random parameters, gradients and non-zero moments, with and without weight decay,
// over sizes from one element to more than a grid-stride of the launch, with clipping folded
// in (grad_scale) and the bf16 compute copy written in the same pass. All f32; the
// arithmetic is the same expression in the same order, so only fused multiply-adds on the
// GPU separate the two: rtol 1e-5, atol 1e-6 (parameters O(1), moments O(1e-2..1)).
//
// adamw_step_many, the whole-model launch, over many tensors at once: sizes around its chunks
// (65536 elements) and float4 groups, entries with and without the copy and weight decay, and
// row views that start off 16 bytes (the scalar fallback) or on them. Against the CPU:
// |gpu - cpu| <= 1e-6 |cpu| + 1e-6 peak (peak the largest |cpu| of the tensor; the only
// difference is fused multiply-adds, a few ulps over five steps, while a missed or doubled
// update moves a parameter by ~lr = 3e-3). Against the single-tensor CUDA launch: bit for bit
// (both update each element with the same device function).
// Skips without a GPU.
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/adamw.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::close_to;
using testing::kGpu;

using testing::all_close;
using testing::random_normal;
using testing::rng_for_test;

class AdamwGpuTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(AdamwGpuTest, StepsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t n = GetParam();
  auto rng = rng_for_test();
  Tensor param = random_normal({n}, rng), m = random_normal({n}, rng, 0.1f);
  // v >= 0: the square of a random tensor.
  Tensor v = random_normal({n}, rng, 0.1f);
  for (int64_t i = 0; i < n; ++i) v.data<float>()[i] *= v.data<float>()[i];
  Tensor gparam = param.to(kGpu), gm = m.to(kGpu), gv = v.to(kGpu);

  AdamWParams p;
  p.lr = 3e-3f;
  Tensor gcopy = Tensor::empty({n}, DType::kBF16, kGpu);
  for (int64_t step = 1; step <= 5; ++step) {
    p.step = step;
    p.weight_decay = step % 2 ? 0.1f : 0.0f;
    p.grad_scale = step % 3 ? 1.0f : 0.3f;
    Tensor grad = random_normal({n}, rng);
    adamw_step(param, grad, m, v, p);
    adamw_step(gparam, grad.to(kGpu), gm, gv, p, gcopy);
    // The bf16 copy is exactly the GPU's updated parameter, rounded to nearest even.
    EXPECT_TRUE(all_close(gcopy.to(Device::cpu()).to(DType::kF32),
                          gparam.to(Device::cpu()).to(DType::kBF16).to(DType::kF32), 0, 0));
    EXPECT_TRUE(all_close(gm, m, 1e-5, 1e-6)) << "m after step " << step;
    EXPECT_TRUE(all_close(gv, v, 1e-5, 1e-6)) << "v after step " << step;
    EXPECT_TRUE(all_close(gparam, param, 1e-5, 1e-6)) << "param after step " << step;
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, AdamwGpuTest,
                         ::testing::Values(int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{100003},
                                           int64_t{(1 << 22) + 3}));

// One entry of the many-tensor test: its tensors are rows [offset, offset + shape[0]) of
// fresh tensors with `offset` more rows, so an odd row length with offset > 0 puts them off
// 16 bytes.
struct EntrySpec {
  Shape shape;
  int64_t offset = 0;       // param, grad, m, v
  int64_t copy_offset = 0;  // the bf16 copy
  bool copy = true;
  float weight_decay = 0.1f;
};

Shape grown(Shape shape, int64_t rows) {
  shape[0] += rows;
  return shape;
}
Tensor view_from(const Tensor& base, int64_t offset) { return base.rows(offset, base.dim(0)); }

// The same starting state three times: for the CPU reference, the single-tensor launches and
// the many-tensor launch. The bases are kept to check that rows outside the views stay as
// they were.
struct Entry {
  EntrySpec spec;
  Tensor param_base, m_base, v_base;                                         // CPU
  Tensor single_param_base, single_m_base, single_v_base, single_copy_base;  // GPU
  Tensor many_param_base, many_m_base, many_v_base, many_copy_base;          // GPU
};

Entry make_entry(const EntrySpec& spec, std::mt19937_64& rng) {
  Entry e{.spec = spec};
  const Shape shape = grown(spec.shape, spec.offset);
  e.param_base = random_normal(shape, rng);
  e.m_base = random_normal(shape, rng, 0.1f);
  e.v_base = random_normal(shape, rng, 0.1f);
  for (int64_t i = 0; i < e.v_base.numel(); ++i)
    e.v_base.data<float>()[i] *= e.v_base.data<float>()[i];
  e.single_param_base = e.param_base.to(kGpu);
  e.single_m_base = e.m_base.to(kGpu);
  e.single_v_base = e.v_base.to(kGpu);
  e.many_param_base = e.param_base.to(kGpu);
  e.many_m_base = e.m_base.to(kGpu);
  e.many_v_base = e.v_base.to(kGpu);
  if (spec.copy) {
    const Shape copy_shape = grown(spec.shape, spec.copy_offset);
    e.single_copy_base = Tensor::zeros(copy_shape, DType::kBF16, kGpu);
    e.many_copy_base = Tensor::zeros(copy_shape, DType::kBF16, kGpu);
  }
  return e;
}

TEST(AdamwManyGpuTest, StepsMatchCpuAndSingleTensorLaunches) {
  SKIP_WITHOUT_GPU();
  auto rng = rng_for_test();
  std::vector<EntrySpec> specs = {
      {.shape = {1}},
      {.shape = {3}, .copy = false, .weight_decay = 0.0f},
      {.shape = {0}},
      {.shape = {1000}, .weight_decay = 0.0f},
      {.shape = {65537}, .copy = false},  // two chunks, the second one element
      {.shape = {300000}},
      {.shape = {262147}, .weight_decay = 0.0f},  // a tail of 3 after four full chunks
      // Off 16 bytes (12 for the f32 tensors, 6 for the copy): the scalar path, 2 chunks.
      {.shape = {40001, 3}, .offset = 1, .copy_offset = 1},
      // Only the copy off 8 bytes (4): still the scalar path.
      {.shape = {20000, 2}, .copy_offset = 1},
      // Views on 16 bytes (f32) and 8 (bf16): the float4 path through a view.
      {.shape = {1001, 4}, .offset = 1, .copy_offset = 1, .weight_decay = 0.0f},
  };
  // Many small tensors, as a model's norms and biases: a long table of one-chunk entries.
  for (int64_t i = 0; i < 50; ++i)
    specs.push_back(
        {.shape = {2 * i + 1}, .copy = i % 3 != 0, .weight_decay = i % 2 ? 0.1f : 0.0f});
  std::vector<Entry> entries;
  for (const EntrySpec& spec : specs) entries.push_back(make_entry(spec, rng));

  AdamWParams p;
  p.lr = 3e-3f;
  for (int64_t step = 1; step <= 5; ++step) {
    p.step = step;
    p.grad_scale = step % 3 ? 1.0f : 0.3f;
    std::vector<AdamWTensors> many;
    for (Entry& e : entries) {
      const EntrySpec& s = e.spec;
      const Tensor grad_base = random_normal(grown(s.shape, s.offset), rng);
      const Tensor grad = view_from(grad_base, s.offset);
      const Tensor gpu_grad = view_from(grad_base.to(kGpu), s.offset);
      AdamWParams own = p;
      own.weight_decay = s.weight_decay;
      adamw_step(view_from(e.param_base, s.offset), grad, view_from(e.m_base, s.offset),
                 view_from(e.v_base, s.offset), own);
      adamw_step(view_from(e.single_param_base, s.offset), gpu_grad,
                 view_from(e.single_m_base, s.offset), view_from(e.single_v_base, s.offset), own,
                 s.copy ? view_from(e.single_copy_base, s.copy_offset) : Tensor());
      many.push_back({.param = view_from(e.many_param_base, s.offset),
                      .grad = gpu_grad,
                      .m = view_from(e.many_m_base, s.offset),
                      .v = view_from(e.many_v_base, s.offset),
                      .copy = s.copy ? view_from(e.many_copy_base, s.copy_offset) : Tensor(),
                      .weight_decay = s.weight_decay});
    }
    adamw_step_many(many, p);

    for (size_t i = 0; i < entries.size(); ++i) {
      const Entry& e = entries[i];
      const EntrySpec& s = e.spec;
      const std::string where = "entry " + std::to_string(i) + " " + shape_str(s.shape) +
                                " after step " + std::to_string(step);
      // Whole bases: the rows outside the views must be untouched on both sides.
      EXPECT_TRUE(close_to(e.many_param_base, e.param_base, 1e-6, 1e-6)) << "param, " << where;
      EXPECT_TRUE(close_to(e.many_m_base, e.m_base, 1e-6, 1e-6)) << "m, " << where;
      EXPECT_TRUE(close_to(e.many_v_base, e.v_base, 1e-6, 1e-6)) << "v, " << where;
      EXPECT_TRUE(all_close(e.many_param_base, e.single_param_base, 0, 0)) << "param, " << where;
      EXPECT_TRUE(all_close(e.many_m_base, e.single_m_base, 0, 0)) << "m, " << where;
      EXPECT_TRUE(all_close(e.many_v_base, e.single_v_base, 0, 0)) << "v, " << where;
      if (!s.copy) continue;
      // The copy is the updated parameter rounded to nearest even, and nothing outside it.
      const Tensor copy = e.many_copy_base.to(Device::cpu()).to(DType::kF32);
      EXPECT_TRUE(all_close(
          view_from(copy, s.copy_offset),
          view_from(e.many_param_base, s.offset).to(Device::cpu()).to(DType::kBF16).to(DType::kF32),
          0, 0))
          << "copy, " << where;
      EXPECT_TRUE(all_close(copy.rows(0, s.copy_offset),
                            Tensor::zeros(grown(s.shape, s.copy_offset - s.shape[0])), 0, 0))
          << "rows before the copy, " << where;
      EXPECT_TRUE(all_close(e.many_copy_base, e.single_copy_base, 0, 0)) << "copy, " << where;
    }
  }
}

}  // namespace
}  // namespace sy
