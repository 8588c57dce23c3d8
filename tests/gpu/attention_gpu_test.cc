// GPU parity of causal grouped-query attention: the CUDA kernels against the CPU reference on
// the same random inputs, forward (out, lse) and backward (dq, dk, dv), f32 and bf16, MHA and
// GQA, training (Tq == Tk) and decode (Tq < Tk) shapes, head dims on and off the fast sizes;
// and two GPU runs against each other, bit for bit. bf16 with head dim 64 or 128 runs on the
// tensor-core kernels (kernels/cuda/attention_tc.cu) unless SWITCHYARD_ATTENTION=simt; their own
// shapes below cover the tile tails (T = 1, 17, 129, 300), decode, GQA 4:1 and 1:1 and B > 1,
// and the two GPU paths are held to each other as well.
//
// Tolerances, elementwise, with peak = max(1, the largest |cpu| of the tensor) (inputs are unit
// normals, so 1 is the scale of a gradient that cancels to exactly zero on the CPU, as dq
// and dk do for a single token):
//   f32:  |gpu - cpu| <= 1e-4 |cpu| + 1e-5 peak   (the same fp32 math, summed in another order)
//   bf16: |gpu - cpu| <= 2e-2 |cpu| + 1e-3 peak   (inputs rounded to bf16 for both sides, the
//         CPU computing on them in fp32; the GPU's outputs are rounded to bf16, lse stays f32
//         and is held to the f32 bound)
//   bf16 on tensor cores: |gpu - cpu| <= 2e-2 |cpu| + 1e-2 peak   (P and dS are rounded to bf16
//         as mma operands, as in FlashAttention-2: up to 2^-9 of each term of out, dv, dq and
//         dk, a few of which can be of order peak; 2.5-4e-3 peak was the worst seen in an
//         emulation of these kernels on small shapes, a wrong mask or tile costs far more)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <ostream>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#ifdef SWITCHYARD_HAVE_CUDA
#include "kernels/cuda/attention_tc.h"
#endif
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::on_gpu;
using testing::rounded;

using testing::all_close;
using testing::random_normal;
using testing::rng_for_test;

struct Case {
  int64_t batch, tq, tk, heads, kv_heads, hd;
  DType dtype;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << "B" << c.batch << "_Tq" << c.tq << "_Tk" << c.tk << "_H" << c.heads << "_Hkv" << c.kv_heads
      << "_hd" << c.hd << "_" << dtype_name(c.dtype);
}

::testing::AssertionResult close_to(const Tensor& gpu, const Tensor& cpu, DType dtype,
                                    bool tensor_cores = false) {
  const std::vector<float> ref = cpu.to_f32_vector();
  double peak = 1;
  for (float x : ref) peak = std::max(peak, std::fabs(static_cast<double>(x)));
  const bool f32 = dtype == DType::kF32;
  const double atol = f32 ? 1e-5 : (tensor_cores ? 1e-2 : 1e-3);
  return all_close(gpu.to_f32_vector(), std::vector<double>(ref.begin(), ref.end()),
                   f32 ? 1e-4 : 2e-2, atol * peak);
}

// x (CPU f32) rounded to `dtype` and back: the values both sides compute on.

// Fresh normal inputs of a case, already rounded to its dtype.
struct Inputs {
  Tensor q, k, v, dout;
};
Inputs make_inputs(const Case& c, std::mt19937_64& rng) {
  return {rounded(random_normal({c.batch, c.tq, c.heads, c.hd}, rng), c.dtype),
          rounded(random_normal({c.batch, c.tk, c.kv_heads, c.hd}, rng), c.dtype),
          rounded(random_normal({c.batch, c.tk, c.kv_heads, c.hd}, rng), c.dtype),
          rounded(random_normal({c.batch, c.tq, c.heads, c.hd}, rng), c.dtype)};
}

