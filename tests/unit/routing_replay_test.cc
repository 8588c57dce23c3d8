// Routing replay (R3) on the CPU, from the ops up: routes_append stores a forward's top-k where
// kv_cache_append would store its keys; topk_replay with a row's own top-k gives topk_forward's
// weights bit for bit, and with other experts the hand-computed ones; routing_differs compares
// as sets. A MoE layer replaying its own routes is the normal layer exactly (outputs and every
// gradient), forced onto one expert it is that expert's SwiGLU, and the router's gradient
// under given routes matches finite differences. The model replays per trunk MoE layer and
// marks the tokens routed otherwise, and the rollout engine records exactly the top-k that a
// full forward of the same sequences computes.
#include "kernels/routing_replay.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/router.h"
#include "models/generate.h"
#include "models/layers.h"
#include "models/transformer.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::all_close;
using testing::random_ints;
using testing::random_normal;
using testing::rng_for_test;

// ---- ops -----------------------------------------------------------------------------------

TEST(RoutesAppend, StoresEachRowsPositionsInItsSlotAndLayer) {
  // 3 slots of 5 positions, 2 layers, top-2; a forward of 3 rows x 2 tokens.
  Tensor routes = Tensor::from_i32(std::vector<int32_t>(3 * 5 * 2 * 2, -7), {3, 5, 2, 2});
  const Tensor indices = Tensor::from_i32({1, 2, 3, 0, 4, 5, 6, 7, 8, 9, 10, 11}, {6, 2});
  const Tensor slot = Tensor::from_i32({2, 0, 1}, {3});
  const Tensor start = Tensor::from_i32({1, 3, 0}, {3});
  const Tensor count = Tensor::from_i32({2, 1, 0}, {3});  // row 2 idle
  routes_append(routes, indices, 1, slot, start, count);
  std::vector<int32_t> want(3 * 5 * 2 * 2, -7);
  auto at = [&](int s, int p, int l, int j) -> int32_t& {
    return want[((s * 5 + p) * 2 + l) * 2 + j];
  };
  at(2, 1, 1, 0) = 1, at(2, 1, 1, 1) = 2;  // row 0, token 0
  at(2, 2, 1, 0) = 3, at(2, 2, 1, 1) = 0;  // row 0, token 1
  at(0, 3, 1, 0) = 4, at(0, 3, 1, 1) = 5;  // row 1, token 0 (its token 1 is padding)
  EXPECT_EQ(routes.to_i32_vector(), want);
}

TEST(RoutesAppend, RefusesPositionsOutsideTheSlot) {
  Tensor routes = Tensor::zeros({2, 4, 1, 2}, DType::kI32);
  const Tensor indices = Tensor::zeros({2, 2}, DType::kI32);
  EXPECT_DEATH(routes_append(routes, indices, 0, Tensor::from_i32({1}, {1}),
                             Tensor::from_i32({3}, {1}), Tensor::from_i32({2}, {1})),
               "positions \\[3, 5\\)");
  EXPECT_DEATH(routes_append(routes, indices, 1, Tensor::from_i32({1}, {1}),
                             Tensor::from_i32({0}, {1}), Tensor::from_i32({2}, {1})),
               "layer 1 outside");
}

struct ReplayCase {
  ScoreFunction fn;
  bool normalize;
  float scale;
  int groups;
};

class TopKReplay : public ::testing::TestWithParam<ReplayCase> {};

