// The rollout benchmark: the rollout engine (models/rollout/engine.h) on the benchmark model
// (configs/bench_moe_1b.textproto by default), random weights, on GPU 0 in bf16: P prompts of
// L uniform random tokens, N new tokens each, sampled at temperature 1 with no cut and no stop
// token, so every row decodes the whole budget (the shape bench/hf_generate_bench.py runs
// through transformers' generate).
//
// One warm-up call, a prefill-only call (max_new_tokens 1) and the timed call. It prints
//   new tokens/s   P * N / the timed call's wall time (prefill included, as the baseline counts)
//   decode tokens/s  P * (N - 1) / (timed call - prefill call)
//   prefill tokens/s P * L / the prefill call
//   bandwidth bound: bytes one decode step must read (every bf16 weight matrix a step touches:
//   attention, the experts the step's rows route to (all of them when rows * top_k >= 4 *
//   experts, else the expected number hit under uniform routing), the head's [V, D]; plus each
//   row's cached keys and values at the mean context), over the card's peak memory bandwidth
//   (a table of known cards, or --peak_gbps), against the measured decode step.
// and one JSON line with the same numbers.
//
//   rollout_bench [--config FILE] [--prompts 64] [--prompt_len 128] [--new_tokens 256]
//                 [--check_interval 8] [--peak_gbps X] [--f32]
#include <cuda_runtime_api.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/check.h"
#include "models/model_spec.h"
#include "models/param_store.h"
#include "models/rollout/engine.h"
#include "models/transformer.h"
#include "trainer/config.h"
#include "trainer/flags.h"