// True when the case may run on tensor cores (ours, or cuDNN's for the training shapes it
// takes; kernels/cuda/attention_tc.h), which are held to the looser bf16 bound.
bool on_tensor_cores([[maybe_unused]] const Case& c) {
#ifdef SWITCHYARD_HAVE_CUDA
  if (c.dtype != DType::kBF16) return false;
  const cuda::AttentionKernels kernels = cuda::attention_kernels();
  if (kernels == cuda::AttentionKernels::kCudnn && c.tq == c.tk && c.hd % 8 == 0 && c.hd <= 256)
    return true;
  return (c.hd == 64 || c.hd == 128) && kernels != cuda::AttentionKernels::kSimt;
#else
  return false;
#endif
}

class AttentionGpuTest : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionGpuTest, ForwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  auto rng = rng_for_test();
  const Inputs in = make_inputs(c, rng);
  Tensor out = Tensor::empty(in.q.shape());
  Tensor lse = Tensor::empty({c.batch, c.heads, c.tq});
  attention_forward(out, lse, in.q, in.k, in.v);

  const Device gpu = Device::cuda(0);
  Tensor out_gpu = Tensor::empty(in.q.shape(), c.dtype, gpu);
  Tensor lse_gpu = Tensor::empty(lse.shape(), DType::kF32, gpu);
  attention_forward(out_gpu, lse_gpu, on_gpu(in.q, c.dtype), on_gpu(in.k, c.dtype),
                    on_gpu(in.v, c.dtype));
  EXPECT_TRUE(close_to(out_gpu, out, c.dtype, on_tensor_cores(c))) << "out";
  EXPECT_TRUE(close_to(lse_gpu, lse, DType::kF32)) << "lse";
}

TEST_P(AttentionGpuTest, BackwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  auto rng = rng_for_test();
  const Inputs in = make_inputs(c, rng);
  // Both sides take the same forward results: the CPU's out (rounded to the dtype) and lse.
  Tensor out = Tensor::empty(in.q.shape());
  Tensor lse = Tensor::empty({c.batch, c.heads, c.tq});
  attention_forward(out, lse, in.q, in.k, in.v);
  out = rounded(out, c.dtype);
  Tensor dq = Tensor::empty(in.q.shape());
  Tensor dk = Tensor::empty(in.k.shape());
  Tensor dv = Tensor::empty(in.v.shape());
  attention_backward(dq, dk, dv, in.dout, in.q, in.k, in.v, out, lse);

  // Gradients are written, not accumulated: start the GPU's from garbage.
  Tensor dq_gpu = on_gpu(random_normal(dq.shape(), rng), c.dtype);
  Tensor dk_gpu = on_gpu(random_normal(dk.shape(), rng), c.dtype);
  Tensor dv_gpu = on_gpu(random_normal(dv.shape(), rng), c.dtype);
  attention_backward(dq_gpu, dk_gpu, dv_gpu, on_gpu(in.dout, c.dtype), on_gpu(in.q, c.dtype),
                     on_gpu(in.k, c.dtype), on_gpu(in.v, c.dtype), on_gpu(out, c.dtype),
                     lse.to(Device::cuda(0)));
  EXPECT_TRUE(close_to(dq_gpu, dq, c.dtype, on_tensor_cores(c))) << "dq";
  EXPECT_TRUE(close_to(dk_gpu, dk, c.dtype, on_tensor_cores(c))) << "dk";
  EXPECT_TRUE(close_to(dv_gpu, dv, c.dtype, on_tensor_cores(c))) << "dv";
}