TEST_P(TopKReplay, OwnRoutesGiveTopKsWeightsExactlyAndOthersTheHandWeights) {
  const ReplayCase c = GetParam();
  auto rng = rng_for_test();
  const int64_t n = 9, experts = 8;
  const TopKOptions o{.k = 3,
                      .n_groups = c.groups,
                      .topk_groups = c.groups > 1 ? 2 : 1,
                      .normalize = c.normalize,
                      .scale = c.scale};
  Tensor scores = Tensor::empty({n, experts});
  router_scores_forward(scores, random_normal({n, experts}, rng, 2.0f), c.fn);
  const Tensor bias = random_normal({experts}, rng, 0.3f);  // moves the choice, not the weights
  Tensor indices = Tensor::empty({n, 3}, DType::kI32), weights = Tensor::empty({n, 3});
  topk_forward(indices, weights, scores, bias, o);

  // Replayed with its own routes: the same experts and bit-identical weights.
  Tensor idx = random_ints({n, 3}, 0, experts, rng), w = random_normal({n, 3}, rng);
  topk_replay(idx, w, scores, indices, o);
  EXPECT_EQ(idx.to_i32_vector(), indices.to_i32_vector());
  EXPECT_EQ(w.to_f32_vector(), weights.to_f32_vector());

  // Other experts (repeats allowed), and rows without routes (-1) left alone.
  std::vector<int32_t> given = random_ints({n, 3}, 0, experts, rng).to_i32_vector();
  given[3 * 3] = -1;
  given[7 * 3] = -1;
  Tensor idx2 = indices.clone(), w2 = weights.clone();
  topk_replay(idx2, w2, scores, Tensor::from_i32(given, {n, 3}), o);
  const std::vector<float> s = scores.to_f32_vector();
  const std::vector<int32_t> own = indices.to_i32_vector(), got = idx2.to_i32_vector();
  const std::vector<float> own_w = weights.to_f32_vector();
  std::vector<double> want_w(n * 3);
  for (int64_t i = 0; i < n; ++i) {
    const bool skipped = given[i * 3] < 0;
    double sum = 0;
    for (int j = 0; j < 3; ++j) sum += skipped ? 0 : s[i * experts + given[i * 3 + j]];
    for (int j = 0; j < 3; ++j) {
      EXPECT_EQ(got[i * 3 + j], skipped ? own[i * 3 + j] : given[i * 3 + j]) << i;
      const double sj = skipped ? 0 : s[i * experts + given[i * 3 + j]];
      want_w[i * 3 + j] = skipped ? own_w[i * 3 + j] : c.scale * (c.normalize ? sj / sum : sj);
    }
  }
  EXPECT_TRUE(all_close(w2, want_w, 1e-6, 0));
}

INSTANTIATE_TEST_SUITE_P(Options, TopKReplay,
                         ::testing::Values(ReplayCase{ScoreFunction::kSoftmax, false, 1.0f, 1},
                                           ReplayCase{ScoreFunction::kSoftmax, true, 1.0f, 1},
                                           ReplayCase{ScoreFunction::kSigmoid, true, 2.5f, 1},
                                           ReplayCase{ScoreFunction::kSigmoid, true, 2.5f, 4},
                                           ReplayCase{ScoreFunction::kSigmoid, false, 0.5f, 2}));

TEST(TopKReplay, RefusesAnExpertOutsideTheRouter) {
  Tensor scores = Tensor::zeros({2, 4});
  Tensor idx = Tensor::zeros({2, 2}, DType::kI32), w = Tensor::zeros({2, 2});
  EXPECT_DEATH(topk_replay(idx, w, scores, Tensor::from_i32({0, 1, 2, 4}, {2, 2}), {.k = 2}),
               "row 1 replays expert 4, outside \\[0, 4\\)");
}

TEST(RoutingDiffers, ComparesAsSetsAndOnlyMarks) {
  const Tensor own = Tensor::from_i32({0, 1, 2, 3, 1, 2, 3, 0, 0, 1}, {5, 2});
  const Tensor given = Tensor::from_i32({1, 0, 2, 1, -1, 0, 3, 0, 0, 2}, {5, 2});
  Tensor differs = Tensor::from_i32({0, 0, 0, 1, 0}, {5});
  routing_differs(differs, own, given);
  // Row 0: same set in another order; 1: differs; 2: no route; 3: was marked, same set;
  // 4: differs.
  EXPECT_EQ(differs.to_i32_vector(), (std::vector<int32_t>{0, 1, 0, 1, 1}));
}

// ---- the MoE layer ---------------------------------------------------------------------------

ModelSpec layer_spec() {
  ModelSpec s;
  s.vocab_size = 16;
  s.d_model = 8;
  s.n_layers = 1;
  s.n_heads = 2;
  s.n_kv_heads = 2;
  s.seq_len = 6;
  s.init_std = 0.3f;
  s.moe.num_experts = 4;
  s.moe.top_k = 2;
  s.moe.expert_hidden = 6;
  s.moe.normalize_topk = true;
  s.moe.aux_loss_coef = 0.1f;
  s.moe.seq_aux_loss_coef = 0.1f;
  s.moe.z_loss_coef = 0.1f;
  return s;
}

