// Whole-model checks on a tiny MoE transformer with MTP: every parameter's gradient against
// finite differences (with each load-balancing term switched on in turn), the balancing
// terms against an independent double-precision computation, capacity dropping and the
// auxiliary-loss-free bias.
#include "models/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <span>

#include "gtest/gtest.h"
#include "kernels/elementwise.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

ModelSpec tiny_spec() {
  ModelSpec s;
  s.vocab_size = 11;
  s.d_model = 8;
  s.n_layers = 2;
  s.n_heads = 2;
  s.n_kv_heads = 1;
  s.seq_len = 6;
  s.dense_ffn_hidden = 12;
  s.first_k_dense = 1;
  s.init_std = 0.3f;  // large enough that every path carries a visible gradient
  s.moe.num_experts = 4;
  s.moe.top_k = 2;
  s.moe.expert_hidden = 6;
  s.mtp_modules = 1;
  s.mtp_loss_weight = 0.5f;
  return s;
}

struct Batch {
  Tensor inputs, targets;
};

Batch random_batch(const ModelSpec& s, int64_t b, int64_t t, std::mt19937_64& rng) {
  Batch batch{testing::random_ints({b, t}, 0, s.vocab_size, rng),
              testing::random_ints({b, t}, 0, s.vocab_size, rng)};
  batch.targets.data<int32_t>()[1] = kIgnoreIndex;  // ignored targets must carry no loss
  return batch;
}

LossScales scales_for(Transformer& model, const Tensor& targets) {
  TargetCounts c = model.count_targets(targets);
  LossScales s;
  s.lm = 1.0 / c.lm;
  for (int64_t n : c.mtp) s.mtp.push_back(model.spec().mtp_loss_weight / c.mtp.size() / n);
  return s;
}

struct Variant {
  const char* name;
  void (*apply)(ModelSpec&);
};

class WholeModelGradient : public ::testing::TestWithParam<Variant> {};

