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
//
// The clip scale computed on the GPU (clip_scale_from_squares, read by the update through
// grad_scale_device) against the host's clip_scale of the host's norm, with clipping off,
// inactive and active: the same float, and the same parameters, moments and copies, bit for
// bit. Then the optimizer, which takes that path on one GPU, against itself sent down the host
// path (a two-rank EP group whose host sums add nothing): the same norms, parameters, compute
// copies and moments, bit for bit, over steps with and without clipping, and again on a second
// run, with f32 moments and with bf16 ones.
//
// bf16 moments: the GPU and the CPU compute the same f32 update from the same widened moments,
// but a fused multiply-add can put an f32 moment on the other side of a bf16 rounding boundary,
// and the stored moment is then one bf16 ulp (2^-8 to 2^-7 relative) from the CPU's, a difference
// later steps carry on. So each step is checked from one state: the CPU takes the step from the
// state the GPU had before it. The parameter (updated from the moments before rounding) as in
// the f32 tests; the copy, the GPU's parameter rounded, exactly; m and v element by element
// equal, one bf16 ulp apart, or within 1e-6 of the tensor's largest magnitude (the f32 tests'
// absolute floor: where beta1 m and (1 - beta1) g nearly cancel, a fused multiply-add moves the
// tiny result by many of its own ulps), and at most 1 in 1000 (+ 1) not equal: an f32 difference
// of a few ulps crosses a rounding boundary ~2^-14 of the time, while rounding other than to
// nearest even puts about half of them off. Single-tensor and many-tensor launches, the host's
// scale and the device's, and a repeat of the same launch: bit for bit.
// Sizes around the chunks and the four-element groups, and views whose moments start off 8 bytes
// (the scalar path) or on 8 bytes but off 16 (the vector path: four bf16 moments are 8 bytes).
// Skips without a GPU.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/adamw.h"
#include "kernels/elementwise.h"
#include "models/param_store.h"
#include "parallel/communicator.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"
#include "trainer/optimizer.h"

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

// --- bf16 moments -------------------------------------------------------------------------------

// bf16 values as integers in their order (sign and magnitude to a signed number): neighbours
// differ by 1, and +0 and -0 are both 0.
int32_t bf16_order(bf16 x) { return x.bits & 0x8000 ? -(x.bits & 0x7fff) : x.bits; }

// bf16 moments `gpu` against `cpu`: each element equal, one bf16 ulp apart, or within 1e-6 of
// the largest |cpu|; at most 1 + numel / 1000 of them not equal.
::testing::AssertionResult moments_close(const Tensor& gpu, const Tensor& cpu) {
  const Tensor a = gpu.to(Device::cpu()), b = cpu.to(Device::cpu());
  if (a.dtype() != DType::kBF16 || b.dtype() != DType::kBF16) {
    return ::testing::AssertionFailure()
           << dtype_name(a.dtype()) << " against " << dtype_name(b.dtype()) << ", expected bf16";
  }
  if (a.shape() != b.shape()) {
    return ::testing::AssertionFailure()
           << "shape " << shape_str(a.shape()) << " != expected " << shape_str(b.shape());
  }
  double peak = 0;
  for (int64_t i = 0; i < b.numel(); ++i)
    peak = std::max(peak, std::fabs(double{bf16_to_f32(b.data<bf16>()[i])}));
  int64_t off = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const bf16 x = a.data<bf16>()[i], y = b.data<bf16>()[i];
    const int32_t ulps = std::abs(bf16_order(x) - bf16_order(y));
    const double apart = std::fabs(double{bf16_to_f32(x)} - double{bf16_to_f32(y)});
    if (ulps > 1 && apart > 1e-6 * peak) {
      return ::testing::AssertionFailure()
             << "element " << i << ": " << bf16_to_f32(x) << " against " << bf16_to_f32(y) << ", "
             << ulps << " bf16 ulps apart";
    }
    off += ulps > 0;
  }
  const int64_t allowed = 1 + a.numel() / 1000;
  if (off > allowed) {
    return ::testing::AssertionFailure()
           << off << " of " << a.numel() << " elements differ, more than " << allowed;
  }
  return ::testing::AssertionSuccess();
}

