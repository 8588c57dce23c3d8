// The MoE layer's expert GEMMs, bf16 in / fp32 accumulate, on the benchmark model's shapes
// (16 experts, d_model 1024, expert hidden 2816, 16,384 tokens x top-2), three ways:
//   loop    one sy::matmul (cuBLASLt) per expert on the ops' stream
//   fanout  the same calls spread over 4 streams (kernels/streams.h), as the layer does now
//   grouped one cublasGemmGroupedBatchedEx call for all experts (pointer arrays on the GPU)
// and, as the ceiling, one GEMM over all rows against one expert's weight ("single").
// For the layer's GEMM kinds with a per-expert weight (forward w13 and w2, backward dX of w13) it
// prints the median GPU time, TFLOP/s, the host time to issue one call set, and the max
// relative difference of each way from the loop's result.
// Then the whole expert block as models/layers.cc runs it (forward: w13 per expert, SwiGLU
// over all rows, w2 per expert; backward: dX and dW of w2 per expert, SwiGLU backward over
// all rows, dX and dW of w13 per expert), on one stream and on four, each phase also alone;
// and the layer's batched way (SWITCHYARD_EXPERT_GEMMS=batched: zero-padded blocks, one
// strided-batched GEMM per product, the copies and the zero fill included).
// Two row distributions: balanced (uniform random routing) and skewed (Zipf-like).
// Usage: expert_gemm_bench [repeats, default 20]
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "bench/bench_util.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "kernels/permute.h"
#include "kernels/streams.h"
#include "kernels/swiglu.h"

#define BENCH_CUBLAS_CHECK(expr)                                                         \
  do {                                                                                   \
    cublasStatus_t st_ = (expr);                                                         \
    SY_CHECK(st_ == CUBLAS_STATUS_SUCCESS) << #expr << ": " << cublasGetStatusName(st_); \
  } while (0)

namespace sy {
namespace {

constexpr int kExperts = 16;
constexpr int64_t kModel = 1024, kHidden = 2816, kTokens = 16384, kTopK = 2;

// Spins ~ms milliseconds on the GPU so that the host's issue time can be measured while the
// GPU is busy (the launches then queue instead of running).
__global__ void spin_kernel(int64_t cycles) {
  const int64_t start = clock64();
  while (clock64() - start < cycles) {
  }
}

using bench::kWarmup;
using bench::random_bf16;

// Clock cycles of ~30 ms on device 0.
int64_t spin_cycles_30ms() {
  int khz = 0;
  SY_CUDA_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0));
  return static_cast<int64_t>(khz) * 30;
}

struct Timing {
  double gpu_ms, host_us;
};

// Median GPU milliseconds of `repeats` runs (bench::median_ms), and the median host
// microseconds to issue one run while the GPU is still busy with a spin kernel.
Timing time_it(const std::function<void()>& fn, int repeats, int64_t spin_cycles) {
  const double gpu_ms = bench::median_ms(fn, repeats);
  std::vector<double> us;
  for (int i = 0; i < repeats; ++i) {
    spin_kernel<<<1, 1, 0, cuda::stream()>>>(spin_cycles);
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    SY_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
  }
  std::sort(us.begin(), us.end());
  return {gpu_ms, us[us.size() / 2]};
}

double max_rel_err(const Tensor& a, const Tensor& b) { return bench::max_rel_err({&a}, {&b}); }

// Rows per expert summing to tokens * top-k: uniform routing, or weights ~ 1 / (e + 1).
std::vector<int64_t> expert_rows(bool skewed, std::mt19937_64& rng) {
  std::vector<double> w(kExperts);
  for (int e = 0; e < kExperts; ++e) w[e] = skewed ? 1.0 / (e + 1) : 1.0;
  std::discrete_distribution<int> pick(w.begin(), w.end());
  std::vector<int64_t> rows(kExperts, 0);
  for (int64_t i = 0; i < kTokens * kTopK; ++i) ++rows[pick(rng)];
  return rows;
}

// One GEMM kind over all experts: C_e = A_e op(B_e) in the row-major terms of sy::matmul,
// where A_e and C_e are rows [lo, hi) of stacked activations and B_e is expert e's weight.
struct Kind {
  const char* name;
  int64_t a_cols, b_rows, b_cols;  // A [rows, a_cols]; B [b_rows, b_cols] per expert
  bool trans_b;
};