// {batch, Tq, Tk, H, Hkv, hd}
const Case kShapes[] = {
    {1, 1, 1, 1, 1, 32, DType::kF32},         // a single token
    {1, 1, 1, 4, 2, 5, DType::kF32},          // a single token, GQA, odd head dim
    {2, 37, 37, 4, 4, 5, DType::kF32},        // odd T and head dim (generic path)
    {2, 77, 77, 4, 2, 32, DType::kF32},       // GQA
    {2, 130, 130, 4, 1, 64, DType::kF32},     // MQA, two past a tile boundary
    {3, 64, 64, 3, 3, 48, DType::kF32},       // exactly one tile, hd 48 in the 64 path
    {1, 200, 200, 8, 2, 128, DType::kF32},    // GQA, hd 128
    {1, 1024, 1024, 2, 2, 64, DType::kF32},   // long
    {1, 1024, 1024, 4, 2, 128, DType::kF32},  // long, GQA, hd 128
    {2, 3, 300, 8, 2, 64, DType::kF32},       // decode, a few queries
    {1, 1, 513, 4, 1, 32, DType::kF32},       // decode, one query
    {1, 17, 100, 6, 3, 100, DType::kF32},     // decode, hd 100 in the 128 path
    {1, 65, 65, 2, 1, 256, DType::kF32},      // hd 256
    {1, 50, 50, 2, 2, 200, DType::kF32},      // hd 200 in the 256 path
    {8, 9, 9, 4, 2, 24, DType::kF32},         // the default run's (tiny.textproto), hd 24
};

// bf16 only, head dims 64 and 128: the tensor-core kernels. Their tiles are 128 queries x 64
// keys (forward), 64 x 64 or 32 (dQ), 64 keys x 64 or 32 queries (dK/dV).
const Case kTensorCoreShapes[] = {
    {2, 1, 1, 4, 1, 64, DType::kBF16},       // a single token, GQA 4:1
    {3, 17, 17, 4, 4, 64, DType::kBF16},     // odd T inside one tile
    {2, 129, 129, 8, 2, 128, DType::kBF16},  // one past the forward tile, GQA 4:1
    {2, 300, 300, 4, 1, 64, DType::kBF16},   // odd T over several tiles, MQA
    {1, 300, 300, 2, 2, 128, DType::kBF16},  // odd T, hd 128, MHA
    {1, 256, 256, 4, 1, 128, DType::kBF16},  // whole tiles only
    {2, 17, 300, 8, 2, 64, DType::kBF16},    // decode, a query tile inside a key tile
    {2, 1, 129, 4, 1, 128, DType::kBF16},    // decode, one query
    {1, 129, 300, 4, 4, 128, DType::kBF16},  // decode, queries across tiles
    {2, 200, 333, 8, 2, 64, DType::kBF16},   // decode, offset not a multiple of a tile
};

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (Case c : kShapes) {
      c.dtype = dtype;
      cases.push_back(c);
    }
  }
  cases.insert(cases.end(), std::begin(kTensorCoreShapes), std::end(kTensorCoreShapes));
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionGpuTest, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return ::testing::PrintToString(info.param);
                         });

// Forward and backward twice on the same inputs: every output identical, bit for bit (no
// atomics in any sum).
void expect_repeats_bit_for_bit(const Case& c) {
  const DType dtype = c.dtype;
  auto rng = rng_for_test();
  const Inputs in = make_inputs(c, rng);
  const Device gpu = Device::cuda(0);
  const Tensor q = on_gpu(in.q, dtype), k = on_gpu(in.k, dtype), v = on_gpu(in.v, dtype);
  const Tensor dout = on_gpu(in.dout, dtype);
  std::vector<std::vector<float>> runs[2];
  for (auto& run : runs) {
    Tensor out = Tensor::empty(q.shape(), dtype, gpu);
    Tensor lse = Tensor::empty({c.batch, c.heads, c.tq}, DType::kF32, gpu);
    Tensor dq = Tensor::empty(q.shape(), dtype, gpu);
    Tensor dk = Tensor::empty(k.shape(), dtype, gpu);
    Tensor dv = Tensor::empty(v.shape(), dtype, gpu);
    attention_forward(out, lse, q, k, v);
    attention_backward(dq, dk, dv, dout, q, k, v, out, lse);
    for (const Tensor* t : {&out, &lse, &dq, &dk, &dv}) run.push_back(t->to_f32_vector());
  }
  const char* names[] = {"out", "lse", "dq", "dk", "dv"};
  for (size_t i = 0; i < runs[0].size(); ++i) {
    const std::vector<float>&a = runs[0][i], &b = runs[1][i];
    EXPECT_TRUE(a.size() == b.size() &&
                std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0)
        << names[i] << " differs between runs, " << ::testing::PrintToString(c);
  }
}

