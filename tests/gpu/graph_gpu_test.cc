// CapturedGraph on the GPU: a captured body (a cuBLASLt GEMM, elementwise ops, temporaries it
// makes itself) replayed on inputs rewritten in place gives what the same ops give on the CPU
// for those inputs, every time; the memory of the tensors the body made is the graph's alone
// (tensors made between replays keep their values); the body's kept output holds the last
// replay's result; a host copy inside a capture is refused with a message naming it; the
// graph's memory goes back to the allocator's cache when the graph goes.
//
// Bounds: the GEMM is f32 on both sides, summed in another order: 1e-5 relative + 1e-5 of the
// peak. Between replays of one graph the results are bit-identical (same kernels, same inputs).
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/elementwise.h"
#include "kernels/graph.h"
#include "kernels/matmul.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::close_to;
using testing::kGpu;
using testing::random_normal;
using testing::rng_for_test;

// out = (a @ b) * 0.5 + a @ b + c, through temporaries (what a captured step does).
void body_ops(const Tensor& out, const Tensor& a, const Tensor& b, const Tensor& c) {
  Tensor ab = Tensor::empty(out.shape(), DType::kF32, out.device());
  matmul(ab, a, b, false, false);
  Tensor half = Tensor::empty(out.shape(), DType::kF32, out.device());
  half.copy_from(ab);
  scale_(half, 0.5f);
  Tensor sum = Tensor::empty(out.shape(), DType::kF32, out.device());
  add(sum, half, ab);
  add(out, sum, c);
}

Tensor cpu_result(const Tensor& a, const Tensor& b, const Tensor& c) {
  Tensor out = Tensor::empty({a.dim(0), b.dim(1)}, DType::kF32);
  body_ops(out, a, b, c);
  return out;
}

TEST(CapturedGraphGpu, ReplaysOnInputsRewrittenInPlaceAsTheCpuComputes) {
  SKIP_WITHOUT_GPU();
  ASSERT_TRUE(CapturedGraph::supported(kGpu));
  auto rng = rng_for_test();
  const int64_t m = 48, k = 64, n = 40;
  Tensor a = Tensor::empty({m, k}, DType::kF32, kGpu), b = Tensor::empty({k, n}, DType::kF32, kGpu),
         c = Tensor::empty({m, n}, DType::kF32, kGpu), out = Tensor::empty({m, n}, DType::kF32, kGpu);
  // Warm-up as issued (what the engine does first: lazy set-up such as GEMM heuristics).
  a.copy_from(random_normal({m, k}, rng));
  b.copy_from(random_normal({k, n}, rng));
  c.copy_from(random_normal({m, n}, rng));
  body_ops(out, a, b, c);
  Tensor kept;  // a tensor the body makes and the caller keeps
  CapturedGraph graph;
  EXPECT_FALSE(graph.captured());
  graph.capture(kGpu, [&] {
    body_ops(out, a, b, c);
    kept = Tensor::empty({m, n}, DType::kF32, kGpu);
    add(kept, out, c);
  });
  ASSERT_TRUE(graph.captured());
  EXPECT_GE(graph.nodes(), 5);  // GEMM, copy, scale, two adds (+ the kept add)
  EXPECT_GT(graph.memory_bytes(), 0);
  for (int round = 0; round < 3; ++round) {
    const Tensor ha = random_normal({m, k}, rng), hb = random_normal({k, n}, rng),
                 hc = random_normal({m, n}, rng);
    a.copy_from(ha);
    b.copy_from(hb);
    c.copy_from(hc);
    // Tensors made between replays, of the sizes the body's temporaries had: the allocator
    // must not hand them the graph's memory, or the replay overwrites them.
    std::vector<Tensor> bystanders;
    for (int i = 0; i < 4; ++i) {
      bystanders.push_back(Tensor::empty({m, n}, DType::kF32, kGpu));
      bystanders.back().copy_from(testing::filled({m, n}, 100.0f + i));
    }
    graph.replay();
    const Tensor want = cpu_result(ha, hb, hc);
    EXPECT_TRUE(close_to(out, want, 1e-5, 1e-5)) << "round " << round;
    Tensor want_kept = Tensor::empty({m, n}, DType::kF32);
    add(want_kept, want, hc);
    EXPECT_TRUE(close_to(kept, want_kept, 1e-5, 1e-5)) << "round " << round;
    for (int i = 0; i < 4; ++i) {
      const std::vector<float> v = bystanders[i].to_f32_vector();
      for (float x : v) ASSERT_EQ(x, 100.0f + i) << "a tensor made between replays was overwritten";
    }
    // Replaying again on the same inputs is bit-identical.
    const std::vector<float> first = out.to_f32_vector();
    graph.replay();
    EXPECT_EQ(out.to_f32_vector(), first) << "round " << round;
  }
}

TEST(CapturedGraphGpu, ItsMemoryReturnsToTheCacheWhenTheGraphGoes) {
  SKIP_WITHOUT_GPU();
  const int64_t rows = 1 << 16;  // 256 KiB temporaries
  Tensor x = Tensor::zeros({rows}, DType::kF32, kGpu), y = Tensor::zeros({rows}, DType::kF32, kGpu);
  MemoryStats during;
  int64_t graph_bytes = 0;
  {
    CapturedGraph graph;
    graph.capture(kGpu, [&] {
      Tensor t = Tensor::empty({rows}, DType::kF32, kGpu);
      add(t, x, x);
      add(y, t, x);
    });
    graph.replay();
    graph_bytes = graph.memory_bytes();
    EXPECT_GE(graph_bytes, rows * 4);
    during = memory_stats(kGpu);
  }
  // While the graph lives its blocks are neither held by tensors nor cached for others;
  // afterwards they are cached again.
  const MemoryStats after = memory_stats(kGpu);
  EXPECT_EQ(after.in_use, during.in_use);
  EXPECT_EQ(after.cached, during.cached + graph_bytes);
  EXPECT_EQ(y.to_f32_vector(), std::vector<float>(rows, 0.0f));
}

TEST(CapturedGraphGpuDeathTest, AHostCopyInsideACaptureIsRefused) {
  SKIP_WITHOUT_GPU();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Tensor x = Tensor::zeros({16}, DType::kF32, kGpu);
  EXPECT_DEATH(
      {
        CapturedGraph graph;
        graph.capture(kGpu, [&] { (void)x.to(Device::cpu()); });
      },
      "inside a captured CUDA graph");
  EXPECT_DEATH(
      {
        CapturedGraph graph;
        graph.capture(kGpu, [&] { x.copy_from(Tensor::zeros({16}, DType::kF32)); });
      },
      "inside a captured CUDA graph");
}

}  // namespace
}  // namespace sy
