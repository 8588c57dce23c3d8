// Causal attention speed, bf16, on the benchmark model's shapes: the CUDA-core kernels
// ("simt") against the tensor-core ones ("tc") and cuDNN's fused attention ("cudnn"), forward
// and backward, through the public ops of kernels/attention.h. One line per (shape, kernels,
// pass):
//   max rel err (against simt: max |x - simt| / max |simt| over the outputs) | median ms
//   of N timed runs after warmup (CUDA events on the ops' stream) | causal TFLOP/s.
// FLOPs count the causal half: forward 4 B H T^2/2 hd (two products), backward 2.5x that.
// Usage: attention_bench [repeats, default 20]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.cuh"
#include "kernels/attention.h"
#include "kernels/cuda/attention_tc.h"
#include "kernels/cuda/common.cuh"

namespace sy {
namespace {

struct Shape4 {
  int64_t batch, t, heads, kv_heads, hd;
};

using bench::kWarmup;
using bench::max_rel_err;
using bench::median_ms;
using bench::random_bf16;

void run_shape(const Shape4& s, int repeats, std::mt19937_64& rng) {
  const Device gpu = Device::cuda(0);
  const Tensor q = random_bf16({s.batch, s.t, s.heads, s.hd}, rng);
  const Tensor k = random_bf16({s.batch, s.t, s.kv_heads, s.hd}, rng);
  const Tensor v = random_bf16({s.batch, s.t, s.kv_heads, s.hd}, rng);
  const Tensor dout = random_bf16({s.batch, s.t, s.heads, s.hd}, rng);
  struct Outputs {
    Tensor out, lse, dq, dk, dv;
  };
  auto make = [&] {
    return Outputs{Tensor::empty(q.shape(), DType::kBF16, gpu),
                   Tensor::empty({s.batch, s.heads, s.t}, DType::kF32, gpu),
                   Tensor::empty(q.shape(), DType::kBF16, gpu),
                   Tensor::empty(k.shape(), DType::kBF16, gpu),
                   Tensor::empty(v.shape(), DType::kBF16, gpu)};
  };
  Outputs simt = make(), tc = make(), dnn = make();
  const double fwd_flops = 4.0 * s.batch * s.heads * (static_cast<double>(s.t) * s.t / 2) * s.hd;
  const double bwd_flops = 2.5 * fwd_flops;
  char name[96];
  std::snprintf(name, sizeof(name), "B%lld T%lld H%lld Hkv%lld hd%lld",
                static_cast<long long>(s.batch), static_cast<long long>(s.t),
                static_cast<long long>(s.heads), static_cast<long long>(s.kv_heads),
                static_cast<long long>(s.hd));
  // The CUDA-core kernels first (the reference), then the tensor-core ones, then cuDNN's fused
  // attention (a shape it refuses runs on the tensor-core kernels).
  for (auto kernels : {cuda::AttentionKernels::kSimt, cuda::AttentionKernels::kTensorCore,
                       cuda::AttentionKernels::kCudnn}) {
#ifndef SWITCHYARD_HAVE_CUDNN_ATTENTION
    if (kernels == cuda::AttentionKernels::kCudnn) continue;  // not in this build
#endif
    cuda::set_attention_kernels(kernels);
    const bool is_simt = kernels == cuda::AttentionKernels::kSimt;
    const bool is_dnn = kernels == cuda::AttentionKernels::kCudnn;
    Outputs& o = is_simt ? simt : is_dnn ? dnn : tc;
    const double fwd_ms = median_ms([&] { attention_forward(o.out, o.lse, q, k, v); }, repeats);
    // The backward takes the CUDA-core forward's results, so the gradients compare; cuDNN's
    // takes its own (its statistics are its own to read).
    const Outputs& fwd = is_dnn ? dnn : simt;
    const double bwd_ms = median_ms(
        [&] { attention_backward(o.dq, o.dk, o.dv, dout, q, k, v, fwd.out, fwd.lse); }, repeats);
    SY_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
    const char* label = is_simt ? "simt " : is_dnn ? "cudnn" : "tc   ";
    const double fwd_err = is_simt ? 0 : max_rel_err({&o.out, &o.lse}, {&simt.out, &simt.lse});
    const double bwd_err =
        is_simt ? 0 : max_rel_err({&o.dq, &o.dk, &o.dv}, {&simt.dq, &simt.dk, &simt.dv});
    std::printf("%-28s %s forward  | max rel err %.1e | %8.3f ms | %6.1f TFLOP/s\n", name, label,
                fwd_err, fwd_ms, fwd_flops / fwd_ms * 1e-9);
    std::printf("%-28s %s backward | max rel err %.1e | %8.3f ms | %6.1f TFLOP/s\n", name, label,
                bwd_err, bwd_ms, bwd_flops / bwd_ms * 1e-9);
    std::fflush(stdout);
  }
}

}  // namespace
}  // namespace sy

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::max(1, std::atoi(argv[1])) : 20;
  const std::string gpu = sy::bench::gpu_name_or_exit("attention_bench");
  std::printf("attention_bench: %s, bf16 causal, median of %d runs after %d warmup\n", gpu.c_str(),
              repeats, sy::kWarmup);
  std::mt19937_64 rng(1234);
  for (const sy::Shape4& s : {sy::Shape4{8, 2048, 16, 16, 64}, sy::Shape4{4, 2048, 16, 16, 128},
                              sy::Shape4{8, 2048, 16, 4, 64}}) {
    sy::run_shape(s, repeats, rng);
  }
  return 0;
}