struct LayerRun {
  Tensor out, dx;
  std::vector<Tensor> grads;
  RoutingStats stats;
};

// A fresh layer (seed 5) through one forward and backward, with `routes` replayed when given.
LayerRun run_layer(const ModelSpec& spec, const Tensor& x, const Tensor& dy, int64_t b,
                   const Tensor& routes = Tensor(), Tensor* own_routes = nullptr) {
  ParamStore store;
  MoeFfn moe(store, "m.", spec);
  store.initialize(5);
  moe.set_routes(routes, true, Tensor());
  LayerRun r;
  r.out =
      moe.forward(x, TokenLayout{b, x.dim(0) / b, Tensor::zeros({b, x.dim(0) / b}, DType::kI32)});
  if (own_routes) *own_routes = moe.routes().clone();
  r.dx = moe.backward(dy);
  for (Param* p : store.params()) r.grads.push_back(p->grad.clone());
  r.stats = moe.stats();
  return r;
}

TEST(MoeReplay, ItsOwnRoutesReplayedAreTheNormalLayerExactly) {
  auto rng = rng_for_test();
  for (bool shared : {false, true}) {
    ModelSpec spec = layer_spec();
    spec.moe.num_shared_experts = shared ? 1 : 0;
    spec.moe.capacity_factor = 1.0;  // dropping decided on the replayed routes, as on its own
    const int64_t b = 2, n = 2 * spec.seq_len;
    const Tensor x = random_normal({n, spec.d_model}, rng),
                 dy = random_normal({n, spec.d_model}, rng);
    Tensor own;
    const LayerRun normal = run_layer(spec, x, dy, b, Tensor(), &own);
    const LayerRun replayed = run_layer(spec, x, dy, b, own);
    EXPECT_TRUE(all_close(replayed.out, normal.out, 0, 0));
    EXPECT_TRUE(all_close(replayed.dx, normal.dx, 0, 0));
    ASSERT_EQ(replayed.grads.size(), normal.grads.size());
    for (size_t i = 0; i < normal.grads.size(); ++i)
      EXPECT_TRUE(all_close(replayed.grads[i], normal.grads[i], 0, 0)) << "parameter " << i;
    EXPECT_EQ(replayed.stats.load, normal.stats.load);
    EXPECT_EQ(replayed.stats.aux_loss, normal.stats.aux_loss);
    EXPECT_EQ(replayed.stats.dropped, normal.stats.dropped);
  }
}

TEST(MoeReplay, EveryTokenForcedOntoOneExpertGetsThatExpertsSwiglu) {
  auto rng = rng_for_test();
  const ModelSpec spec = layer_spec();
  const int64_t b = 1, n = spec.seq_len, d = spec.d_model, f = spec.moe.expert_hidden;
  const int e = 2;
  const Tensor x = random_normal({n, d}, rng);
  ParamStore store;
  MoeFfn moe(store, "m.", spec);
  store.initialize(5);
  // Top-2 onto expert e twice: normalised, its two gates are 1/2 each.
  moe.set_routes(Tensor::from_i32(std::vector<int32_t>(n * 2, e), {n, 2}), true, Tensor());
  const std::vector<float> out =
      moe.forward(x, TokenLayout{b, n, Tensor::zeros({b, n}, DType::kI32)}).to_f32_vector();
  EXPECT_EQ(moe.routes().to_i32_vector(), std::vector<int32_t>(n * 2, e));

  // By hand: y = w2_e (silu(g) * u), [g; u] = w13_e RMSNorm(x) (gain 1 at initialisation).
  const std::vector<float> xs = x.to_f32_vector();
  const std::vector<float> w13 = store.find("m.moe.experts.w13")->value.to_f32_vector();
  const std::vector<float> w2 = store.find("m.moe.experts.w2")->value.to_f32_vector();
  std::vector<double> want(n * d);
  for (int64_t i = 0; i < n; ++i) {
    double ms = 0;
    for (int64_t c = 0; c < d; ++c) ms += double(xs[i * d + c]) * xs[i * d + c] / d;
    const double rstd = 1 / std::sqrt(ms + spec.norm_eps);
    std::vector<double> a(f);
    for (int64_t j = 0; j < f; ++j) {
      double g = 0, u = 0;
      for (int64_t c = 0; c < d; ++c) {
        g += w13[(e * 2 * f + j) * d + c] * xs[i * d + c] * rstd;
        u += w13[(e * 2 * f + f + j) * d + c] * xs[i * d + c] * rstd;
      }
      a[j] = g / (1 + std::exp(-g)) * u;
    }
    for (int64_t c = 0; c < d; ++c) {
      double y = 0;
      for (int64_t j = 0; j < f; ++j) y += w2[(e * d + c) * f + j] * a[j];
      want[i * d + c] = y;
    }
  }
  EXPECT_TRUE(all_close(out, want, 1e-5, 1e-6));
}