TEST_P(WholeModelGradient, EveryParameterMatchesFiniteDifferences) {
  ModelSpec spec = tiny_spec();
  GetParam().apply(spec);
  ParamStore store;
  Transformer model(spec, store);
  store.initialize(7);
  auto rng = testing::rng_for_test();
  Batch batch = random_batch(spec, 2, spec.seq_len, rng);
  const LossScales scales = scales_for(model, batch.targets);

  store.zero_grad();
  model.forward_backward(batch.inputs, batch.targets, scales);
  std::map<std::string, Tensor> analytic;
  for (Param* p : store.params()) analytic[p->name] = p->grad.clone();

  auto loss = [&] { return model.forward_backward(batch.inputs, batch.targets, scales).total(); };
  testing::GradCheckOptions options{.eps = 2e-3, .rtol = 3e-2, .atol = 2e-4, .max_elements = 6};
  for (Param* p : store.params()) {
    if (!p->trainable) continue;
    EXPECT_TRUE(testing::grad_check(loss, p->value, analytic[p->name], rng, options))
        << "parameter " << p->name;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Variants, WholeModelGradient,
    ::testing::Values(Variant{"plain", [](ModelSpec&) {}},
                      Variant{"aux_loss", [](ModelSpec& s) { s.moe.aux_loss_coef = 0.5f; }},
                      Variant{"z_loss", [](ModelSpec& s) { s.moe.z_loss_coef = 0.5f; }},
                      Variant{"seq_aux_loss", [](ModelSpec& s) { s.moe.seq_aux_loss_coef = 0.5f; }},
                      Variant{"sigmoid_groups_normalized_shared_tied",
                              [](ModelSpec& s) {
                                s.moe.score_function = ScoreFunction::kSigmoid;
                                s.moe.normalize_topk = true;
                                s.moe.route_scale = 2.0f;
                                s.moe.n_groups = 2;
                                s.moe.topk_groups = 1;
                                s.moe.num_shared_experts = 1;
                                s.moe.aux_loss_coef = 0.3f;
                                s.moe.seq_aux_loss_coef = 0.3f;
                                s.moe.z_loss_coef = 0.3f;
                                s.tie_embeddings = true;
                                s.n_kv_heads = 2;
                              }},
                      Variant{"capacity_two_mtp_modules",
                              [](ModelSpec& s) {
                                s.moe.capacity_factor = 0.75;
                                s.mtp_modules = 2;
                                s.first_k_dense = 0;
                              }},
                      // Qwen3's attention: heads wider than d_model / n_heads, each q and k
                      // head RMS-normalised before the rotation.
                      Variant{"qk_norm_wide_heads",
                              [](ModelSpec& s) {
                                s.qk_norm = true;
                                s.head_dim_override = 6;
                                s.moe.normalize_topk = true;
                              }}),
    [](const auto& info) { return std::string(info.param.name); });

// Reference for one MoE layer's balancing terms, in double, from the router logits.
struct Balance {
  double aux = 0, seq_aux = 0, z = 0;
  std::vector<double> load;
};

Balance reference_balance(const std::vector<double>& logits, int64_t b, int64_t t, int e, int k,
                          bool sigmoid) {
  const int64_t n = b * t;
  Balance out;
  out.load.assign(e, 0);
  std::vector<double> seq_load(b * e, 0), p(n * e);
  for (int64_t r = 0; r < n; ++r) {
    std::vector<double> s(e);
    double mx = -1e300, sum = 0, total = 0;
    for (int j = 0; j < e; ++j) mx = std::max(mx, logits[r * e + j]);
    for (int j = 0; j < e; ++j) sum += std::exp(logits[r * e + j] - mx);
    for (int j = 0; j < e; ++j) {
      s[j] =
          sigmoid ? 1 / (1 + std::exp(-logits[r * e + j])) : std::exp(logits[r * e + j] - mx) / sum;
      total += s[j];
    }
    const double lse = mx + std::log(sum);
    out.z += lse * lse / n;
    std::vector<int> order(e);
    for (int j = 0; j < e; ++j) order[j] = j;
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return s[x] > s[y]; });
    for (int j = 0; j < k; ++j) {
      out.load[order[j]] += 1;
      seq_load[(r / t) * e + order[j]] += 1;
    }
    for (int j = 0; j < e; ++j) p[r * e + j] = s[j] / total;
  }
  for (int j = 0; j < e; ++j) {
    double pm = 0;
    for (int64_t r = 0; r < n; ++r) pm += p[r * e + j] / n;
    out.aux += e * out.load[j] / double(k * n) * pm;
  }
  for (int64_t q = 0; q < b; ++q) {
    for (int j = 0; j < e; ++j) {
      double pm = 0;
      for (int64_t i = 0; i < t; ++i) pm += p[(q * t + i) * e + j] / t;
      out.seq_aux += e * seq_load[q * e + j] / double(k * t) * pm / b;
    }
  }
  return out;
}

// The router logits a MoE layer computes for hidden states x: RMSNorm (gain 1) then W_r.
std::vector<double> router_logits(const Tensor& x, const Tensor& w, float eps) {
  const int64_t n = x.dim(0), d = x.dim(1), e = w.dim(0);
  std::vector<double> out(n * e);
  for (int64_t r = 0; r < n; ++r) {
    double ms = 0;
    for (int64_t i = 0; i < d; ++i)
      ms += double(x.data<float>()[r * d + i]) * x.data<float>()[r * d + i] / d;
    const double rstd = 1 / std::sqrt(ms + eps);
    for (int64_t j = 0; j < e; ++j) {
      double acc = 0;
      for (int64_t i = 0; i < d; ++i)
        acc += x.data<float>()[r * d + i] * rstd * w.data<float>()[j * d + i];
      out[r * e + j] = acc;
    }
  }
  return out;
}

class BalancingTerms : public ::testing::TestWithParam<bool> {};