// The bf16 shapes run on whichever kernels are chosen (the tensor-core ones by default);
// AttentionGpu.BothBf16KernelsRepeatBitForBit forces each in turn.
TEST(AttentionGpu, RepeatsBitForBit) {
  SKIP_WITHOUT_GPU();
  for (const Case& c :
       {Case{2, 300, 300, 8, 2, 64, DType::kF32}, Case{2, 300, 300, 8, 2, 64, DType::kBF16},
        Case{2, 129, 300, 8, 2, 128, DType::kBF16}}) {
    expect_repeats_bit_for_bit(c);
  }
}

// Sets whether attention's backward must be deterministic for one scope, then puts back the
// previous setting.
class DeterminismChosen {
 public:
  explicit DeterminismChosen(bool deterministic) : saved_(attention_deterministic()) {
    set_attention_deterministic(deterministic);
  }
  ~DeterminismChosen() { set_attention_deterministic(saved_); }
  DeterminismChosen(const DeterminismChosen&) = delete;
  DeterminismChosen& operator=(const DeterminismChosen&) = delete;

 private:
  bool saved_;
};

#ifdef SWITCHYARD_HAVE_CUDA
// Chooses the attention kernels for one scope, then puts back the previous choice.
class KernelsChosen {
 public:
  explicit KernelsChosen(cuda::AttentionKernels kernels) : saved_(cuda::attention_kernels()) {
    cuda::set_attention_kernels(kernels);
  }
  ~KernelsChosen() { cuda::set_attention_kernels(saved_); }
  KernelsChosen(const KernelsChosen&) = delete;
  KernelsChosen& operator=(const KernelsChosen&) = delete;

 private:
  cuda::AttentionKernels saved_;
};

// Bit-for-bit repeats of every bf16 path, forced, whatever SWITCHYARD_ATTENTION says (cuDNN's
// backward is asked for its deterministic algorithm; its decode shapes go to the tensor cores).
TEST(AttentionGpu, EveryBf16PathRepeatsBitForBit) {
  SKIP_WITHOUT_GPU();
  for (cuda::AttentionKernels kernels :
       {cuda::AttentionKernels::kTensorCore, cuda::AttentionKernels::kSimt,
        cuda::AttentionKernels::kCudnn}) {
#ifndef SWITCHYARD_HAVE_CUDNN_ATTENTION
    if (kernels == cuda::AttentionKernels::kCudnn) continue;  // not in this build
#endif
    KernelsChosen chosen(kernels);
    expect_repeats_bit_for_bit({2, 300, 300, 8, 2, 64, DType::kBF16});
    expect_repeats_bit_for_bit({2, 129, 300, 8, 2, 128, DType::kBF16});
  }
}