TEST(MoeReplay, TheRoutersGradientUnderGivenRoutesMatchesFiniteDifferences) {
  auto rng = rng_for_test();
  ModelSpec spec = layer_spec();
  spec.moe.aux_loss_coef = spec.moe.seq_aux_loss_coef = 0;  // the gates' path alone
  spec.moe.z_loss_coef = 0;
  const int64_t b = 2, n = 2 * spec.seq_len, d = spec.d_model;
  const Tensor x = random_normal({n, d}, rng), dy = random_normal({n, d}, rng);
  // Distinct pairs, mostly not the router's own choice.
  std::vector<int32_t> given(n * 2);
  for (int64_t i = 0; i < n; ++i) {
    given[2 * i] = static_cast<int32_t>(i % 4);
    given[2 * i + 1] = static_cast<int32_t>((i + 1 + i / 4) % 4);
  }
  const Tensor routes = Tensor::from_i32(given, {n, 2});
  ParamStore store;
  MoeFfn moe(store, "m.", spec);
  store.initialize(5);
  moe.set_routes(routes, true, Tensor());
  const TokenLayout layout{b, n / b, Tensor::zeros({b, n / b}, DType::kI32)};
  moe.forward(x, layout);
  moe.backward(dy);
  Param& router = *store.find("m.moe.router.weight");
  EXPECT_GT(testing::weighted_sum(router.grad, router.grad), 0) << "the router learns under replay";
  auto loss = [&] { return testing::weighted_sum(moe.forward(x, layout), dy); };
  EXPECT_TRUE(testing::grad_check(loss, router.value, router.grad, rng));
}

// ---- the model -------------------------------------------------------------------------------

ModelSpec model_spec() {
  ModelSpec s;
  s.vocab_size = 13;
  s.d_model = 16;
  s.n_layers = 3;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.seq_len = 16;
  s.dense_ffn_hidden = 24;
  s.first_k_dense = 1;  // two MoE layers in the trunk, and one in the MTP module
  s.init_std = 0.5f;
  s.moe.num_experts = 4;
  s.moe.top_k = 2;
  s.moe.expert_hidden = 8;
  s.moe.normalize_topk = true;
  s.moe.aux_loss_coef = 0.01f;
  s.mtp_modules = 1;
  return s;
}

// The routes the trunk's MoE layers took in the model's last forward, [B, T, layers, k].
Tensor last_routes(Transformer& model, int64_t b, int64_t t) {
  const int layers = model.num_routed_layers(), k = model.spec().moe.top_k;
  Tensor out = Tensor::empty({b, t, layers, k}, DType::kI32);
  int32_t* o = out.data<int32_t>();
  const std::vector<MoeFfn*> moes = model.moe_layers();  // the trunk's first
  for (int l = 0; l < layers; ++l) {
    const std::vector<int32_t> r = moes[l]->routes().to_i32_vector();
    for (int64_t i = 0; i < b * t; ++i)
      for (int j = 0; j < k; ++j) o[(i * layers + l) * k + j] = r[i * k + j];
  }
  return out;
}

struct ModelRun {
  Tensor logp, route_differs;
  std::vector<Tensor> grads;
};

ModelRun run_model(const Tensor& inputs, const Tensor& targets, const Tensor& dlogp,
                   const ForwardRoutes* routes, Tensor* own_routes = nullptr) {
  const ModelSpec spec = model_spec();
  ParamStore store;
  Transformer model(spec, store);
  store.initialize(3);
  store.zero_grad();
  Transformer::TokenLogprobs lp = model.token_logprobs(inputs, targets, false, 0.7f, routes);
  if (own_routes) *own_routes = last_routes(model, inputs.dim(0), inputs.dim(1));
  model.backward_logprobs(dlogp);
  ModelRun r{lp.logp, lp.route_differs, {}};
  for (Param* p : store.params()) r.grads.push_back(p->grad.clone());
  return r;
}

