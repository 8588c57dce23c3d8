// Routing replay on the GPU: routes_append, topk_replay and routing_differs against their CPU
// ops on random inputs (integer scatters and comparisons exact; the replayed weights are the
// same float operations, so exact too), topk_replay of a row's own top-k giving the CUDA
// topk_forward's weights bit for bit; the engine's recorded routes are the same with captured
// decode steps (CUDA graphs) as with steps issued op by op, and mostly those of a bf16
// training forward of the same sequences (the share printed); a bf16 training forward
// replaying its own routes is the plain forward exactly. Skips without a GPU.
#include <cstdio>

#include "gtest/gtest.h"
#include "kernels/router.h"
#include "kernels/routing_replay.h"
#include "models/generate.h"
#include "models/rollout/engine.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::kGpu;

std::vector<int32_t> host_i32(const Tensor& t) { return t.to(Device::cpu()).to_i32_vector(); }
std::vector<float> host_f32(const Tensor& t) { return t.to(Device::cpu()).to_f32_vector(); }

TEST(RoutingReplayGpu, RoutesAppendMatchesTheCpu) {
  SKIP_WITHOUT_GPU();
  auto rng = testing::rng_for_test();
  const int64_t slots = 6, len = 9, layers = 3, k = 4;
  for (const int64_t steps : {int64_t{1}, int64_t{5}}) {
    const int64_t rows = 4;
    std::vector<int32_t> slot = {4, 0, 5, 2}, start(rows), count(rows);
    for (int64_t r = 0; r < rows; ++r) {
      count[r] = static_cast<int32_t>((r * 3 + steps) % (steps + 1));  // 0 included
      start[r] = static_cast<int32_t>((r * 2) % (len - steps + 1));
    }
    const Tensor indices = testing::random_ints({rows * steps, k}, 0, 64, rng);
    Tensor cpu = testing::random_ints({slots, len, layers, k}, -5, 0, rng);
    Tensor gpu = cpu.to(kGpu);
    for (int layer = 0; layer < layers; ++layer) {
      const Tensor s = Tensor::from_i32(slot, {rows}), b = Tensor::from_i32(start, {rows}),
                   c = Tensor::from_i32(count, {rows});
      routes_append(cpu, indices, layer, s, b, c);
      routes_append(gpu, indices.to(kGpu), layer, s.to(kGpu), b.to(kGpu), c.to(kGpu));
    }
    EXPECT_EQ(host_i32(gpu), cpu.to_i32_vector()) << steps << " steps";
  }
}

TEST(RoutingReplayGpu, TopKReplayAndRoutingDiffersMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  auto rng = testing::rng_for_test();
  for (const bool normalize : {false, true}) {
    for (const ScoreFunction fn : {ScoreFunction::kSoftmax, ScoreFunction::kSigmoid}) {
      const int64_t n = 333, experts = 64;
      const TopKOptions o{.k = 6, .normalize = normalize, .scale = 2.5f};
      const Tensor logits = testing::random_normal({n, experts}, rng, 2.0f);
      Tensor scores = Tensor::empty({n, experts}, DType::kF32, kGpu);
      router_scores_forward(scores, logits.to(kGpu), fn);
      Tensor own = Tensor::empty({n, 6}, DType::kI32, kGpu),
             own_w = Tensor::empty({n, 6}, DType::kF32, kGpu);
      topk_forward(own, own_w, scores, Tensor(), o);

      // Its own routes: the CUDA top-k's weights exactly.
      Tensor idx = Tensor::zeros({n, 6}, DType::kI32, kGpu),
             w = Tensor::zeros({n, 6}, DType::kF32, kGpu);
      topk_replay(idx, w, scores, own, o);
      EXPECT_EQ(host_i32(idx), host_i32(own));
      EXPECT_EQ(host_f32(w), host_f32(own_w));

      // Random routes with uncovered rows, against the CPU.
      Tensor given = testing::random_ints({n, 6}, 0, experts, rng);
      for (int64_t i = 0; i < n; i += 7) given.data<int32_t>()[i * 6] = -1;
      const Tensor scores_cpu = scores.to(Device::cpu());
      Tensor idx_cpu = own.to(Device::cpu()), w_cpu = own_w.to(Device::cpu());
      Tensor idx_gpu = own.clone(), w_gpu = own_w.clone();
      topk_replay(idx_cpu, w_cpu, scores_cpu, given, o);
      topk_replay(idx_gpu, w_gpu, scores, given.to(kGpu), o);
      EXPECT_EQ(host_i32(idx_gpu), idx_cpu.to_i32_vector());
      EXPECT_TRUE(testing::all_close(w_gpu.to(Device::cpu()), w_cpu, 1e-6, 0));

      // Half the rows given their own experts in another order: not marked.
      Tensor mixed = given.clone();
      const std::vector<int32_t> mine = host_i32(own);
      for (int64_t i = 0; i < n; i += 2)
        for (int j = 0; j < 6; ++j) mixed.data<int32_t>()[i * 6 + j] = mine[i * 6 + 5 - j];
      Tensor differs_cpu = testing::random_ints({n}, 0, 2, rng);
      Tensor differs_gpu = differs_cpu.to(kGpu);
      routing_differs(differs_cpu, own.to(Device::cpu()), mixed);
      routing_differs(differs_gpu, own, mixed.to(kGpu));
      EXPECT_EQ(host_i32(differs_gpu), differs_cpu.to_i32_vector());
    }
  }
}