class Bench {
 public:
  Bench(int repeats, std::mt19937_64& rng) : repeats_(repeats), rng_(rng) {
    BENCH_CUBLAS_CHECK(cublasCreate(&handle_));
    BENCH_CUBLAS_CHECK(cublasSetStream(handle_, cuda::stream()));
    size_t bytes = size_t{32} << 20;
    SY_CUDA_CHECK(cudaMalloc(&workspace_, bytes));
    BENCH_CUBLAS_CHECK(cublasSetWorkspace(handle_, workspace_, bytes));
    spin_cycles_ = spin_cycles_30ms();
  }
  ~Bench() {
    cublasDestroy(handle_);
    cudaFree(workspace_);
  }

  void run(const Kind& kind, const std::vector<int64_t>& rows) {
    const Device gpu = Device::cuda(0);
    std::vector<int64_t> off(kExperts + 1, 0);
    for (int e = 0; e < kExperts; ++e) off[e + 1] = off[e] + rows[e];
    const int64_t total = off[kExperts];
    // Row-major shapes: A [total, a_cols]; B [E, b_rows, b_cols].
    const Tensor a = random_bf16({total, kind.a_cols}, rng_, 1.0f);
    const Tensor b = random_bf16({kExperts, kind.b_rows, kind.b_cols}, rng_, 0.02f);
    const int64_t n = kind.trans_b ? kind.b_rows : kind.b_cols;  // C's columns
    const int64_t k = kind.a_cols;
    auto a_e = [&](int e) { return a.rows(off[e], off[e + 1]); };
    auto b_e = [&](int e) { return b.rows(e, e + 1).view({kind.b_rows, kind.b_cols}); };
    const Tensor c_loop = Tensor::empty({total, n}, DType::kBF16, gpu);
    const Tensor c_fan = Tensor::empty({total, n}, DType::kBF16, gpu);
    const Tensor c_grp = Tensor::empty({total, n}, DType::kBF16, gpu);
    auto c_e = [&](const Tensor& c, int e) { return c.rows(off[e], off[e + 1]); };
    const double flops = 2.0 * total * n * k;

    auto loop = [&] {
      for (int e = 0; e < kExperts; ++e)
        if (rows[e]) matmul(c_e(c_loop, e), a_e(e), b_e(e), false, kind.trans_b);
    };
    auto fan = [&] {
      StreamFanout fanout(gpu, 4);
      for (int e = 0; e < kExperts; ++e) {
        if (!rows[e]) continue;
        fanout.select(e);
        matmul(c_e(c_fan, e), a_e(e), b_e(e), false, kind.trans_b);
      }
    };

    // Grouped: one group per expert (group size 1), in cuBLAS's column-major terms (swap A
    // and B, as kernels/cuda/matmul.cu does): C'[n, m] = op(B') op(A').
    std::vector<cublasOperation_t> ta(kExperts), tb(kExperts);
    std::vector<int> gm(kExperts), gn(kExperts), gk(kExperts), lda(kExperts), ldb(kExperts),
        ldc(kExperts), group_size(kExperts, 1);
    std::vector<const void*> pa(kExperts), pb(kExperts);
    std::vector<void*> pc(kExperts);
    std::vector<float> alpha(kExperts, 1.0f), beta(kExperts, 0.0f);
    int groups = 0;
    for (int e = 0; e < kExperts; ++e) {
      if (!rows[e]) continue;
      ta[groups] = kind.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // first operand: B'
      tb[groups] = CUBLAS_OP_N;
      gm[groups] = static_cast<int>(n);
      gn[groups] = static_cast<int>(rows[e]);
      gk[groups] = static_cast<int>(k);
      pa[groups] = b_e(e).raw();
      lda[groups] = static_cast<int>(kind.b_cols);
      pb[groups] = a_e(e).raw();
      ldb[groups] = static_cast<int>(kind.a_cols);
      pc[groups] = c_e(c_grp, e).raw();
      ldc[groups] = static_cast<int>(n);
      ++groups;
    }
    void** dev_ptrs = nullptr;
    SY_CUDA_CHECK(cudaMalloc(&dev_ptrs, 3 * kExperts * sizeof(void*)));
    std::vector<void*> host_ptrs(3 * kExperts);
    for (int g = 0; g < groups; ++g) {
      host_ptrs[g] = const_cast<void*>(pa[g]);
      host_ptrs[kExperts + g] = const_cast<void*>(pb[g]);
      host_ptrs[2 * kExperts + g] = pc[g];
    }
    SY_CUDA_CHECK(cudaMemcpy(dev_ptrs, host_ptrs.data(), host_ptrs.size() * sizeof(void*),
                             cudaMemcpyHostToDevice));
    auto grouped = [&] {
      BENCH_CUBLAS_CHECK(cublasGemmGroupedBatchedEx(
          handle_, ta.data(), tb.data(), gm.data(), gn.data(), gk.data(), alpha.data(),
          const_cast<const void* const*>(dev_ptrs), CUDA_R_16BF, lda.data(),
          const_cast<const void* const*>(dev_ptrs + kExperts), CUDA_R_16BF, ldb.data(), beta.data(),
          dev_ptrs + 2 * kExperts, CUDA_R_16BF, ldc.data(), groups, group_size.data(),
          CUBLAS_COMPUTE_32F));
    };

    // Ceiling: the same FLOPs as one GEMM (all rows against expert 0's weight).
    const Tensor c_single = Tensor::empty({total, n}, DType::kBF16, gpu);
    auto single = [&] { matmul(c_single, a, b_e(0), false, kind.trans_b); };

    auto report = [&](const char* way, const Timing& t, double f, double err) {
      std::printf("  %-7s %8.3f ms %6.1f TFLOP/s | host issue %7.1f us | max rel diff %.1e\n", way,
                  t.gpu_ms, f / t.gpu_ms * 1e-9, t.host_us, err);
    };
    std::printf("%s (rows per expert %lld..%lld, %.1f GFLOP)\n", kind.name,
                static_cast<long long>(*std::min_element(rows.begin(), rows.end())),
                static_cast<long long>(*std::max_element(rows.begin(), rows.end())), flops * 1e-9);
    const Timing t_loop = time_it(loop, repeats_, spin_cycles_);
    const Timing t_fan = time_it(fan, repeats_, spin_cycles_);
    const Timing t_grp = time_it(grouped, repeats_, spin_cycles_);
    const Timing t_single = time_it(single, repeats_, spin_cycles_);
    SY_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
    report("loop", t_loop, flops, 0.0);
    report("fanout", t_fan, flops, max_rel_err(c_fan, c_loop));
    report("grouped", t_grp, flops, max_rel_err(c_grp, c_loop));
    report("single", t_single, flops, 0.0);
    SY_CUDA_CHECK(cudaFree(dev_ptrs));
  }