TEST_P(BalancingTerms, MatchIndependentComputation) {
  ModelSpec spec = tiny_spec();
  spec.moe.score_function = GetParam() ? ScoreFunction::kSigmoid : ScoreFunction::kSoftmax;
  spec.moe.aux_loss_coef = 0.1f;
  spec.moe.seq_aux_loss_coef = 0.2f;
  spec.moe.z_loss_coef = 0.3f;
  spec.moe.num_experts = 5;
  ParamStore store;
  MoeFfn moe(store, "moe_test.", spec);
  store.initialize(3);
  auto rng = testing::rng_for_test();
  const int64_t b = 3, t = 5;
  Tensor x = testing::random_normal({b * t, spec.d_model}, rng);
  TokenLayout layout{b, t, Tensor::zeros({b, t}, DType::kI32)};
  moe.set_loss_scale(0.5f);
  moe.forward(x, layout);
  Balance ref = reference_balance(
      router_logits(x, store.find("moe_test.moe.router.weight")->value, spec.norm_eps), b, t, 5,
      spec.moe.top_k, GetParam());
  EXPECT_NEAR(moe.stats().aux_loss, 0.5 * 0.1 * ref.aux, 1e-6);
  EXPECT_NEAR(moe.stats().seq_aux_loss, 0.5 * 0.2 * ref.seq_aux, 1e-6);
  EXPECT_NEAR(moe.stats().z_loss, 0.5 * 0.3 * ref.z, 1e-6);
  for (int j = 0; j < 5; ++j) EXPECT_EQ(moe.stats().load[j], ref.load[j]) << "expert " << j;
}

INSTANTIATE_TEST_SUITE_P(ScoreFunctions, BalancingTerms, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "sigmoid" : "softmax"; });

TEST(MoeLayer, CapacityDropsExactlyTheOverflow) {
  ModelSpec spec = tiny_spec();
  spec.moe.capacity_factor = 0.5;
  ParamStore store;
  MoeFfn moe(store, "m.", spec);
  store.initialize(5);
  auto rng = testing::rng_for_test();
  const int64_t b = 2, t = 8, n = b * t;
  Tensor x = testing::random_normal({n, spec.d_model}, rng);
  moe.forward(x, TokenLayout{b, t, Tensor::zeros({b, t}, DType::kI32)});
  const int64_t capacity = expert_capacity(0.5, n, spec.moe.top_k, spec.moe.num_experts);
  EXPECT_EQ(capacity, 4);  // ceil(0.5 * 16 * 2 / 4)
  int64_t overflow = 0;
  for (double load : moe.stats().load) overflow += std::max<int64_t>(0, int64_t(load) - capacity);
  EXPECT_GT(overflow, 0) << "the test needs an overloaded expert";
  EXPECT_EQ(moe.stats().dropped, overflow);
}

TEST(MoeLayer, LossFreeBiasMovesTowardBalanceAndChangesSelectionOnly) {
  ModelSpec spec = tiny_spec();
  spec.moe.bias_update_rate = 0.25f;
  ParamStore store;
  MoeFfn moe(store, "m.", spec);
  store.initialize(11);
  ASSERT_NE(moe.bias(), nullptr);
  EXPECT_FALSE(moe.bias()->trainable);
  moe.stats().load = {10, 2, 4, 4};  // mean 5
  moe.update_bias();
  EXPECT_EQ(moe.bias()->value.to_f32_vector(), (std::vector<float>{-0.25f, 0.25f, 0.25f, 0.25f}));

  // A large bias on expert 2 puts it in every token's top-k, yet the output changes only
  // through which experts run: with the bias at zero again the forward is unchanged.
  auto rng = testing::rng_for_test();
  Tensor x = testing::random_normal({6, spec.d_model}, rng);
  TokenLayout layout{1, 6, Tensor::zeros({1, 6}, DType::kI32)};
  moe.bias()->value.zero_();
  Tensor base = moe.forward(x, layout).clone();
  moe.stats().reset(4);
  moe.bias()->value.data<float>()[2] = 100.0f;
  moe.forward(x, layout);
  EXPECT_EQ(moe.stats().load[2], 6);
  moe.bias()->value.zero_();
  EXPECT_TRUE(testing::all_close(moe.forward(x, layout), base, 0, 0));
}