ModelSpec spec() {
  ModelSpec s;
  s.vocab_size = 97;
  s.d_model = 64;
  s.n_layers = 3;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.seq_len = 48;
  s.dense_ffn_hidden = 96;
  s.first_k_dense = 1;
  s.init_std = 0.3f;
  s.moe.num_experts = 8;
  s.moe.top_k = 2;
  s.moe.expert_hidden = 48;
  s.moe.num_shared_experts = 1;
  s.moe.normalize_topk = true;
  return s;
}

// [B, T, layers, k] of the trunk's MoE layers in the model's last forward, on the host.
std::vector<int32_t> last_routes(Transformer& model, int64_t tokens) {
  const int layers = model.num_routed_layers(), k = model.spec().moe.top_k;
  std::vector<int32_t> out(tokens * layers * k);
  const std::vector<MoeFfn*> moes = model.moe_layers();
  for (int l = 0; l < layers; ++l) {
    const std::vector<int32_t> r = host_i32(moes[l]->routes());
    for (int64_t i = 0; i < tokens; ++i)
      for (int j = 0; j < k; ++j) out[(i * layers + l) * k + j] = r[i * k + j];
  }
  return out;
}

TEST(RoutingReplayGpu, RecordedRoutesWithCapturedStepsAndAgainstATrainingForward) {
  SKIP_WITHOUT_GPU();
  ParamStore store(kGpu, DType::kBF16);
  Transformer model(spec(), store);
  store.initialize(11);
  auto rng = testing::rng_for_test();
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 13; ++i)
    prompts.push_back(testing::random_ints({1 + (i * 7) % 13}, 0, 97, rng).to_i32_vector());
  const SamplingOptions sampled{
      .temperature = 1.0f, .top_p = 0.9f, .max_new_tokens = 30, .seed = 5};
  auto run = [&](bool graphs) {
    auto engine = RolloutEngine::create(
        model,
        {.max_rows = 8, .check_interval = 4, .decode_graphs = graphs, .record_routing = true});
    EXPECT_TRUE(engine.ok()) << engine.status();
    auto out = (*engine)->generate(prompts, sampled);
    EXPECT_TRUE(out.ok()) << out.status();
    return *out;
  };
  const auto captured = run(true), issued = run(false);
  const int layers = model.num_routed_layers(), k = 2;
  double same = 0, tokens = 0;
  for (size_t p = 0; p < prompts.size(); ++p) {
    EXPECT_EQ(captured[p].tokens, issued[p].tokens) << "prompt " << p;
    EXPECT_EQ(captured[p].routes, issued[p].routes) << "prompt " << p;
    std::vector<int32_t> seq = prompts[p];
    seq.insert(seq.end(), captured[p].tokens.begin(), captured[p].tokens.end());
    const int64_t inputs = static_cast<int64_t>(seq.size()) - 1;
    ASSERT_EQ(static_cast<int64_t>(captured[p].routes.size()), inputs * layers * k);
    seq.pop_back();
    const Tensor ids = Tensor::from_i32(seq, {1, inputs});
    model.token_logprobs(ids, ids);
    const std::vector<int32_t> full = last_routes(model, inputs);
    for (int64_t i = 0; i < inputs; ++i) {
      bool all = true;
      for (int l = 0; l < layers; ++l) {
        const int32_t* a = captured[p].routes.data() + (i * layers + l) * k;
        const int32_t* b = full.data() + (i * layers + l) * k;
        all &= (a[0] == b[0] && a[1] == b[1]) || (a[0] == b[1] && a[1] == b[0]);
      }
      same += all;
      tokens += 1;
    }
  }
  // bf16 rollouts against a bf16 training forward: a near tie can fall either way.
  EXPECT_GE(same / tokens, 0.9);
  std::printf(
      "bf16 rollout routes equal to a training forward's in every layer: %.1f%% of %.0f tokens\n",
      100 * same / tokens, tokens);
}

TEST(RoutingReplayGpu, ABf16ForwardReplayingItsOwnRoutesIsThePlainForward) {
  SKIP_WITHOUT_GPU();
  ParamStore store(kGpu, DType::kBF16);
  Transformer model(spec(), store);
  store.initialize(11);
  auto rng = testing::rng_for_test();
  const int64_t b = 4, t = 40;
  const Tensor inputs = testing::random_ints({b, t}, 0, 97, rng),
               targets = testing::random_ints({b, t}, 0, 97, rng);
  const Tensor plain = model.token_logprobs(inputs, targets).logp;
  const std::vector<int32_t> own = last_routes(model, b * t);
  const ForwardRoutes routes{.routes = Tensor::from_i32(own, {b, t, model.num_routed_layers(), 2}),
                             .replay = true};
  const Transformer::TokenLogprobs replayed =
      model.token_logprobs(inputs, targets, false, 1.0f, &routes);
  EXPECT_EQ(replayed.logp.to_f32_vector(), plain.to_f32_vector());
  EXPECT_EQ(replayed.route_differs.to_i32_vector(), std::vector<int32_t>(b * t, 0));
}

}  // namespace
}  // namespace sy