 private:
  int repeats_;
  std::mt19937_64& rng_;
  cublasHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  int64_t spin_cycles_ = 0;
};

// The expert block of one MoE layer, forward and backward, as models/layers.cc issues it.
void run_block(const std::vector<int64_t>& rows, int repeats, std::mt19937_64& rng) {
  const Device gpu = Device::cuda(0);
  const int64_t d = kModel, f = kHidden;
  std::vector<int64_t> off(kExperts + 1, 0);
  for (int e = 0; e < kExperts; ++e) off[e + 1] = off[e] + rows[e];
  const int64_t total = off[kExperts];
  const Tensor x = random_bf16({total, d}, rng, 1.0f);
  const Tensor dy = random_bf16({total, d}, rng, 1.0f);
  const Tensor w13 = random_bf16({kExperts, 2 * f, d}, rng, 0.02f);
  const Tensor w2 = random_bf16({kExperts, d, f}, rng, 0.02f);
  const Tensor dw13 = Tensor::zeros({kExperts, 2 * f, d}, DType::kF32, gpu);
  const Tensor dw2 = Tensor::zeros({kExperts, d, f}, DType::kF32, gpu);
  const Tensor h = Tensor::empty({total, 2 * f}, DType::kBF16, gpu);
  const Tensor a = Tensor::empty({total, f}, DType::kBF16, gpu);
  const Tensor y = Tensor::empty({total, d}, DType::kBF16, gpu);
  const Tensor da = Tensor::empty({total, f}, DType::kBF16, gpu);
  const Tensor dh = Tensor::empty({total, 2 * f}, DType::kBF16, gpu);
  const Tensor dx = Tensor::empty({total, d}, DType::kBF16, gpu);
  auto slice = [](const Tensor& stacked, int e) {
    return stacked.rows(e, e + 1).view({stacked.dim(1), stacked.dim(2)});
  };
  auto r = [&](const Tensor& t, int e) { return t.rows(off[e], off[e + 1]); };
  // Each pass in three phases, as the layer issues them: a GEMM per expert (fanned out over
  // `ways` streams), the SwiGLU over every expert's rows at once, a GEMM per expert.
  // Phase p of expert e (p = 0 or 2), or the whole-rows phase (p = 1, e = -1).
  auto forward = [&](int e, int p) {
    if (p == 0) matmul(r(h, e), r(x, e), slice(w13, e), false, true);
    if (p == 1) swiglu_forward(a, h);
    if (p == 2) matmul(r(y, e), r(a, e), slice(w2, e), false, true);
  };
  auto backward = [&](int e, int p) {
    if (p == 0)
      matmul_backward(r(da, e), slice(dw2, e), r(dy, e), r(a, e), slice(w2, e), false, true, 0.0f,
                      1.0f);
    if (p == 1) swiglu_backward(dh, da, h);
    if (p == 2)
      matmul_backward(r(dx, e), slice(dw13, e), r(dh, e), r(x, e), slice(w13, e), false, true, 0.0f,
                      1.0f);
  };
  // All three phases (only = -1) or one.
  auto run = [&](const std::function<void(int, int)>& piece, int ways, int only) {
    for (int p = 0; p < 3; ++p) {
      if (only >= 0 && p != only) continue;
      if (p == 1) {
        piece(-1, 1);
        continue;
      }
      StreamFanout fanout(gpu, ways);
      for (int e = 0; e < kExperts; ++e) {
        if (!rows[e]) continue;
        fanout.select(e);
        piece(e, p);
      }
    }
  };
  const double fwd_flops = 2.0 * total * d * 3 * f, bwd_flops = 2 * fwd_flops;
  struct Pass {
    const char* name;
    std::function<void(int, int)> piece;
    double flops;
    const char* ops[3];
  };
  const Pass passes[] = {
      {"block forward", forward, fwd_flops, {"w13", "swiglu", "w2"}},
      {"block backward", backward, bwd_flops, {"w2 dX+dW", "swiglu bwd", "w13 dX+dW"}}};
  for (const Pass& pass : passes) {
    std::printf("%s (%.1f GFLOP)\n", pass.name, pass.flops * 1e-9);
    for (int ways : {1, 4}) {
      const Timing t = time_it([&] { run(pass.piece, ways, -1); }, repeats, spin_cycles_30ms());
      std::printf("  %d stream%s %8.3f ms %6.1f TFLOP/s | host issue %7.1f us\n", ways,
                  ways == 1 ? " " : "s", t.gpu_ms, pass.flops / t.gpu_ms * 1e-9, t.host_us);
    }
    for (int op = 0; op < 3; ++op) {
      const Timing t = time_it([&] { run(pass.piece, 1, op); }, repeats, spin_cycles_30ms());
      std::printf("    %-11s %8.3f ms (one stream)\n", pass.ops[op], t.gpu_ms);
    }
  }

  // The layer's batched way (SWITCHYARD_EXPERT_GEMMS=batched): rows copied into zero-padded
  // blocks of one length (a multiple of 64), one strided-batched GEMM per product, real rows
  // copied back; the copies and the zero fill are timed with it.
  int64_t most = 0;
  for (int64_t r : rows) most = std::max(most, r);
  const int64_t block = (most + 63) / 64 * 64;
  const int64_t padded_rows = block * kExperts;
  const Tensor xpad = Tensor::empty({kExperts, block, d}, DType::kBF16, gpu);
  const Tensor hpad = Tensor::empty({kExperts, block, 2 * f}, DType::kBF16, gpu);
  const Tensor apad = Tensor::empty({kExperts, block, f}, DType::kBF16, gpu);
  const Tensor ypad = Tensor::empty({kExperts, block, d}, DType::kBF16, gpu);
  const Tensor dypad = Tensor::empty({kExperts, block, d}, DType::kBF16, gpu);
  const Tensor dapad = Tensor::empty({kExperts, block, f}, DType::kBF16, gpu);
  const Tensor dhpad = Tensor::empty({kExperts, block, 2 * f}, DType::kBF16, gpu);
  const Tensor dxpad = Tensor::empty({kExperts, block, d}, DType::kBF16, gpu);
  const auto flat = [&](const Tensor& padded) { return padded.view({padded_rows, padded.dim(2)}); };
  auto batched_forward = [&] {
    fill_(xpad, 0.0f);
    rows_to_blocks(flat(xpad), x, off, block);
    matmul_batched(hpad, xpad, w13, false, true);
    swiglu_forward(apad.view({padded_rows, f}), hpad.view({padded_rows, 2 * f}));
    matmul_batched(ypad, apad, w2, false, true);
    rows_from_blocks(y, flat(ypad), off, block);
  };
  auto batched_backward = [&] {
    fill_(dypad, 0.0f);
    rows_to_blocks(flat(dypad), dy, off, block);
    matmul_backward_batched(dapad, dw2, dypad, apad, w2, false, true, 0.0f, 1.0f);
    swiglu_backward(dhpad.view({padded_rows, 2 * f}), dapad.view({padded_rows, f}),
                    hpad.view({padded_rows, 2 * f}));
    matmul_backward_batched(dxpad, dw13, dhpad, xpad, w13, false, true, 0.0f, 1.0f);
    rows_from_blocks(dx, flat(dxpad), off, block);
  };
  // The batched products alone, as if the permute wrote the padded blocks itself: what the
  // copies cost, and the most that moving the padding into the permute could gain.
  auto gemms_forward = [&] {
    matmul_batched(hpad, xpad, w13, false, true);
    swiglu_forward(apad.view({padded_rows, f}), hpad.view({padded_rows, 2 * f}));
    matmul_batched(ypad, apad, w2, false, true);
  };
  auto gemms_backward = [&] {
    matmul_backward_batched(dapad, dw2, dypad, apad, w2, false, true, 0.0f, 1.0f);
    swiglu_backward(dhpad.view({padded_rows, 2 * f}), dapad.view({padded_rows, f}),
                    hpad.view({padded_rows, 2 * f}));
    matmul_backward_batched(dxpad, dw13, dhpad, xpad, w13, false, true, 0.0f, 1.0f);
  };
  std::printf("batched blocks of %lld rows (padding %.1f%%)\n", static_cast<long long>(block),
              100.0 * (padded_rows - total) / total);
  for (auto [name, fn, flops] :
       {std::tuple{"forward ", std::function<void()>(batched_forward), fwd_flops},
        std::tuple{"backward", std::function<void()>(batched_backward), bwd_flops},
        std::tuple{"forward, GEMMs and SwiGLU only ", std::function<void()>(gemms_forward),
                   fwd_flops},
        std::tuple{"backward, GEMMs and SwiGLU only", std::function<void()>(gemms_backward),
                   bwd_flops}}) {
    const Timing t = time_it(fn, repeats, spin_cycles_30ms());
    std::printf("  %s %8.3f ms %6.1f TFLOP/s (real rows) | host issue %7.1f us\n", name, t.gpu_ms,
                flops / t.gpu_ms * 1e-9, t.host_us);
  }
}