TEST(ModelReplay, ItsOwnRoutesReplayedAreTheNormalForwardAndBackwardExactly) {
  auto rng = rng_for_test();
  const int64_t b = 3, t = 10;
  const Tensor inputs = random_ints({b, t}, 0, 13, rng), targets = random_ints({b, t}, 0, 13, rng);
  const Tensor dlogp = random_normal({b, t}, rng);
  Tensor own;
  const ModelRun normal = run_model(inputs, targets, dlogp, nullptr, &own);
  EXPECT_EQ(own.shape(), (Shape{b, t, 2, 2}));
  const ForwardRoutes replay{.routes = own, .replay = true};
  const ModelRun replayed = run_model(inputs, targets, dlogp, &replay);
  EXPECT_TRUE(all_close(replayed.logp, normal.logp, 0, 0));
  ASSERT_EQ(replayed.grads.size(), normal.grads.size());
  for (size_t i = 0; i < normal.grads.size(); ++i)
    EXPECT_TRUE(all_close(replayed.grads[i], normal.grads[i], 0, 0)) << "parameter " << i;
  EXPECT_EQ(replayed.route_differs.to_i32_vector(), std::vector<int32_t>(b * t, 0));

  // Tokens without routes (-1) route themselves: the same again.
  Tensor partial = own.clone();
  int32_t* p = partial.data<int32_t>();
  for (int64_t i = 0; i < 2 * t * 2 * 2; i += 4) p[i] = -1;  // layer 0 of rows 0 and 1
  const ForwardRoutes some{.routes = partial, .replay = true};
  EXPECT_TRUE(all_close(run_model(inputs, targets, dlogp, &some).logp, normal.logp, 0, 0));
}

TEST(ModelReplay, OtherRoutesChangeTheOutputAndAreMarkedWhereTheyDiffer) {
  auto rng = rng_for_test();
  const int64_t b = 2, t = 9;
  const Tensor inputs = random_ints({b, t}, 0, 13, rng), targets = random_ints({b, t}, 0, 13, rng);
  const Tensor dlogp = random_normal({b, t}, rng);
  Tensor own;
  const ModelRun normal = run_model(inputs, targets, dlogp, nullptr, &own);
  // Every token of the second MoE layer onto experts {0, 1}.
  Tensor forced = own.clone();
  int32_t* f = forced.data<int32_t>();
  const std::vector<int32_t> mine = own.to_i32_vector();
  std::vector<int32_t> want_differs(b * t, 0);
  for (int64_t i = 0; i < b * t; ++i) {
    f[(i * 2 + 1) * 2] = 1;
    f[(i * 2 + 1) * 2 + 1] = 0;
    const int32_t e0 = mine[(i * 2 + 1) * 2], e1 = mine[(i * 2 + 1) * 2 + 1];
    want_differs[i] = !((e0 == 0 && e1 == 1) || (e0 == 1 && e1 == 0));
  }
  ASSERT_GT(std::count(want_differs.begin(), want_differs.end(), 1), 0);
  // Compared only: the forward is the normal one, the differing tokens marked.
  const ForwardRoutes compare{.routes = forced, .replay = false};
  const ModelRun compared = run_model(inputs, targets, dlogp, &compare);
  EXPECT_TRUE(all_close(compared.logp, normal.logp, 0, 0));
  EXPECT_EQ(compared.route_differs.to_i32_vector(), want_differs);
  // Replayed: the marks are the same (the layers' own top-k is still computed) and the
  // log-probs move. A row's first position attends to itself alone: it changes exactly when
  // its own route did (same experts in the same order: the same floats).
  const ForwardRoutes replay{.routes = forced, .replay = true};
  const ModelRun replayed = run_model(inputs, targets, dlogp, &replay);
  EXPECT_EQ(replayed.route_differs.to_i32_vector(), want_differs);
  const std::vector<float> a = replayed.logp.to_f32_vector(), n = normal.logp.to_f32_vector();
  for (int64_t r = 0; r < b; ++r) {
    const int64_t i = r * t;
    if (want_differs[i]) {
      EXPECT_NE(a[i], n[i]) << "row " << r;
    } else if (mine[(i * 2 + 1) * 2] == 1) {
      EXPECT_EQ(a[i], n[i]) << "row " << r;
    }
  }
  double moved = 0;
  for (int64_t i = 0; i < b * t; ++i) moved += std::fabs(a[i] - n[i]);
  EXPECT_GT(moved, 1e-3);
}