// SWITCHYARD_EXPERT_GEMMS=batched (expert rows in zero-padded blocks, one batched GEMM per
// product) computes what the per-expert loop computes: the layer's output, its input
// gradient and every weight gradient, with and without capacity dropping.
TEST(MoeLayer, BatchedExpertGemmsMatchTheLoop) {
  for (double capacity_factor : {0.0, 0.75}) {
    ModelSpec spec = tiny_spec();
    spec.moe.num_experts = 5;
    spec.moe.capacity_factor = capacity_factor;
    auto rng = testing::rng_for_test();
    const int64_t b = 3, t = 7, n = b * t;
    const Tensor x = testing::random_normal({n, spec.d_model}, rng);
    const Tensor dy = testing::random_normal({n, spec.d_model}, rng);
    const TokenLayout layout{b, t, Tensor::zeros({b, t}, DType::kI32)};
    struct Result {
      Tensor out, dx;
      std::map<std::string, Tensor> grads;
    };
    auto run = [&](const char* mode) {
      setenv("SWITCHYARD_EXPERT_GEMMS", mode, 1);
      ParamStore store;
      MoeFfn moe(store, "m.", spec);
      store.initialize(7);
      Result r;
      r.out = moe.forward(x, layout).clone();
      r.dx = moe.backward(dy).clone();
      for (Param* p : store.params()) r.grads[p->name] = p->grad.clone();
      unsetenv("SWITCHYARD_EXPERT_GEMMS");
      return r;
    };
    const Result loop = run("loop"), batched = run("batched");
    EXPECT_TRUE(testing::all_close(batched.out, loop.out, 1e-6, 1e-6)) << capacity_factor;
    EXPECT_TRUE(testing::all_close(batched.dx, loop.dx, 1e-6, 1e-6)) << capacity_factor;
    ASSERT_EQ(batched.grads.size(), loop.grads.size());
    for (const auto& [name, g] : loop.grads) {
      EXPECT_TRUE(testing::all_close(batched.grads.at(name), g, 1e-6, 1e-6))
          << name << " capacity factor " << capacity_factor;
    }
  }
}

// The output head computed a few rows at a time (ModelSpec::head_chunk_rows; 3 rows here,
// the last chunk partial) gives the losses and gradients of computing it at once, for the
// main head and an MTP module's, tied and untied.
TEST(Transformer, ChunkedHeadMatchesTheWholeHead) {
  for (bool tied : {false, true}) {
    ModelSpec spec = tiny_spec();
    spec.mtp_modules = 1;
    spec.mtp_loss_weight = 0.3f;
    spec.tie_embeddings = tied;
    auto rng = testing::rng_for_test();
    Batch batch = random_batch(spec, 2, spec.seq_len, rng);
    struct Result {
      LossTerms terms;
      std::map<std::string, Tensor> grads;
    };
    auto run = [&](int64_t chunk_rows) {
      ModelSpec s = spec;
      s.head_chunk_rows = chunk_rows;
      ParamStore store;
      Transformer model(s, store);
      store.initialize(7);
      store.zero_grad();
      Result r;
      r.terms =
          model.forward_backward(batch.inputs, batch.targets, scales_for(model, batch.targets));
      for (Param* p : store.params()) r.grads[p->name] = p->grad.clone();
      return r;
    };
    const Result whole = run(1 << 20), chunked = run(3);
    ASSERT_GT(2 * spec.seq_len, 3) << "the test needs several chunks";
    EXPECT_NEAR(chunked.terms.lm, whole.terms.lm, 1e-6 * std::fabs(whole.terms.lm)) << tied;
    EXPECT_NEAR(chunked.terms.mtp, whole.terms.mtp, 1e-6 * std::fabs(whole.terms.mtp)) << tied;
    for (const auto& [name, g] : whole.grads) {
      EXPECT_TRUE(testing::all_close(chunked.grads.at(name), g, 1e-5, 1e-7)) << name << " " << tied;
    }
  }
}

// zero_grad() only marks gradients unwritten: the first writer overwrites (GEMMs with beta
// 0), writers that add zero the gradient first, finish_grads() zeroes what nobody wrote.
TEST(ParamStore, UnwrittenGradientsAreOverwrittenOrZeroed) {
  ParamStore store;
  Param& a = store.add("a", {2, 3}, SyncGroup::kDense, Init::kZeros, 0.0f, true);
  Param& b = store.add("b", {4}, SyncGroup::kDense, Init::kZeros, 0.0f, false);
  Param& c = store.add("c", {5}, SyncGroup::kDense, Init::kZeros, 0.0f, false);
  for (Param* p : store.params()) p->grad.fill_(std::nanf(""));  // last step's leftovers
  store.zero_grad();
  EXPECT_EQ(take_grad_beta(a), 0.0f) << "first writer overwrites";
  EXPECT_EQ(take_grad_beta(a), 1.0f) << "later writers add";
  EXPECT_EQ(grad_to_add(b).to_f32_vector(), std::vector<float>(4, 0.0f));
  b.grad.fill_(2.0f);
  EXPECT_EQ(grad_to_add(b).to_f32_vector(), std::vector<float>(4, 2.0f)) << "zeroed once";
  store.finish_grads();
  EXPECT_EQ(c.grad.to_f32_vector(), std::vector<float>(5, 0.0f)) << "nobody wrote c";
  EXPECT_EQ(b.grad.to_f32_vector(), std::vector<float>(4, 2.0f)) << "b was written";
  EXPECT_TRUE(std::isnan(a.grad.to_f32_vector()[0])) << "a's writer was to overwrite it";
}