// Host time to issue the w13 forward's per-expert calls (no GPU work measured: the GPU spins
// meanwhile) when what the calls see changes from one call set to the next, as it does from
// one training step to the next: (a) the same row counts and buffers each time, (b) fresh
// row counts each time (new shapes and new slice addresses), (c) fresh counts, each rounded
// up to a multiple of 128 rows, (d) the same counts but the buffers alternating between two
// allocations (new addresses, same shapes). Says whether cuBLASLt's host cost per call
// depends on seeing a shape (or an address) before.
void run_issue(int repeats, std::mt19937_64& rng) {
  const Device gpu = Device::cuda(0);
  const int64_t d = kModel, n = 2 * kHidden, slack = kExperts * 128;
  const int64_t total = kTokens * kTopK;
  const Tensor x[2] = {random_bf16({total + slack, d}, rng, 1.0f),
                       random_bf16({total + slack, d}, rng, 1.0f)};
  const Tensor h[2] = {Tensor::empty({total + slack, n}, DType::kBF16, gpu),
                       Tensor::empty({total + slack, n}, DType::kBF16, gpu)};
  const Tensor w13 = random_bf16({kExperts, n, d}, rng, 0.02f);
  const std::vector<int64_t> fixed = expert_rows(false, rng);
  const int64_t spin = spin_cycles_30ms();
  auto offsets = [](const std::vector<int64_t>& rows, int64_t multiple) {
    std::vector<int64_t> off(kExperts + 1, 0);
    for (int e = 0; e < kExperts; ++e)
      off[e + 1] = off[e] + (rows[e] + multiple - 1) / multiple * multiple;
    return off;
  };
  // Median host microseconds per call over `repeats` call sets (after kWarmup sets).
  auto issue_us = [&](bool fresh, int64_t multiple, bool alternate) {
    std::vector<double> us;
    for (int i = 0; i < bench::kWarmup + repeats; ++i) {
      const std::vector<int64_t> rows = fresh ? expert_rows(false, rng) : fixed;
      const std::vector<int64_t> off = offsets(rows, multiple);
      const int buf = alternate ? i % 2 : 0;
      spin_kernel<<<1, 1, 0, cuda::stream()>>>(spin);
      const auto t0 = std::chrono::steady_clock::now();
      for (int e = 0; e < kExperts; ++e) {
        matmul(h[buf].rows(off[e], off[e + 1]), x[buf].rows(off[e], off[e + 1]),
               w13.rows(e, e + 1).view({n, d}), false, true);
      }
      const double t =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      if (i >= bench::kWarmup) us.push_back(t / kExperts);
      SY_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
    }
    std::sort(us.begin(), us.end());
    return us[us.size() / 2];
  };
  std::printf("host issue per w13 forward call (16 experts, ~2048 rows each)\n");
  std::printf("  (a) same counts, same buffers           %6.1f us\n", issue_us(false, 1, false));
  std::printf("  (b) fresh counts each call set           %6.1f us\n", issue_us(true, 1, false));
  std::printf("  (c) fresh counts rounded up to 128 rows  %6.1f us\n", issue_us(true, 128, false));
  std::printf("  (d) same counts, alternating buffers     %6.1f us\n", issue_us(false, 1, true));
}

}  // namespace
}  // namespace sy

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::max(1, std::atoi(argv[1])) : 20;
  const std::string gpu = sy::bench::gpu_name_or_exit("expert_gemm_bench");
  std::printf("expert_gemm_bench: %s, bf16, %d experts, median of %d runs after %d warmup\n",
              gpu.c_str(), sy::kExperts, repeats, sy::kWarmup);
  using sy::kHidden, sy::kModel;
  // Row-major sy::matmul terms, per expert with r rows:
  //   w13 fwd: h [r, 2H] = x [r, D] @ W13^T        (W13 [2H, D])
  //   w2 fwd:  y [r, D]  = a [r, H] @ W2^T         (W2 [D, H])
  //   w13 dX:  dx [r, D] = dh [r, 2H] @ W13
  // (the weight gradients, dW = dY^T X per expert, have no per-expert weight operand)
  const sy::Kind kinds[] = {
      {"w13 forward", kModel, 2 * kHidden, kModel, true},
      {"w2 forward", kHidden, kModel, kHidden, true},
      {"w13 backward dX", 2 * kHidden, 2 * kHidden, kModel, false},
  };
  std::mt19937_64 rng(1234);
  sy::run_issue(repeats, rng);
  sy::Bench bench(repeats, rng);
  for (bool skewed : {false, true}) {
    const std::vector<int64_t> rows = sy::expert_rows(skewed, rng);
    std::printf("== %s routing\n", skewed ? "skewed (1/(e+1))" : "uniform");
    for (const sy::Kind& kind : kinds) bench.run(kind, rows);
    sy::run_block(rows, repeats, rng);
  }
  return 0;
}
