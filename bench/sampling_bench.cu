// Token sampling speed (kernels/sampling.h) on random f32 logits at the rollout shapes: rows x
// vocabulary (the bench model's 32768, Qwen3's 151936) x the sampling settings RL runs use.
// One line per case: median ms of N timed calls after warmup (CUDA events on the ops' stream)
// | GB/s of logits (one read of R x V x 4 bytes per call, whatever the kernel re-reads).
// Usage: sampling_bench [repeats, default 50]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/sampling.h"

namespace sy {
namespace {

struct Setting {
  const char* name;
  float temperature, top_p, min_p;
  int32_t top_k;
};

void run_case(int64_t rows, int64_t vocab, const Setting& s, int repeats, std::mt19937_64& rng) {
  const Device gpu = Device::cuda(0);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> x(static_cast<size_t>(rows * vocab));
  for (float& v : x) v = normal(rng);
  const Tensor logits = Tensor::from_f32(x, {rows, vocab}).to(gpu);
  auto fill_f = [&](float v) { return Tensor::from_f32(std::vector<float>(rows, v), {rows}).to(gpu); };
  auto fill_i = [&](int32_t v) { return Tensor::from_i32(std::vector<int32_t>(rows, v), {rows}).to(gpu); };
  SamplingParams p;
  p.temperature = fill_f(s.temperature);
  p.top_p = fill_f(s.top_p);
  p.min_p = fill_f(s.min_p);
  p.top_k = fill_i(s.top_k);
  p.active = fill_i(1);
  p.position = fill_i(3);
  Tensor seed = Tensor::empty({rows}, DType::kI64), row_id = Tensor::empty({rows}, DType::kI64);
  for (int64_t r = 0; r < rows; ++r) {
    seed.data<int64_t>()[r] = 1234 + r;
    row_id.data<int64_t>()[r] = r;
  }
  p.seed = seed.to(gpu);
  p.row_id = row_id.to(gpu);
  const Tensor token = Tensor::empty({rows}, DType::kI32, gpu);
  const Tensor logprob = Tensor::empty({rows}, DType::kF32, gpu);
  const double ms = bench::median_ms([&] { sample_tokens(token, logprob, logits, p); }, repeats);
  const double gb = rows * vocab * 4.0 * 1e-9;
  std::printf("R%-4lld V%-7lld %-34s | %8.4f ms | %7.1f GB/s\n", static_cast<long long>(rows),
              static_cast<long long>(vocab), s.name, ms, gb / (ms * 1e-3));
  std::fflush(stdout);
}

}  // namespace
}  // namespace sy

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::max(1, std::atoi(argv[1])) : 50;
  const std::string gpu = sy::bench::gpu_name_or_exit("sampling_bench");
  std::printf("sampling_bench: %s, f32 logits ~ N(0, 2^2), median of %d calls after %d warmup\n",
              gpu.c_str(), repeats, sy::bench::kWarmup);
  const sy::Setting settings[] = {{"greedy", 0.0f, 1.0f, 0.0f, 0},
                                  {"T=1", 1.0f, 1.0f, 0.0f, 0},
                                  {"T=1 top_p=0.95", 1.0f, 0.95f, 0.0f, 0},
                                  {"T=0.7 top_k=50 top_p=0.9 min_p=0.05", 0.7f, 0.9f, 0.05f, 50}};
  std::mt19937_64 rng(1234);
  for (const auto& [rows, vocab] : {std::pair<int64_t, int64_t>{64, 32768}, {256, 32768},
                                    {64, 151936}, {256, 151936}}) {
    for (const sy::Setting& s : settings) sy::run_case(rows, vocab, s, repeats, rng);
  }
  return 0;
}
