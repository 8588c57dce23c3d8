// adamw_step: three steps of a 3-element parameter against numbers worked out by hand (and
// confirmed in double outside this code), random tensors against a double replica of the
// update, and a zero gradient without decay leaving the parameter untouched. bf16 moments: bit
// for bit a reference written out here (the f32 update from the widened moments, the new moments
// rounded to nearest even), and close to the f32-moment run. adamw_step_many: the same updates as
// adamw_step one tensor at a time, for either moment dtype, and its argument checks naming the
// entry.
// clip_scale: 1 when clipping is off or the norm is within the clip, else clip / (norm + 1e-6);
// a scale in device memory is refused for CPU tensors.
#include "kernels/adamw.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::all_close;
using testing::random_normal;
using testing::rng_for_test;

// Step 1 by hand: m = 0.1 g, v = 0.05 g^2, so m_hat = g, v_hat = g^2 and the Adam direction
// is sign(g) (eps shifts it by 1e-7). With lr 0.1, weight_decay 0.1:
//   p = 1.0 - 0.1 (+1 + 0.1 * 1.0)  =  0.89
//   p = -2.0 - 0.1 (-1 + 0.1 * -2.0) = -1.88
//   p = 0.5 - 0.1 (+1 + 0.1 * 0.5)  =  0.395
// Step 2, first element: m = 0.9 * 0.01 + 0.1 * -0.1 = -0.001, m_hat = -0.001 / 0.19;
// v = 0.95 * 0.0005 + 0.05 * 0.01 = 0.000975, v_hat = 0.000975 / 0.0975 = 0.01;
//   p = 0.89 - 0.1 (-0.00526316 / 0.1 + 0.1 * 0.89) = 0.886363167.
// f32 arithmetic against these double values: rtol 1e-6.
TEST(AdamWTest, MatchesHandComputedSteps) {
  Tensor param = Tensor::from_f32({1.0f, -2.0f, 0.5f}, {3});
  Tensor m = Tensor::zeros({3}), v = Tensor::zeros({3});
  const std::vector<std::vector<float>> grads = {
      {0.1f, -0.2f, 0.3f}, {-0.1f, 0.4f, 0.3f}, {0.05f, 0.0f, -0.3f}};
  const std::vector<std::vector<double>> expected_param = {{0.89, -1.88, 0.395},
                                                           {0.886363167, -1.8975374, 0.291050007},
                                                           {0.859877368, -1.90701412, 0.261940245}};
  const std::vector<std::vector<double>> expected_m = {
      {0.01, -0.02, 0.03}, {-0.001, 0.022, 0.057}, {0.0041, 0.0198, 0.0213}};
  const std::vector<std::vector<double>> expected_v = {
      {0.0005, 0.002, 0.0045}, {0.000975, 0.0099, 0.008775}, {0.00105125, 0.009405, 0.01283625}};
  AdamWParams p{.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
  for (int s = 0; s < 3; ++s) {
    p.step = s + 1;
    adamw_step(param, Tensor::from_f32(grads[s], {3}), m, v, p);
    EXPECT_TRUE(all_close(param, expected_param[s], 1e-6, 0)) << "step " << p.step;
    EXPECT_TRUE(all_close(m, expected_m[s], 1e-6, 1e-9)) << "step " << p.step;
    EXPECT_TRUE(all_close(v, expected_v[s], 1e-6, 1e-9)) << "step " << p.step;
  }
}

class AdamWShapeTest : public ::testing::TestWithParam<Shape> {};

// Elementwise f32 against double: rtol 1e-5 / atol 1e-6 over five steps.
TEST_P(AdamWShapeTest, MatchesDoubleReplica) {
  auto rng = rng_for_test();
  Tensor param = random_normal(GetParam(), rng);
  Tensor m = Tensor::zeros(GetParam()), v = Tensor::zeros(GetParam());
  std::vector<float> start = param.to_f32_vector();
  std::vector<double> ref_p(start.begin(), start.end()), ref_m(ref_p.size()), ref_v(ref_p.size());
  AdamWParams p{.lr = 3e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.05f};
  Tensor copy = Tensor::empty(GetParam(), DType::kBF16);
  for (p.step = 1; p.step <= 5; ++p.step) {
    Tensor grad = random_normal(GetParam(), rng);
    p.grad_scale = p.step % 2 ? 1.0f : 0.25f;  // clipping, folded into the update
    const std::vector<float> grad_before = grad.to_f32_vector();
    adamw_step(param, grad, m, v, p, copy);
    EXPECT_EQ(grad.to_f32_vector(), grad_before) << "the gradient is not written";
    // The bf16 copy is the updated parameter, rounded.
    EXPECT_TRUE(all_close(copy.to(DType::kF32), param.to(DType::kBF16).to(DType::kF32), 0, 0));
    std::vector<float> g = grad.to_f32_vector();
    for (float& x : g) x *= p.grad_scale;
    for (size_t i = 0; i < ref_p.size(); ++i) {
      ref_m[i] = double{p.beta1} * ref_m[i] + (1 - double{p.beta1}) * g[i];
      ref_v[i] = double{p.beta2} * ref_v[i] + (1 - double{p.beta2}) * g[i] * g[i];
      const double m_hat = ref_m[i] / (1 - std::pow(double{p.beta1}, p.step));
      const double v_hat = ref_v[i] / (1 - std::pow(double{p.beta2}, p.step));
      ref_p[i] -= p.lr * (m_hat / (std::sqrt(v_hat) + p.eps) + p.weight_decay * ref_p[i]);
    }
  }
  EXPECT_TRUE(all_close(param, ref_p, 1e-5, 1e-6));
  EXPECT_TRUE(all_close(m, ref_m, 1e-5, 1e-6));
  EXPECT_TRUE(all_close(v, ref_v, 1e-5, 1e-7));
}

INSTANTIATE_TEST_SUITE_P(Shapes, AdamWShapeTest,
                         ::testing::Values(Shape{1}, Shape{7}, Shape{33, 5}, Shape{2, 3, 17}));

// bf16 moments against the update written out element by element: the moments read widened, the
// f32 arithmetic of kernels/cpu/adamw.cc on them, the parameter updated from the new moments
// before rounding, then the moments stored rounded to nearest even. The same f32 expressions in
// the same order: the same bits. Non-zero starting moments, decay, clipping, the bf16 copy.
class AdamWBf16MomentsTest : public ::testing::TestWithParam<Shape> {};

TEST_P(AdamWBf16MomentsTest, MatchesTheRoundedMomentsReference) {
  auto rng = rng_for_test();
  const Shape shape = GetParam();
  Tensor param = random_normal(shape, rng);
  Tensor m = random_normal(shape, rng, 0.1f).to(DType::kBF16);
  Tensor v = random_normal(shape, rng, 0.1f);
  for (int64_t i = 0; i < v.numel(); ++i) v.data<float>()[i] *= v.data<float>()[i];
  v = v.to(DType::kBF16);
  std::vector<float> ref_p = param.to_f32_vector();
  std::vector<bf16> ref_m(m.data<bf16>(), m.data<bf16>() + m.numel());
  std::vector<bf16> ref_v(v.data<bf16>(), v.data<bf16>() + v.numel());
  Tensor copy = Tensor::empty(shape, DType::kBF16);
  AdamWParams p{.lr = 3e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.05f};
  for (p.step = 1; p.step <= 6; ++p.step) {
    const Tensor grad = random_normal(shape, rng);
    p.grad_scale = p.step % 3 ? 1.0f : 0.25f;
    adamw_step(param, grad, m, v, p, copy);
    const float c1 = static_cast<float>(1.0 - std::pow(double{p.beta1}, p.step));
    const float c2 = static_cast<float>(1.0 - std::pow(double{p.beta2}, p.step));
    const float* g = grad.data<float>();
    for (size_t i = 0; i < ref_p.size(); ++i) {
      const float gi = g[i] * p.grad_scale;
      const float mi = p.beta1 * bf16_to_f32(ref_m[i]) + (1.0f - p.beta1) * gi;
      const float vi = p.beta2 * bf16_to_f32(ref_v[i]) + (1.0f - p.beta2) * gi * gi;
      const float m_hat = mi / c1, v_hat = vi / c2;
      ref_p[i] -= p.lr * (m_hat / (std::sqrt(v_hat) + p.eps) + p.weight_decay * ref_p[i]);
      ref_m[i] = f32_to_bf16(mi);
      ref_v[i] = f32_to_bf16(vi);
    }
    const std::string where = "step " + std::to_string(p.step);
    ASSERT_EQ(m.dtype(), DType::kBF16);
    ASSERT_EQ(v.dtype(), DType::kBF16);
    EXPECT_EQ(param.to_f32_vector(), ref_p) << where;
    for (size_t i = 0; i < ref_p.size(); ++i) {
      EXPECT_EQ(m.data<bf16>()[i].bits, ref_m[i].bits) << "m[" << i << "], " << where;
      EXPECT_EQ(v.data<bf16>()[i].bits, ref_v[i].bits) << "v[" << i << "], " << where;
    }
    EXPECT_TRUE(all_close(copy.to(DType::kF32), param.to(DType::kBF16).to(DType::kF32), 0, 0))
        << where;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AdamWBf16MomentsTest,
                         ::testing::Values(Shape{1}, Shape{7}, Shape{33, 5}, Shape{2, 3, 17}));

// Rounding the moments perturbs each stored moment by at most 2^-8 relative, and that error
// decays with beta as new steps add theirs: over ten steps from one start, the moments stay within
// 2% of their largest magnitude of the f32-moment run's, and the parameters within a fifth of one
// step (lr) of its parameters (a missed or doubled update, or a flipped sign, moves them ~lr).
TEST(AdamWBf16MomentsDriftTest, StaysCloseToTheF32MomentRun) {
  auto rng = rng_for_test();
  const Shape shape = {500};
  Tensor param = random_normal(shape, rng), param16 = param.clone();
  Tensor m = Tensor::zeros(shape), v = Tensor::zeros(shape);
  Tensor m16 = Tensor::zeros(shape, DType::kBF16), v16 = Tensor::zeros(shape, DType::kBF16);
  AdamWParams p{.lr = 1e-3f, .weight_decay = 0.1f};
  for (p.step = 1; p.step <= 10; ++p.step) {
    const Tensor grad = random_normal(shape, rng);
    adamw_step(param, grad, m, v, p);
    adamw_step(param16, grad, m16, v16, p);
  }
  auto peak = [](const Tensor& t) {
    double most = 0;
    for (float x : t.to_f32_vector()) most = std::max(most, std::fabs(double{x}));
    return most;
  };
  EXPECT_TRUE(all_close(param16, param, 0, 0.2 * p.lr));
  EXPECT_TRUE(all_close(m16, m, 0, 0.02 * peak(m)));
  EXPECT_TRUE(all_close(v16, v, 0, 0.02 * peak(v)));
}

TEST(AdamWTest, ZeroGradientWithoutDecayLeavesParameterUnchanged) {
  auto rng = rng_for_test();
  Tensor param = random_normal({4, 9}, rng), before = param.clone();
  Tensor m = Tensor::zeros({4, 9}), v = Tensor::zeros({4, 9});
  adamw_step(param, Tensor::zeros({4, 9}), m, v, AdamWParams{.weight_decay = 0.0f, .step = 1});
  EXPECT_TRUE(all_close(param, before, 0, 0));
}

// One entry of a many-tensor step and its copy for the one-at-a-time reference.
struct Replica {
  AdamWTensors many, one;
};

Replica random_replica(const Shape& shape, bool with_copy, float weight_decay, std::mt19937_64& rng,
                       DType moments = DType::kF32) {
  Tensor param = random_normal(shape, rng), m = random_normal(shape, rng, 0.1f).to(moments);
  Tensor v = random_normal(shape, rng, 0.1f);
  for (int64_t i = 0; i < v.numel(); ++i) v.data<float>()[i] *= v.data<float>()[i];
  v = v.to(moments);
  auto copy = [&] { return with_copy ? Tensor::empty(shape, DType::kBF16) : Tensor(); };
  Tensor grad = random_normal(shape, rng);
  return {{param.clone(), grad.clone(), m.clone(), v.clone(), copy(), weight_decay},
          {param, grad, m, v, copy(), weight_decay}};
}

// Odd sizes, an empty tensor, entries with and without the bf16 copy and weight decay, over
// steps with clipping folded in, f32 or bf16 moments: bit for bit what adamw_step does to each
// tensor alone.
class AdamWManyMomentsTest : public ::testing::TestWithParam<DType> {};

TEST_P(AdamWManyMomentsTest, MatchesOneTensorAtATime) {
  auto rng = rng_for_test();
  const std::vector<Shape> shapes = {{1}, {3}, {0}, {33, 5}, {1000}, {2, 3, 17}, {4099}};
  std::vector<Replica> replicas;
  for (size_t i = 0; i < shapes.size(); ++i) {
    replicas.push_back(
        random_replica(shapes[i], i % 2 == 0, i % 3 ? 0.1f : 0.0f, rng, /*moments=*/GetParam()));
  }
  std::vector<AdamWTensors> many;
  for (const Replica& r : replicas) many.push_back(r.many);
  for (int64_t step = 1; step <= 3; ++step) {
    const AdamWParams p{
        .lr = 3e-3f, .beta2 = 0.999f, .step = step, .grad_scale = step == 2 ? 0.5f : 1.0f};
    for (Replica& r : replicas) {
      // A fresh gradient each step, the same for both.
      Tensor grad = random_normal(r.one.param.shape(), rng);
      r.many.grad.copy_from(grad);
      r.one.grad.copy_from(grad);
    }
    adamw_step_many(many, p);
    for (const Replica& r : replicas) {
      AdamWParams own = p;
      own.weight_decay = r.one.weight_decay;
      adamw_step(r.one.param, r.one.grad, r.one.m, r.one.v, own, r.one.copy);
    }
    for (size_t i = 0; i < replicas.size(); ++i) {
      const Replica& r = replicas[i];
      EXPECT_TRUE(all_close(r.many.param, r.one.param, 0, 0)) << "param " << i << " step " << step;
      EXPECT_TRUE(all_close(r.many.m, r.one.m, 0, 0)) << "m " << i << " step " << step;
      EXPECT_TRUE(all_close(r.many.v, r.one.v, 0, 0)) << "v " << i << " step " << step;
      if (r.one.copy.defined())
        EXPECT_TRUE(all_close(r.many.copy.to(DType::kF32), r.one.copy.to(DType::kF32), 0, 0))
            << "copy " << i << " step " << step;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Moments, AdamWManyMomentsTest,
                         ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(AdamWManyTest, NoTensorsIsANoOp) { adamw_step_many({}, AdamWParams{}); }

TEST(AdamWManyDeathTest, ChecksNameTheEntry) {
  auto rng = rng_for_test();
  auto entries = [&] {
    std::vector<AdamWTensors> t;
    for (const Shape& shape : {Shape{4}, Shape{3}})
      t.push_back(random_replica(shape, true, 0.1f, rng).many);
    return t;
  };
  std::vector<AdamWTensors> t = entries();
  t[1].grad = Tensor::zeros({4});
  EXPECT_DEATH(adamw_step_many(t, {}), "tensors\\[1\\]\\.grad has shape \\[4\\], expected \\[3\\]");
  t = entries();
  t[0].v = Tensor::zeros({4}, DType::kBF16);
  EXPECT_DEATH(adamw_step_many(t, {}), "tensors\\[0\\]\\.v is bf16, expected f32");
  t = entries();
  t[0].m = Tensor::zeros({4}, DType::kBF16);
  EXPECT_DEATH(adamw_step_many(t, {}), "tensors\\[0\\]\\.v is f32, expected bf16");
  t = entries();
  t[0].m = Tensor::zeros({4}, DType::kI32);
  EXPECT_DEATH(adamw_step_many(t, {}), "tensors\\[0\\]\\.m is i32, expected f32 or bf16");
  t = entries();
  t[1].m = Tensor::zeros({3}, DType::kBF16);
  t[1].v = Tensor::zeros({3}, DType::kBF16);
  EXPECT_DEATH(adamw_step_many(t, {}),
               "tensors\\[1\\]\\.m is bf16, tensors\\[0\\]\\.m f32; one moment dtype per call");
  t = entries();
  t[1].param = Tensor::zeros({3}, DType::kBF16);
  EXPECT_DEATH(adamw_step_many(t, {}), "tensors\\[1\\]\\.param is bf16, expected f32");
  t = entries();
  t[1].copy = Tensor::zeros({3});
  EXPECT_DEATH(adamw_step_many(t, {}), "tensors\\[1\\]\\.copy is f32, expected bf16");
  t = entries();
  t[0].m = Tensor();
  EXPECT_DEATH(adamw_step_many(t, {}), "tensors\\[0\\]\\.m is undefined");
  t = entries();
  EXPECT_DEATH(adamw_step_many(t, {.weight_decay = 0.1f}), "weight decay per entry");
  EXPECT_DEATH(adamw_step_many(t, {.step = 0}), "step 0 \\(steps count from 1\\)");
  const float scale = 0.5f;
  EXPECT_DEATH(adamw_step_many(t, {.grad_scale_device = &scale}),
               "adamw_step_many: grad_scale_device is set for tensors on cpu");
  EXPECT_DEATH(adamw_step(t[0].param, t[0].grad, t[0].m, t[0].v, {.grad_scale_device = &scale}),
               "adamw: grad_scale_device is set for tensors on cpu");
}

TEST(ClipScaleTest, ScalesDownOnlyPastTheClip) {
  EXPECT_EQ(clip_scale(5.0, 0.0f), 1.0f);  // clipping off
  EXPECT_EQ(clip_scale(0.5, 1.0f), 1.0f);
  EXPECT_EQ(clip_scale(1.0, 1.0f), 1.0f);  // at the clip: not past it
  EXPECT_EQ(clip_scale(5.0, 1.0f), static_cast<float>(1.0 / (5.0 + 1e-6)));
  EXPECT_EQ(clip_scale(4.0, 0.5f), static_cast<float>(0.5 / (4.0 + 1e-6)));
  // A non-finite norm gives NaN, which makes the step a no-op (a diverged step is skipped).
  EXPECT_TRUE(std::isnan(clip_scale(std::nan(""), 1.0f)));
  EXPECT_TRUE(std::isnan(clip_scale(INFINITY, 0.0f)));
}

}  // namespace
}  // namespace sy