// One bf16 path against the CUDA-core kernels on the same GPU inputs, held to the tensor-core
// bf16 bound with the CUDA-core results as the reference. `own_forward`: the path's backward
// takes its own forward's out and lse (cuDNN's, whose statistics must then be the log-sum-exp
// the contract names: the lse check says so); otherwise both backward passes take the CUDA-core
// forward's results, so only the backward differs. Gradients start from garbage (written).
void expect_path_agrees_with_simt(const Case& c, cuda::AttentionKernels path, bool own_forward) {
  auto rng = rng_for_test();
  const Inputs in = make_inputs(c, rng);
  const Device gpu = Device::cuda(0);
  const Tensor q = on_gpu(in.q, c.dtype), k = on_gpu(in.k, c.dtype), v = on_gpu(in.v, c.dtype);
  const Tensor dout = on_gpu(in.dout, c.dtype);
  struct Results {
    Tensor out, lse, dq, dk, dv;
  };
  Results simt, other;
  for (auto [kernels, r] :
       {std::pair{cuda::AttentionKernels::kSimt, &simt}, std::pair{path, &other}}) {
    KernelsChosen chosen(kernels);
    r->out = Tensor::empty(q.shape(), c.dtype, gpu);
    r->lse = Tensor::empty({c.batch, c.heads, c.tq}, DType::kF32, gpu);
    r->dq = on_gpu(random_normal(q.shape(), rng), c.dtype);
    r->dk = on_gpu(random_normal(k.shape(), rng), c.dtype);
    r->dv = on_gpu(random_normal(v.shape(), rng), c.dtype);
    attention_forward(r->out, r->lse, q, k, v);
    const Results& fwd = own_forward ? *r : simt;
    attention_backward(r->dq, r->dk, r->dv, dout, q, k, v, fwd.out, fwd.lse);
  }
  EXPECT_TRUE(close_to(other.out, simt.out, c.dtype, true)) << "out";
  EXPECT_TRUE(close_to(other.lse, simt.lse, DType::kF32)) << "lse";
  EXPECT_TRUE(close_to(other.dq, simt.dq, c.dtype, true)) << "dq";
  EXPECT_TRUE(close_to(other.dk, simt.dk, c.dtype, true)) << "dk";
  EXPECT_TRUE(close_to(other.dv, simt.dv, c.dtype, true)) << "dv";
}

#ifdef SWITCHYARD_HAVE_CUDNN_ATTENTION
// cuDNN is the default where the build has it and takes the benchmark's training shape. A
// shape whose graph it refuses goes to our kernels instead of aborting: cuDNN 9 on an H200
// refused the forward of T = 1 with grouped heads (Hkv 1) and the backward of T = 1 with
// Hkv 4 (which shapes it refuses is cuDNN's business; CudnnMatchesSimt checks the results of
// T = 1, whichever path runs). The answer is remembered: asking again gives the same.
TEST(AttentionGpu, CudnnTakesTrainingShapesAndHandsBackWhatItRefuses) {
  SKIP_WITHOUT_GPU();
  if (std::getenv("SWITCHYARD_ATTENTION") == nullptr) {
    EXPECT_EQ(cuda::attention_kernels(), cuda::AttentionKernels::kCudnn) << "the default";
  }
  KernelsChosen chosen(cuda::AttentionKernels::kCudnn);
  const Device gpu = Device::cuda(0);
  auto takes = [&](int64_t t, int64_t kv_heads, bool backward) {
    const Tensor q = Tensor::zeros({2, t, 4, 64}, DType::kBF16, gpu);
    const Tensor kv = Tensor::zeros({2, t, kv_heads, 64}, DType::kBF16, gpu);
    if (!backward) return cuda::cudnn_attention_takes({&q, &kv, &kv, &q}, false);
    return cuda::cudnn_attention_takes({&q, &kv, &kv, &q, &q, &q, &kv, &kv}, true);
  };
  for (bool backward : {false, true}) {
    EXPECT_TRUE(takes(256, 4, backward)) << "backward " << backward;
    for (auto [t, kv_heads] : {std::pair<int64_t, int64_t>{1, 1}, {1, 4}, {256, 1}}) {
      const bool first = takes(t, kv_heads, backward);  // refused or not, no abort
      EXPECT_EQ(takes(t, kv_heads, backward), first) << "T " << t << " Hkv " << kv_heads;
    }
  }
}
#endif

class AttentionKernelsAgree : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionKernelsAgree, TensorCoreMatchesSimt) {
  SKIP_WITHOUT_GPU();
  expect_path_agrees_with_simt(GetParam(), cuda::AttentionKernels::kTensorCore, false);
}

// cuDNN's fused attention (SWITCHYARD_ATTENTION=cudnn), for the training shapes it takes:
// deterministic (the default), then with the backward free to add dq with atomics
// (Experiment.deterministic false), held to the same bound; the setting is put back after.
TEST_P(AttentionKernelsAgree, CudnnMatchesSimt) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
#ifndef SWITCHYARD_HAVE_CUDNN_ATTENTION
  GTEST_SKIP() << "this build has no cuDNN attention (CMake found no cudnn.h or NVRTC)";