// The MoE layer after zero_grad(): gradients holding anything (NaN here) are overwritten by
// the first backward, including the slices of experts that got no rows (zeroed), in both
// expert GEMM layouts; a second backward adds onto the first.
TEST(MoeLayer, FirstBackwardAfterZeroGradOverwritesEveryExpertsGradient) {
  ModelSpec spec = tiny_spec();
  spec.moe.num_experts = 5;
  auto rng = testing::rng_for_test();
  const int64_t b = 1, t = 2, n = b * t;  // 4 rows for 5 experts: one expert has none
  const Tensor x = testing::random_normal({n, spec.d_model}, rng);
  const Tensor dy = testing::random_normal({n, spec.d_model}, rng);
  const TokenLayout layout{b, t, Tensor::zeros({b, t}, DType::kI32)};
  for (const char* mode : {"loop", "batched"}) {
    setenv("SWITCHYARD_EXPERT_GEMMS", mode, 1);
    // Reference: gradients that start at zero, one backward.
    std::map<std::string, Tensor> want;
    {
      ParamStore store;
      MoeFfn moe(store, "m.", spec);
      store.initialize(7);
      for (Param* p : store.params()) p->grad.zero_();
      store.finish_grads();  // nothing unwritten: initialize's zero_grad is settled
      moe.forward(x, layout);
      moe.backward(dy);
      for (Param* p : store.params()) want[p->name] = p->grad.clone();
    }
    ParamStore store;
    MoeFfn moe(store, "m.", spec);
    store.initialize(7);
    for (Param* p : store.params()) p->grad.fill_(std::nanf(""));
    store.zero_grad();
    moe.forward(x, layout);
    moe.backward(dy);
    store.finish_grads();
    for (Param* p : store.params()) {
      EXPECT_TRUE(testing::all_close(p->grad, want.at(p->name), 0, 0)) << mode << " " << p->name;
    }
    const std::vector<float> w2 = store.find("m.moe.experts.w2")->grad.to_f32_vector();
    EXPECT_NE(std::count(w2.begin(), w2.end(), 0.0f), 0) << "the test needs an idle expert";
    moe.forward(x, layout);
    moe.backward(dy);
    for (Param* p : store.params()) {
      Tensor twice = want.at(p->name).clone();
      scale_(twice, 2.0f);
      EXPECT_TRUE(testing::all_close(p->grad, twice, 1e-6, 1e-7)) << mode << " " << p->name;
    }
    unsetenv("SWITCHYARD_EXPERT_GEMMS");
  }
}

TEST(MoeLayer, UnknownExpertGemmsModeIsAnError) {
  ModelSpec spec = tiny_spec();
  ParamStore store;
  MoeFfn moe(store, "m.", spec);
  store.initialize(3);
  auto rng = testing::rng_for_test();
  const Tensor x = testing::random_normal({4, spec.d_model}, rng);
  setenv("SWITCHYARD_EXPERT_GEMMS", "grouped", 1);
  EXPECT_DEATH(moe.forward(x, TokenLayout{1, 4, Tensor::zeros({1, 4}, DType::kI32)}),
               "SWITCHYARD_EXPERT_GEMMS=grouped: use loop, batched or auto");
  unsetenv("SWITCHYARD_EXPERT_GEMMS");
}

TEST(Transformer, InitIsDeterministicAndNamesAreStable) {
  ModelSpec spec = tiny_spec();
  ParamStore a, b;
  Transformer ma(spec, a), mb(spec, b);
  a.initialize(42);
  b.initialize(42);
  ASSERT_EQ(a.params().size(), b.params().size());
  for (size_t i = 0; i < a.params().size(); ++i)
    EXPECT_TRUE(testing::all_close(a.params()[i]->value, b.params()[i]->value, 0, 0));
  EXPECT_NE(a.find("layers.1.moe.experts.w13"), nullptr);
  EXPECT_NE(a.find("mtp.0.proj"), nullptr);
  EXPECT_EQ(a.find("layers.0.mlp.w13")->value.shape(), (Shape{24, 8}));
}