TEST(ModelReplay, RoutesOfTheWrongShapeAreRefused) {
  const ModelSpec spec = model_spec();
  ParamStore store;
  Transformer model(spec, store);
  store.initialize(3);
  const Tensor ids = Tensor::zeros({1, 4}, DType::kI32);
  const ForwardRoutes wrong{.routes = Tensor::zeros({1, 4, 3, 2}, DType::kI32), .replay = true};
  EXPECT_DEATH(model.token_logprobs(ids, ids, false, 1.0f, &wrong), "forward routes");
}

// ---- recording in the rollout engine ----------------------------------------------------------

std::vector<std::vector<int32_t>> ragged_prompts(std::mt19937_64& rng) {
  std::vector<std::vector<int32_t>> out;
  for (int len : {3, 1, 7, 2, 5, 4, 6})
    out.push_back(random_ints({len}, 0, 13, rng).to_i32_vector());
  return out;
}

TEST(RoutingRecord, TheEnginesRoutesAreTheTopKOfAFullForwardOfTheSameSequences) {
  auto rng = rng_for_test();
  const ModelSpec spec = model_spec();
  ParamStore store;
  Transformer model(spec, store);
  store.initialize(3);
  const auto prompts = ragged_prompts(rng);
  const SamplingOptions sampling{
      .temperature = 1.0f, .max_new_tokens = 7, .stop_tokens = {5}, .seed = 11};
  // Fewer slots than prompts (slots are reused) and windows of a few steps.
  const EngineOptions engine{.max_rows = 3, .check_interval = 3, .record_routing = true};
  auto out = generate_completions(model, prompts, sampling, nullptr, 0, engine);
  ASSERT_TRUE(out.ok()) << out.status();
  auto plain = generate_completions(model, prompts, sampling, nullptr, 0,
                                    {.max_rows = 3, .check_interval = 3});
  ASSERT_TRUE(plain.ok()) << plain.status();
  const int layers = model.num_routed_layers(), k = spec.moe.top_k;
  ASSERT_EQ(layers, 2);
  bool some_stopped = false;
  for (size_t p = 0; p < prompts.size(); ++p) {
    const Completion& c = (*out)[p];
    EXPECT_EQ(c.tokens, (*plain)[p].tokens) << "recording changes nothing";
    EXPECT_TRUE((*plain)[p].routes.empty());
    some_stopped |= c.finish == FinishReason::kStopToken;
    std::vector<int32_t> seq = prompts[p];
    seq.insert(seq.end(), c.tokens.begin(), c.tokens.end());
    const int64_t inputs = static_cast<int64_t>(seq.size()) - 1;
    ASSERT_EQ(static_cast<int64_t>(c.routes.size()), inputs * layers * k) << "prompt " << p;
    seq.pop_back();
    model.logits(Tensor::from_i32(seq, {1, inputs}), false);
    const Tensor full = last_routes(model, 1, inputs);
    EXPECT_EQ(c.routes, full.to_i32_vector()) << "prompt " << p;
  }
  EXPECT_TRUE(some_stopped) << "pick a stop token the sampler reaches";
}

TEST(RoutingRecord, ADenseModelRecordsNothing) {
  ModelSpec spec = model_spec();
  spec.first_k_dense = spec.n_layers;
  spec.mtp_modules = 0;
  ParamStore store;
  Transformer model(spec, store);
  store.initialize(3);
  EXPECT_EQ(model.num_routed_layers(), 0);
  auto out = generate_completions(model, {{1, 2, 3}}, {.temperature = 0.0f, .max_new_tokens = 3},
                                  nullptr, 0, {.record_routing = true});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ((*out)[0].tokens.size(), 3u);
  EXPECT_TRUE((*out)[0].routes.empty());
}

}  // namespace
}  // namespace sy