#endif
  if (c.tq != c.tk) GTEST_SKIP() << "a decode shape: cuDNN's path takes training shapes only";
  EXPECT_TRUE(attention_deterministic()) << "the default";
  expect_path_agrees_with_simt(c, cuda::AttentionKernels::kCudnn, true);
  {
    SCOPED_TRACE("deterministic: false (atomics)");
    DeterminismChosen atomics(false);
    expect_path_agrees_with_simt(c, cuda::AttentionKernels::kCudnn, true);
  }
  EXPECT_TRUE(attention_deterministic());
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionKernelsAgree, ::testing::ValuesIn(kTensorCoreShapes),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return ::testing::PrintToString(info.param);
                         });
#endif  // SWITCHYARD_HAVE_CUDA

// Not a check: prints the kernels' speed on the benchmark model's attention shape (bf16,
// B 8, T 2048, 16 heads of 64), so a regression shows in the log. FLOPs count the causal
// half: 4 T^2/2 hd per (batch, head) forward (two products), 2.5x that backward.
TEST(AttentionGpu, ReportsThroughputOnTheBenchmarkShape) {
  SKIP_WITHOUT_GPU();
  const int64_t b = 8, t = 2048, h = 16, hd = 64;
  const Device gpu = Device::cuda(0);
  auto rng = rng_for_test();
  const Tensor q = on_gpu(random_normal({b, t, h, hd}, rng), DType::kBF16);
  const Tensor k = on_gpu(random_normal({b, t, h, hd}, rng), DType::kBF16);
  const Tensor v = on_gpu(random_normal({b, t, h, hd}, rng), DType::kBF16);
  const Tensor dout = on_gpu(random_normal({b, t, h, hd}, rng), DType::kBF16);
  Tensor out = Tensor::empty(q.shape(), DType::kBF16, gpu);
  Tensor lse = Tensor::empty({b, h, t}, DType::kF32, gpu);
  Tensor dq = Tensor::empty(q.shape(), DType::kBF16, gpu);
  Tensor dk = Tensor::empty(k.shape(), DType::kBF16, gpu);
  Tensor dv = Tensor::empty(v.shape(), DType::kBF16, gpu);
  // Copying one value back waits for the stream: the kernels before it have finished.
  auto wait = [&] { (void)lse.view({b * h * t}).rows(0, 1).to_f32_vector(); };
  auto time_ms = [&](auto&& fn) {
    fn();
    wait();
    constexpr int kRepeats = 5;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < kRepeats; ++i) fn();
    wait();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
               .count() /
           kRepeats;
  };
  const double fwd_ms = time_ms([&] { attention_forward(out, lse, q, k, v); });
  const double fwd_flops = 4.0 * b * h * (t * t / 2.0) * hd;
  std::printf("attention bf16 B%lld T%lld H%lld hd%lld: forward %.2f ms (%.1f TFLOP/s)\n",
              static_cast<long long>(b), static_cast<long long>(t), static_cast<long long>(h),
              static_cast<long long>(hd), fwd_ms, fwd_flops / fwd_ms * 1e-9);
  // The backward as the runs take it: deterministic (the default), and free to use atomics
  // (Experiment.deterministic false; only cuDNN's path differs).
  for (bool deterministic : {true, false}) {
    DeterminismChosen chosen(deterministic);
    const double bwd_ms =
        time_ms([&] { attention_backward(dq, dk, dv, dout, q, k, v, out, lse); });
    std::printf("  backward%s: %.2f ms (%.1f TFLOP/s)\n",
                deterministic ? " (deterministic)" : " (atomics allowed)", bwd_ms,
                2.5 * fwd_flops / bwd_ms * 1e-9);
  }
}

}  // namespace
}  // namespace sy