// Random moments as bf16 (v >= 0), on the CPU.
Tensor random_m_bf16(const Shape& shape, std::mt19937_64& rng) {
  return random_normal(shape, rng, 0.1f).to(DType::kBF16);
}
Tensor random_v_bf16(const Shape& shape, std::mt19937_64& rng) {
  Tensor v = random_normal(shape, rng, 0.1f);
  for (int64_t i = 0; i < v.numel(); ++i) v.data<float>()[i] *= v.data<float>()[i];
  return v.to(DType::kBF16);
}

// The scale in device memory, as the optimizer leaves it for grad_scale_device.
struct DeviceScale {
  Tensor buffer = Tensor::empty({1}, DType::kF32, kGpu);
  AdamWParams params(AdamWParams p) const {
    buffer.copy_from(Tensor::from_f32({p.grad_scale}, {1}));
    p.grad_scale = 1.0f;
    p.grad_scale_device = buffer.data<float>();
    return p;
  }
};

class AdamwBf16MomentsGpuTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(AdamwBf16MomentsGpuTest, StepsMatchCpuFromTheSameState) {
  SKIP_WITHOUT_GPU();
  const int64_t n = GetParam();
  auto rng = rng_for_test();
  Tensor gparam = random_normal({n}, rng).to(kGpu);
  Tensor gm = random_m_bf16({n}, rng).to(kGpu), gv = random_v_bf16({n}, rng).to(kGpu);
  Tensor gcopy = Tensor::empty({n}, DType::kBF16, kGpu);
  // The same steps with the scale read from device memory.
  Tensor dparam = gparam.clone(), dm = gm.clone(), dv = gv.clone();
  Tensor dcopy = Tensor::empty({n}, DType::kBF16, kGpu);
  const DeviceScale device_scale;
  AdamWParams p;
  p.lr = 3e-3f;
  for (int64_t step = 1; step <= 5; ++step) {
    p.step = step;
    p.weight_decay = step % 2 ? 0.1f : 0.0f;
    p.grad_scale = step % 3 ? 1.0f : 0.3f;
    const Tensor grad = random_normal({n}, rng), gpu_grad = grad.to(kGpu);
    // The CPU steps from the GPU's state.
    Tensor param = gparam.to(Device::cpu()), m = gm.to(Device::cpu()), v = gv.to(Device::cpu());
    adamw_step(param, grad, m, v, p);
    adamw_step(gparam, gpu_grad, gm, gv, p, gcopy);
    adamw_step(dparam, gpu_grad, dm, dv, device_scale.params(p), dcopy);
    const std::string where = "after step " + std::to_string(step);
    EXPECT_TRUE(all_close(gparam, param, 1e-5, 1e-6)) << "param " << where;
    EXPECT_TRUE(moments_close(gm, m)) << "m " << where;
    EXPECT_TRUE(moments_close(gv, v)) << "v " << where;
    EXPECT_TRUE(all_close(gcopy.to(Device::cpu()).to(DType::kF32),
                          gparam.to(Device::cpu()).to(DType::kBF16).to(DType::kF32), 0, 0))
        << "copy " << where;
    for (auto [x, y, name] : {std::tuple{&dparam, &gparam, "param"}, std::tuple{&dm, &gm, "m"},
                              std::tuple{&dv, &gv, "v"}, std::tuple{&dcopy, &gcopy, "copy"}}) {
      EXPECT_TRUE(all_close(*x, *y, 0, 0)) << name << " with the device scale, " << where;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, AdamwBf16MomentsGpuTest,
                         ::testing::Values(int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{100003},
                                           int64_t{(1 << 22) + 3}));

// One entry of the bf16-moment many-tensor test: param and grad are rows [offset, ...) of
// tensors `offset` rows longer, m and v rows [moment_offset, ...), the copy rows [copy_offset,
// ...).
struct Bf16EntrySpec {
  Shape shape;
  int64_t offset = 0;
  int64_t moment_offset = 0;
  int64_t copy_offset = 0;
  bool copy = true;
  float weight_decay = 0.1f;
};

// One entry's state on the GPU, whole tensors (the views are taken per step).
struct Bf16State {
  Tensor param, m, v, copy;
};

struct Bf16Entry {
  Bf16EntrySpec spec;
  // The many-tensor launch with the host's scale (the one the CPU checks), the single-tensor
  // launches, the many-tensor launch with the device's scale, and that launch again.
  Bf16State many, single, device, repeat;
};

Bf16Entry make_bf16_entry(const Bf16EntrySpec& spec, std::mt19937_64& rng) {
  const Tensor param = random_normal(grown(spec.shape, spec.offset), rng);
  const Tensor m = random_m_bf16(grown(spec.shape, spec.moment_offset), rng);
  const Tensor v = random_v_bf16(grown(spec.shape, spec.moment_offset), rng);
  auto state = [&] {
    return Bf16State{param.to(kGpu), m.to(kGpu), v.to(kGpu),
                     spec.copy
                         ? Tensor::zeros(grown(spec.shape, spec.copy_offset), DType::kBF16, kGpu)
                         : Tensor()};
  };
  return {spec, state(), state(), state(), state()};
}

AdamWTensors views(const Bf16State& s, const Bf16EntrySpec& spec, const Tensor& grad) {
  return {.param = view_from(s.param, spec.offset),
          .grad = grad,
          .m = view_from(s.m, spec.moment_offset),
          .v = view_from(s.v, spec.moment_offset),
          .copy = spec.copy ? view_from(s.copy, spec.copy_offset) : Tensor(),
          .weight_decay = spec.weight_decay};
}

TEST(AdamwManyBf16MomentsGpuTest, StepsMatchCpuFromTheSameStateAndEachOther) {
  SKIP_WITHOUT_GPU();
  auto rng = rng_for_test();
  std::vector<Bf16EntrySpec> specs = {
      {.shape = {1}},
      {.shape = {3}, .copy = false, .weight_decay = 0.0f},
      {.shape = {0}},
      {.shape = {1000}, .weight_decay = 0.0f},
      {.shape = {65537}, .copy = false},  // two chunks, the second one element
      {.shape = {300000}},
      {.shape = {262147}, .weight_decay = 0.0f},  // a tail of 3 after four full chunks
      // Moments off 8 bytes (one row of three bf16: 6): the scalar path, 2 chunks.
      {.shape = {40001, 3}, .moment_offset = 1},
      // Moments on 8 bytes and off 16 (one row of four bf16), param and grad on 16 (one row of
      // four f32), the copy on 8: the vector path through views.
      {.shape = {20001, 4}, .offset = 1, .moment_offset = 1, .copy_offset = 1},
      // Param and grad off 16 bytes (one row of two f32: 8), moments on 8 (two rows of two
      // bf16): the scalar path.
      {.shape = {30001, 2}, .offset = 1, .moment_offset = 2},
      // Only the copy off 8 bytes (4): still the scalar path.
      {.shape = {20000, 2}, .copy_offset = 1},
  };
  // Many small tensors, as a model's norms and biases: a long table of one-chunk entries.
  for (int64_t i = 0; i < 50; ++i)
    specs.push_back(
        {.shape = {2 * i + 1}, .copy = i % 3 != 0, .weight_decay = i % 2 ? 0.1f : 0.0f});
  std::vector<Bf16Entry> entries;
  for (const Bf16EntrySpec& spec : specs) entries.push_back(make_bf16_entry(spec, rng));

  const DeviceScale device_scale;
  AdamWParams p;
  p.lr = 3e-3f;
  for (int64_t step = 1; step <= 5; ++step) {
    p.step = step;
    p.grad_scale = step % 3 ? 1.0f : 0.3f;
    std::vector<Bf16State> before;  // the CPU's starting point: the many-tensor launch's state
    std::vector<AdamWTensors> many, device, repeat;
    for (Bf16Entry& e : entries) {
      const Bf16EntrySpec& s = e.spec;
      const Tensor grad_base = random_normal(grown(s.shape, s.offset), rng);
      const Tensor gpu_grad = view_from(grad_base.to(kGpu), s.offset);
      const Bf16State cpu{e.many.param.to(Device::cpu()), e.many.m.to(Device::cpu()),
                          e.many.v.to(Device::cpu()), Tensor()};
      AdamWParams own = p;
      own.weight_decay = s.weight_decay;
      Bf16EntrySpec no_copy = s;
      no_copy.copy = false;
      const AdamWTensors c = views(cpu, no_copy, view_from(grad_base, s.offset));
      adamw_step(c.param, c.grad, c.m, c.v, own);
      before.push_back(cpu);
      const AdamWTensors one = views(e.single, s, gpu_grad);
      adamw_step(one.param, one.grad, one.m, one.v, own, one.copy);
      many.push_back(views(e.many, s, gpu_grad));
      device.push_back(views(e.device, s, gpu_grad));
      repeat.push_back(views(e.repeat, s, gpu_grad));
    }
    adamw_step_many(many, p);
    adamw_step_many(device, device_scale.params(p));
    adamw_step_many(repeat, device_scale.params(p));

    for (size_t i = 0; i < entries.size(); ++i) {
      const Bf16Entry& e = entries[i];
      const Bf16EntrySpec& s = e.spec;
      const Bf16State& cpu = before[i];  // updated in place: the CPU's step
      const std::string where = "entry " + std::to_string(i) + " " + shape_str(s.shape) +
                                " after step " + std::to_string(step);
      // Whole tensors: the rows outside the views must be untouched on both sides.
      EXPECT_TRUE(close_to(e.many.param, cpu.param, 1e-6, 1e-6)) << "param, " << where;
      EXPECT_TRUE(moments_close(e.many.m, cpu.m)) << "m, " << where;
      EXPECT_TRUE(moments_close(e.many.v, cpu.v)) << "v, " << where;
      for (const auto& [other, name] :
           {std::pair{&e.single, "single-tensor launch"}, std::pair{&e.device, "device scale"},
            std::pair{&e.repeat, "repeat"}}) {
        EXPECT_TRUE(all_close(other->param, e.many.param, 0, 0))
            << "param, " << name << ", " << where;
        EXPECT_TRUE(all_close(other->m, e.many.m, 0, 0)) << "m, " << name << ", " << where;
        EXPECT_TRUE(all_close(other->v, e.many.v, 0, 0)) << "v, " << name << ", " << where;
        if (s.copy)
          EXPECT_TRUE(all_close(other->copy, e.many.copy, 0, 0))
              << "copy, " << name << ", " << where;
      }
      if (!s.copy) continue;
      // The copy is the updated parameter rounded to nearest even, and nothing outside it.
      const Tensor copy = e.many.copy.to(Device::cpu()).to(DType::kF32);
      EXPECT_TRUE(all_close(
          view_from(copy, s.copy_offset),
          view_from(e.many.param, s.offset).to(Device::cpu()).to(DType::kBF16).to(DType::kF32), 0,
          0))
          << "copy, " << where;
      EXPECT_TRUE(all_close(copy.rows(0, s.copy_offset),
                            Tensor::zeros(grown(s.shape, s.copy_offset - s.shape[0])), 0, 0))
          << "rows before the copy, " << where;
    }
  }
}

#ifdef SWITCHYARD_HAVE_CUDA
// Fresh AdamW state for `grad` on the GPU: random parameter and moments (v >= 0), and a bf16
// copy for a matrix.
AdamWTensors random_state(const Tensor& grad, float weight_decay, std::mt19937_64& rng) {
  const Shape& shape = grad.shape();
  Tensor v = random_normal(shape, rng, 0.1f);
  for (int64_t i = 0; i < v.numel(); ++i) v.data<float>()[i] *= v.data<float>()[i];
  return {.param = random_normal(shape, rng).to(kGpu),
          .grad = grad,
          .m = random_normal(shape, rng, 0.1f).to(kGpu),
          .v = v.to(kGpu),
          .copy = shape.size() >= 2 ? Tensor::zeros(shape, DType::kBF16, kGpu) : Tensor(),
          .weight_decay = weight_decay};
}

AdamWTensors clone_state(const AdamWTensors& t) {
  return {.param = t.param.clone(),
          .grad = t.grad,
          .m = t.m.clone(),
          .v = t.v.clone(),
          .copy = t.copy.defined() ? t.copy.clone() : Tensor(),
          .weight_decay = t.weight_decay};
}

::testing::AssertionResult same_bits(const AdamWTensors& a, const AdamWTensors& b) {
  for (auto [x, y, name] : {std::tuple{&a.param, &b.param, "param"}, std::tuple{&a.m, &b.m, "m"},
                            std::tuple{&a.v, &b.v, "v"}, std::tuple{&a.copy, &b.copy, "copy"}}) {
    if (!x->defined()) continue;
    ::testing::AssertionResult same = all_close(*x, *y, 0, 0);
    if (!same) return same << " (" << name << ")";
  }
  return ::testing::AssertionSuccess();
}

TEST(AdamwDeviceScaleGpuTest, MatchesTheHostScaleBitForBit) {
  SKIP_WITHOUT_GPU();
  auto rng = rng_for_test();
  const std::vector<Shape> shapes = {{1}, {1000}, {0}, {33, 5}, {65537}, {7}, {300000}, {40001, 3}};
  const auto n = static_cast<int64_t>(shapes.size());
  const int64_t split = 4;  // the first four are "dense", the rest "expert"
  std::vector<Tensor> grads;
  for (const Shape& shape : shapes) grads.push_back(random_normal(shape, rng).to(kGpu));
  // The host's way: squares read back, each part added in order, the norm, the scale.
  const std::vector<double> squares = sum_squares_each(grads);
  double dense = 0, expert = 0;
  for (int64_t i = 0; i < n; ++i) (i < split ? dense : expert) += squares[i];
  const double norm = std::sqrt(dense + expert);

  // 8-byte slots on the GPU: the squares, then the scale.
  const Tensor buffer = Tensor::empty({n + 1}, DType::kI64, kGpu);
  auto* device_squares = static_cast<double*>(buffer.raw());
  auto* device_scale = reinterpret_cast<float*>(device_squares + n);
  const float active = static_cast<float>(norm / 3);
  for (const float clip : {0.0f, static_cast<float>(2 * norm), active}) {
    const float scale = clip_scale(norm, clip);
    EXPECT_EQ(scale < 1.0f, clip == active) << "clip " << clip;
    cuda::sum_squares_each(grads, device_squares);
    cuda::clip_scale_from_squares(device_squares, n, split, clip, device_scale);
    const Tensor host = buffer.to(Device::cpu());
    float from_gpu = 0;
    std::memcpy(&from_gpu, static_cast<const double*>(host.raw()) + n, sizeof(float));
    EXPECT_EQ(from_gpu, scale) << "clip " << clip;

    // Two copies of one state: the update with the host's number and with the GPU's.
    std::vector<AdamWTensors> with_host, with_device;
    for (size_t i = 0; i < grads.size(); ++i) {
      with_host.push_back(random_state(grads[i], i % 2 ? 0.1f : 0.0f, rng));
      with_device.push_back(clone_state(with_host.back()));
    }
    AdamWParams host_params{.lr = 3e-3f, .step = 3, .grad_scale = scale};
    AdamWParams device_params{.lr = 3e-3f, .step = 3, .grad_scale_device = device_scale};
    adamw_step_many(with_host, host_params);
    adamw_step_many(with_device, device_params);
    // One tensor alone: the single-tensor kernel reads the scale the same way.
    const AdamWTensors& last = with_host.back();
    AdamWTensors alone_host = clone_state(last), alone_device = clone_state(last);
    adamw_step(alone_host.param, alone_host.grad, alone_host.m, alone_host.v, host_params,
               alone_host.copy);
    adamw_step(alone_device.param, alone_device.grad, alone_device.m, alone_device.v, device_params,
               alone_device.copy);
    for (size_t i = 0; i < grads.size(); ++i)
      EXPECT_TRUE(same_bits(with_device[i], with_host[i])) << "entry " << i << ", clip " << clip;
    EXPECT_TRUE(same_bits(alone_device, alone_host)) << "adamw_step, clip " << clip;
  }
}
#endif

// A group of two whose host sums add nothing, as if the other rank held experts with zero
// gradients: it sends the optimizer down its host path (the expert squares summed over the EP
// group on the host) to the norm one rank computes. The optimizer calls nothing else.
class TwoRanksAddingNothing final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  void all_reduce_host(std::span<double>, ReduceOp) override {}
  void all_reduce(const Tensor&, ReduceOp) override { unexpected("all_reduce"); }
  void reduce_scatter(const Tensor&, const Tensor&, ReduceOp) override {
    unexpected("reduce_scatter");
  }
  void all_gather(const Tensor&, const Tensor&) override { unexpected("all_gather"); }
  void all_to_all_v(const Tensor&, const std::vector<int64_t>&, const Tensor&,
                    const std::vector<int64_t>&) override {
    unexpected("all_to_all_v");
  }
  std::vector<int64_t> exchange_counts(const std::vector<int64_t>&) override {
    unexpected("exchange_counts");
    return {};
  }
  void broadcast(const Tensor&, int) override { unexpected("broadcast"); }
  void barrier() override { unexpected("barrier"); }
  std::unique_ptr<Communicator> split(int, int) override {
    unexpected("split");
    return nullptr;
  }
  std::vector<std::string> all_gather_host(const std::string&) override {
    unexpected("all_gather_host");
    return {};
  }

 private:
  static void unexpected(const char* what) { ADD_FAILURE() << "the optimizer called " << what; }
};

// Dense and expert parameters interleaved (the norm adds each group in registration order),
// matrices with bf16 compute copies, one without decay and one frozen.
void add_params(ParamStore& store) {
  store.add("embed", {100, 33}, SyncGroup::kDense, Init::kNormal, 0.02f, true);
  store.add("experts.w1", {4, 20001}, SyncGroup::kExpert, Init::kNormal, 0.02f, true);
  store.add("norm", {33}, SyncGroup::kDense, Init::kOnes, 0, false);
  store.add("experts.w2", {4, 333, 7}, SyncGroup::kExpert, Init::kNormal, 0.02f, true);
  store.add("router.bias", {4}, SyncGroup::kDense, Init::kZeros, 0, false).trainable = false;
  store.add("head", {33, 257}, SyncGroup::kDense, Init::kNormal, 0.02f, true);
}

class AdamWOptimizerGpuTest : public ::testing::TestWithParam<DType> {};

TEST_P(AdamWOptimizerGpuTest, ClipScaleOnTheGpuMatchesTheHostPathBitForBit) {
  SKIP_WITHOUT_GPU();
  ParamStore gpu_clip(kGpu, DType::kBF16), gpu_clip_again(kGpu, DType::kBF16),
      host_clip(kGpu, DType::kBF16);
  for (ParamStore* store : {&gpu_clip, &gpu_clip_again, &host_clip}) {
    add_params(*store);
    store->initialize(7);
  }
  const OptimizerSettings settings{
      .weight_decay = 0.1f, .grad_clip = 1.0f, .moment_dtype = GetParam()};
  TwoRanksAddingNothing ep;
  AdamW on_gpu(gpu_clip, settings), on_gpu_again(gpu_clip_again, settings);
  AdamW on_host(host_clip, settings, {.ep = &ep});
  auto rng = rng_for_test();
  for (int step = 1; step <= 4; ++step) {
    // Odd steps: a norm in the hundreds, clipped. Even steps: ~0.03, not clipped.
    const float grad_std = step % 2 ? 1.0f : 1e-4f;
    std::vector<Param*> params[] = {gpu_clip.params(), gpu_clip_again.params(), host_clip.params()};
    for (size_t i = 0; i < params[0].size(); ++i) {
      const Tensor grad = random_normal(params[0][i]->grad.shape(), rng, grad_std);
      for (auto& store_params : params) {
        store_params[i]->grad.copy_from(grad);
        store_params[i]->grad_unwritten = false;
      }
    }
    const double norm = on_gpu.step(3e-3f);
    EXPECT_EQ(norm > settings.grad_clip, step % 2 == 1) << "step " << step;
    EXPECT_EQ(on_host.step(3e-3f), norm) << "step " << step;
    EXPECT_EQ(on_gpu_again.step(3e-3f), norm) << "step " << step;
    for (size_t i = 0; i < params[0].size(); ++i) {
      const std::string where = params[0][i]->name + ", step " + std::to_string(step);
      for (auto* other : {&params[1], &params[2]}) {
        EXPECT_TRUE(all_close((*other)[i]->value, params[0][i]->value, 0, 0)) << where;
        if (params[0][i]->compute.defined()) {
          EXPECT_TRUE(all_close((*other)[i]->compute, params[0][i]->compute, 0, 0)) << where;
        }
      }
    }
    const auto state = on_gpu.state();
    for (const auto& [name, t] : state) EXPECT_EQ(t.dtype(), GetParam()) << name;
    for (const AdamW* other : {&on_gpu_again, &on_host}) {
      const auto other_state = other->state();
      ASSERT_EQ(other_state.size(), state.size());
      for (size_t i = 0; i < state.size(); ++i)
        EXPECT_TRUE(all_close(other_state[i].second, state[i].second, 0, 0))
            << state[i].first << ", step " << step;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Moments, AdamWOptimizerGpuTest,
                         ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// A diverged step (a NaN or an infinity in one gradient) on the GPU's own clip-scale path and
// on the host path: the norm comes back non-finite, and parameters, compute copies, moments and
// the step count are bit for bit as before it; the next finite step then matches between them.
TEST_P(AdamWOptimizerGpuTest, ANonFiniteNormChangesNothingOnEitherPath) {
  SKIP_WITHOUT_GPU();
  ParamStore gpu_clip(kGpu, DType::kBF16), host_clip(kGpu, DType::kBF16);
  for (ParamStore* store : {&gpu_clip, &host_clip}) {
    add_params(*store);
    store->initialize(11);
  }
  const OptimizerSettings settings{
      .weight_decay = 0.1f, .grad_clip = 1.0f, .moment_dtype = GetParam()};
  TwoRanksAddingNothing ep;
  AdamW on_gpu(gpu_clip, settings), on_host(host_clip, settings, {.ep = &ep});
  auto rng = rng_for_test();
  std::vector<Param*> params[] = {gpu_clip.params(), host_clip.params()};
  auto set_grads = [&](float bad) {
    for (size_t i = 0; i < params[0].size(); ++i) {
      Tensor grad = random_normal(params[0][i]->grad.shape(), rng, 1.0f);
      if (bad != 0 && i == 1) grad.data<float>()[17] = bad;  // an expert gradient
      for (auto& store_params : params) {
        store_params[i]->grad.copy_from(grad.to(kGpu));
        store_params[i]->grad_unwritten = false;
      }
    }
  };
  set_grads(0);
  ASSERT_EQ(on_gpu.step(3e-3f), on_host.step(3e-3f));
  for (float bad : {std::nanf(""), INFINITY}) {
    std::vector<Tensor> before;
    for (const Param* p : params[0]) {
      before.push_back(p->value.to(Device::cpu()));
      if (p->compute.defined()) before.push_back(p->compute.to(Device::cpu()));
    }
    for (const auto& [name, t] : on_gpu.state()) before.push_back(t.to(Device::cpu()));
    set_grads(bad);
    EXPECT_FALSE(std::isfinite(on_gpu.step(3e-3f))) << bad;
    EXPECT_FALSE(std::isfinite(on_host.step(3e-3f))) << bad;
    EXPECT_EQ(on_gpu.steps_taken(), 1);
    EXPECT_EQ(on_host.steps_taken(), 1);
    size_t k = 0;
    for (const Param* p : params[0]) {
      EXPECT_TRUE(all_close(p->value, before[k++], 0, 0)) << p->name << " " << bad;
      if (p->compute.defined())
        EXPECT_TRUE(all_close(p->compute, before[k++], 0, 0)) << p->name << " copy " << bad;
    }
    for (const auto& [name, t] : on_gpu.state())
      EXPECT_TRUE(all_close(t, before[k++], 0, 0)) << name << " " << bad;
  }
  set_grads(0);
  const double norm = on_gpu.step(3e-3f);
  EXPECT_TRUE(std::isfinite(norm));
  EXPECT_EQ(on_host.step(3e-3f), norm);
  EXPECT_EQ(on_gpu.steps_taken(), 2);
  for (size_t i = 0; i < params[0].size(); ++i)
    EXPECT_TRUE(all_close(params[1][i]->value, params[0][i]->value, 0, 0)) << params[0][i]->name;
}

}  // namespace
}  // namespace sy