namespace {

// Peak memory bandwidth in GB/s of cards we know by the name CUDA reports.
double known_peak_gbps(const std::string& name) {
  struct Card {
    const char* pattern;
    double gbps;
  };
  // Order matters: the more specific names first.
  const Card cards[] = {{"H200", 4800}, {"H100 NVL", 3900}, {"H100 PCIe", 2000},
                        {"H100", 3350},  {"A100-SXM4-80GB", 2039}, {"A100", 1555}};
  for (const Card& c : cards)
    if (name.find(c.pattern) != std::string::npos) return c.gbps;
  return 0;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = "configs/bench_moe_1b.textproto";
  int64_t prompts = 64, prompt_len = 128, new_tokens = 256, check_interval = 8;
  std::string peak_flag;
  bool f32 = false;
  sy::FlagSet flags("rollout_bench", "[--config FILE] [--prompts P] [--prompt_len L] ...",
                    "The rollout engine's throughput on random weights.");
  flags.add_string("config", "FILE", &config_path, "the model's experiment config");
  flags.add_int("prompts", "P", &prompts, "prompts, all decoded at once");
  flags.add_int("prompt_len", "L", &prompt_len, "tokens per prompt");
  flags.add_int("new_tokens", "N", &new_tokens, "new tokens per prompt");
  flags.add_int("check_interval", "K", &check_interval, "decode steps between row checks");
  flags.add_string("peak_gbps", "X", &peak_flag, "the card's peak bandwidth (default: known cards)");
  flags.add_bool("f32", &f32, "f32 compute instead of bf16");
  std::vector<std::string> args(argv + 1, argv + argc);
  if (absl::Status s = flags.parse(args); !s.ok()) {
    std::cerr << "rollout_bench: " << s.message() << "\n";
    return 2;
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::cerr << "rollout_bench: no GPU visible\n";
    return 1;
  }
  cudaDeviceProp prop;
  SY_CHECK(cudaGetDeviceProperties(&prop, 0) == cudaSuccess);
  const std::string gpu = prop.name;
  const double peak_gbps = peak_flag.empty() ? known_peak_gbps(gpu) : std::stod(peak_flag);

  auto config = sy::load_experiment(config_path, {});
  if (!config.ok()) {
    std::cerr << "rollout_bench: " << config.status().message() << "\n";
    return 2;
  }
  const sy::ModelSpec spec = sy::model_spec_from_config(*config);
  const sy::DType compute = f32 ? sy::DType::kF32 : sy::DType::kBF16;
  sy::ParamStore store(sy::Device::cuda(0), compute);
  sy::Transformer model(spec, store);
  store.initialize(config->train().seed());

  std::mt19937 rng(0);
  std::uniform_int_distribution<int32_t> token(0, spec.vocab_size - 1);
  std::vector<std::vector<int32_t>> ids(prompts, std::vector<int32_t>(prompt_len));
  for (auto& p : ids)
    for (int32_t& t : p) t = token(rng);

  sy::EngineOptions engine_options;
  engine_options.max_rows = prompts;
  engine_options.max_len = prompt_len + new_tokens;
  engine_options.check_interval = static_cast<int>(check_interval);
  auto engine = sy::RolloutEngine::create(model, engine_options);
  if (!engine.ok()) {
    std::cerr << "rollout_bench: " << engine.status().message() << "\n";
    return 1;
  }
  sy::SamplingOptions sampling;
  sampling.temperature = 1.0f;
  sampling.max_new_tokens = static_cast<int>(new_tokens);
  sampling.seed = 1;

  auto run = [&](int max_new) {
    sy::SamplingOptions o = sampling;
    o.max_new_tokens = max_new;
    SY_CHECK(cudaDeviceSynchronize() == cudaSuccess);
    const auto t0 = std::chrono::steady_clock::now();
    auto out = (*engine)->generate(ids, o);
    SY_CHECK(cudaDeviceSynchronize() == cudaSuccess);
    const double s = seconds_since(t0);
    SY_CHECK(out.ok()) << out.status().message();
    for (const auto& c : *out)
      SY_CHECK(static_cast<int64_t>(c.tokens.size()) == max_new)
          << "a row stopped after " << c.tokens.size() << " of " << max_new << " tokens";
    return s;
  };
  run(static_cast<int>(new_tokens));  // warm-up: allocator pools, cuBLASLt's plans
  const double prefill_s = run(1);
  const double total_s = run(static_cast<int>(new_tokens));
  const double decode_s = total_s - prefill_s;
  const double decode_steps = static_cast<double>(new_tokens - 1);
  const double step_s = decode_s / decode_steps;

  // Bytes one decode step reads: weight matrices at the compute dtype, the KV at mean context.
  const double wbytes = static_cast<double>(sy::dtype_size(compute));
  const double d = spec.d_model, hd = spec.head_dim(), h = spec.n_heads, hkv = spec.n_kv_heads;
  const double attn = d * hd * (2 * h + 2 * hkv);  // wq, wk, wv, wo
  double expert_fraction = 1.0;
  if (spec.has_moe() && prompts * spec.moe.top_k < 4 * spec.moe.num_experts) {
    // Expected distinct experts hit by R * k uniform draws.
    const double e = spec.moe.num_experts;
    expert_fraction = 1 - std::pow(1 - 1 / e, static_cast<double>(prompts * spec.moe.top_k));
  }
  double weights = spec.vocab_size * d;  // the head (the embedding reads R rows only)
  for (int l = 0; l < spec.n_layers; ++l) {
    weights += attn;
    if (spec.is_moe_layer(l)) {
      const double expert = 3 * d * spec.moe.expert_hidden;
      weights += spec.moe.num_experts * expert * expert_fraction +
                 spec.moe.num_shared_experts * expert + d * spec.moe.num_experts;
    } else {
      weights += 3 * d * spec.dense_ffn_hidden;
    }
  }
  const double mean_context = prompt_len + new_tokens / 2.0;
  const double kv = static_cast<double>(prompts) * spec.n_layers * 2 * mean_context * hkv * hd;
  const double step_bytes = (weights + kv) * wbytes;
  const double bound_s = peak_gbps > 0 ? step_bytes / (peak_gbps * 1e9) : 0;

  const double new_per_s = prompts * new_tokens / total_s;
  const double decode_per_s = prompts * decode_steps / decode_s;
  const double prefill_per_s = prompts * prompt_len / prefill_s;
  std::printf("rollout_bench on %s (%s): %lld prompts x %lld tokens, %lld new tokens each\n",
              gpu.c_str(), f32 ? "f32" : "bf16", static_cast<long long>(prompts),
              static_cast<long long>(prompt_len), static_cast<long long>(new_tokens));
  std::printf("  new tokens/s %.0f (%.3f s), decode tokens/s %.0f (%.3f ms a step), prefill "
              "tokens/s %.0f (%.3f s)\n",
              new_per_s, total_s, decode_per_s, step_s * 1e3, prefill_per_s, prefill_s);
  const sy::RolloutEngine::DecodeStats& graphs = (*engine)->last_decode_stats();
  std::printf("  decode steps: %lld issued op by op, %lld replayed from %lld captured graphs "
              "(SWITCHYARD_DECODE_GRAPHS=0: none)\n",
              static_cast<long long>(graphs.steps_issued),
              static_cast<long long>(graphs.steps_replayed), static_cast<long long>(graphs.graphs));
  if (bound_s > 0) {
    std::printf("  a decode step reads %.2f GB (weights %.2f, KV %.2f): %.3f ms at %.0f GB/s; "
                "the step runs at %.1f%% of that bound\n",
                step_bytes / 1e9, weights * wbytes / 1e9, kv * wbytes / 1e9, bound_s * 1e3,
                peak_gbps, 100 * bound_s / step_s);
  }
  std::printf("{\"bench\": \"rollout\", \"gpu\": \"%s\", \"dtype\": \"%s\", \"prompts\": %lld, "
              "\"prompt_len\": %lld, \"new_tokens\": %lld, \"seconds\": %.4f, "
              "\"new_tokens_per_s\": %.1f, \"decode_tokens_per_s\": %.1f, \"decode_step_ms\": %.4f, "
              "\"prefill_s\": %.4f, \"prefill_tokens_per_s\": %.1f, \"step_gb\": %.4f, "
              "\"bandwidth_bound_fraction\": %.4f}\n",
              gpu.c_str(), f32 ? "f32" : "bf16", static_cast<long long>(prompts),
              static_cast<long long>(prompt_len), static_cast<long long>(new_tokens), total_s,
              new_per_s, decode_per_s, step_s * 1e3, prefill_s, prefill_per_s, step_bytes / 1e9,
              bound_s > 0 ? bound_s / step_s : 0.0);
  return 0;
}