TEST(Transformer, LogitsOfLastPositionMatchFullForward) {
  ModelSpec spec = tiny_spec();
  ParamStore store;
  Transformer model(spec, store);
  store.initialize(1);
  auto rng = testing::rng_for_test();
  Tensor ids = testing::random_ints({3, 5}, 0, spec.vocab_size, rng);
  Tensor full = model.logits(ids, false);
  Tensor last = model.logits(ids, true);
  for (int r = 0; r < 3; ++r) {
    Tensor want = full.rows(r, r + 1).view({5, spec.vocab_size}).rows(4, 5);
    EXPECT_TRUE(
        testing::all_close(last.rows(r, r + 1).view({1, spec.vocab_size}), want, 1e-6, 1e-6));
  }
}

TEST(Transformer, TokenLogprobsAndValuesHaveExactGradients) {
  ModelSpec spec = tiny_spec();
  spec.moe.aux_loss_coef = 0.0f;
  ParamStore store;
  Transformer model(spec, store, {}, /*value_head=*/true);
  store.initialize(9);
  for (float& w : std::span(store.find("value_head.weight")->value.data<float>(), spec.d_model))
    w = 0.5f;
  auto rng = testing::rng_for_test();
  Batch batch = random_batch(spec, 2, spec.seq_len, rng);
  Tensor weights = testing::random_normal({2, spec.seq_len}, rng);

  // logp is minus the cross-entropy of the full logits; ignored targets give 0.
  auto lp = model.token_logprobs(batch.inputs, batch.targets, true);
  Tensor logits = model.logits(batch.inputs, false);
  for (int64_t i = 0; i < batch.inputs.numel(); ++i) {
    const int32_t target = batch.targets.data<int32_t>()[i];
    const float* row = logits.data<float>() + i * spec.vocab_size;
    double z = 0, h = 0;
    for (int v = 0; v < spec.vocab_size; ++v) z += std::exp(double(row[v]));
    for (int v = 0; v < spec.vocab_size; ++v) h -= std::exp(row[v]) / z * (row[v] - std::log(z));
    const double want = target == kIgnoreIndex ? 0.0 : row[target] - std::log(z);
    EXPECT_NEAR(lp.logp.data<float>()[i], want, 1e-5) << i;
    EXPECT_NEAR(lp.entropy.data<float>()[i], h, 1e-5) << i;
  }

  store.zero_grad();
  model.token_logprobs(batch.inputs, batch.targets);
  model.backward_logprobs(weights);
  std::map<std::string, Tensor> analytic;
  for (Param* p : store.params()) analytic[p->name] = p->grad.clone();
  auto logp_loss = [&] {
    return testing::weighted_sum(model.token_logprobs(batch.inputs, batch.targets).logp, weights);
  };
  testing::GradCheckOptions options{.eps = 2e-3, .rtol = 3e-2, .atol = 2e-4, .max_elements = 4};
  for (const char* name : {"embed.weight", "layers.0.attn.wq", "layers.1.moe.experts.w13",
                           "layers.1.moe.router.weight", "final_norm.weight", "lm_head.weight"}) {
    EXPECT_TRUE(
        testing::grad_check(logp_loss, store.find(name)->value, analytic[name], rng, options))
        << name;
  }

  store.zero_grad();
  model.values(batch.inputs);
  model.backward_values(weights);
  for (Param* p : store.params()) analytic[p->name] = p->grad.clone();
  auto value_loss = [&] { return testing::weighted_sum(model.values(batch.inputs), weights); };
  for (const char* name :
       {"value_head.weight", "layers.0.attn.wv", "layers.1.moe.experts.w2", "embed.weight"}) {
    EXPECT_TRUE(
        testing::grad_check(value_loss, store.find(name)->value, analytic[name], rng, options))
        << name;
  }
  EXPECT_EQ(analytic["lm_head.weight"].to_f32_vector(),
            std::vector<float>(spec.vocab_size * spec.d_model, 0.0f));
}

}  // namespace
}  // namespace sy
