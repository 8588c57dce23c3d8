// GPU parity of the slot KV cache (kernels/cuda/kv_cache.cu) with the CPU reference on fresh
// random inputs: appends (whole-vector and element paths, idle rows, ragged counts) must land
// bit for bit; decode attention over ragged lengths (idle rows, lengths up to the capacity),
// MHA and GQA, Tq = 1 and chunks of several queries, head dims 8 to 256, f32 and bf16, from a
// cache whose unwritten positions hold random values (a read past a row's length shows).
//
// Tolerances, elementwise, with peak = max(1, the largest |cpu|):
//   f32:  |gpu - cpu| <= 1e-4 |cpu| + 1e-5 peak   (the same fp32 math, summed in another order)
//   bf16: |gpu - cpu| <= 2e-2 |cpu| + 1e-3 peak   (inputs rounded to bf16 for both sides, the
//         CPU computing on them in fp32; the GPU's output is rounded to bf16)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ostream>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kv_cache.h"
#include "tests/testing/gpu_testing.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::close_to;
using testing::kGpu;
using testing::on_gpu;
using testing::random_normal;
using testing::rng_for_test;
using testing::rounded;

Tensor i32(const std::vector<int32_t>& v) {
  return Tensor::from_i32(v, {static_cast<int64_t>(v.size())});
}

struct AppendCase {
  int64_t slots, capacity, rows, steps, kv_heads, hd;
  DType dtype;
};

void PrintTo(const AppendCase& c, std::ostream* os) {
  *os << "S" << c.slots << "_L" << c.capacity << "_R" << c.rows << "_T" << c.steps << "_Hkv"
      << c.kv_heads << "_hd" << c.hd << "_" << dtype_name(c.dtype);
}

class KvCacheAppendGpu : public ::testing::TestWithParam<AppendCase> {};

TEST_P(KvCacheAppendGpu, LandsBitForBit) {
  SKIP_WITHOUT_GPU();
  const AppendCase c = GetParam();
  auto rng = rng_for_test();
  const Shape pool = {c.slots, c.capacity, c.kv_heads, c.hd};
  const Shape fresh = {c.rows, c.steps, c.kv_heads, c.hd};
  Tensor ck = rounded(random_normal(pool, rng), c.dtype), cv = rounded(random_normal(pool, rng), c.dtype);
  const Tensor k = rounded(random_normal(fresh, rng), c.dtype), v = rounded(random_normal(fresh, rng), c.dtype);
  // Distinct slots, ragged counts (some idle, whose slot is -1), starts that fit.
  std::vector<int32_t> slot(c.rows), start(c.rows), count(c.rows);
  std::vector<int32_t> order(c.slots);
  for (int64_t s = 0; s < c.slots; ++s) order[s] = static_cast<int32_t>(s);
  std::shuffle(order.begin(), order.end(), rng);
  for (int64_t r = 0; r < c.rows; ++r) {
    count[r] = r % 5 == 3 ? 0 : static_cast<int32_t>(rng() % (c.steps + 1));
    slot[r] = count[r] == 0 ? -1 : order[r];
    start[r] = static_cast<int32_t>(rng() % (c.capacity - count[r] + 1));
  }
  Tensor gk = on_gpu(ck, c.dtype), gv = on_gpu(cv, c.dtype);
  kv_cache_append(gk, gv, on_gpu(k, c.dtype), on_gpu(v, c.dtype), i32(slot).to(kGpu),
                  i32(start).to(kGpu), i32(count).to(kGpu));
  kv_cache_append(ck, cv, k, v, i32(slot), i32(start), i32(count));
  EXPECT_EQ(gk.to_f32_vector(), ck.to_f32_vector());
  EXPECT_EQ(gv.to_f32_vector(), cv.to_f32_vector());
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, KvCacheAppendGpu,
    ::testing::Values(AppendCase{80, 64, 64, 1, 16, 64, DType::kBF16},  // a decode step
                      AppendCase{40, 300, 24, 129, 4, 128, DType::kBF16},  // a ragged prefill
                      AppendCase{12, 50, 9, 7, 2, 32, DType::kF32},
                      AppendCase{10, 20, 7, 5, 1, 6, DType::kF32},  // not whole vectors
                      AppendCase{10, 20, 7, 5, 3, 6, DType::kBF16}));

struct DecodeCase {
  int64_t rows, tq, heads, kv_heads, hd, capacity;
  DType dtype;
};

void PrintTo(const DecodeCase& c, std::ostream* os) {
  *os << "R" << c.rows << "_Tq" << c.tq << "_H" << c.heads << "_Hkv" << c.kv_heads << "_hd"
      << c.hd << "_L" << c.capacity << "_" << dtype_name(c.dtype);
}

struct DecodeInputs {
  Tensor q, ck, cv;  // CPU f32, rounded to the case's dtype
  std::vector<int32_t> slot, length;
};

DecodeInputs make_decode(const DecodeCase& c, std::mt19937_64& rng) {
  DecodeInputs in;
  const int64_t slots = c.rows + 3;
  in.q = rounded(random_normal({c.rows, c.tq, c.heads, c.hd}, rng), c.dtype);
  in.ck = rounded(random_normal({slots, c.capacity, c.kv_heads, c.hd}, rng), c.dtype);
  in.cv = rounded(random_normal({slots, c.capacity, c.kv_heads, c.hd}, rng), c.dtype);
  std::vector<int32_t> order(slots);
  for (int64_t s = 0; s < slots; ++s) order[s] = static_cast<int32_t>(s);
  std::shuffle(order.begin(), order.end(), rng);
  for (int64_t r = 0; r < c.rows; ++r) {
    int32_t len = static_cast<int32_t>(c.tq + rng() % (c.capacity - c.tq + 1));
    if (r == 1) len = static_cast<int32_t>(c.capacity);  // a full slot
    if (r == 2) len = static_cast<int32_t>(c.tq);       // only the new positions
    const bool idle = c.rows > 3 && r % 4 == 3;
    in.length.push_back(idle ? 0 : len);
    in.slot.push_back(idle ? -1 : order[r]);
  }
  return in;
}

class DecodeAttentionGpu : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(DecodeAttentionGpu, MatchesCpu) {
  SKIP_WITHOUT_GPU();
  const DecodeCase c = GetParam();
  auto rng = rng_for_test();
  const DecodeInputs in = make_decode(c, rng);
  Tensor want = Tensor::empty(in.q.shape());
  decode_attention(want, in.q, in.ck, in.cv, i32(in.slot), i32(in.length));
  // Both bf16 kernels (the vector one where the head dim allows; f32 always scalar).
  const DecodeAttentionKernel before = decode_attention_kernel();
  for (DecodeAttentionKernel kernel : {DecodeAttentionKernel::kScalar, DecodeAttentionKernel::kVector}) {
    set_decode_attention_kernel(kernel);
    Tensor got = testing::filled(in.q.shape(), testing::kNaN).to(c.dtype).to(kGpu);
    decode_attention(got, on_gpu(in.q, c.dtype), on_gpu(in.ck, c.dtype), on_gpu(in.cv, c.dtype),
                     i32(in.slot).to(kGpu), i32(in.length).to(kGpu));
    const char* name = kernel == DecodeAttentionKernel::kVector ? "vector" : "scalar";
    if (c.dtype == DType::kF32) {
      EXPECT_TRUE(close_to(got, want, 1e-4, 1e-5)) << name;
    } else {
      EXPECT_TRUE(close_to(got, want, 2e-2, 1e-3)) << name;
    }
  }
  set_decode_attention_kernel(before);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, DecodeAttentionGpu,
    ::testing::Values(
        // the bench model's decode step: 16 heads of 64, MHA
        // (fewer rows than the bench's 64: the CPU reference's time grows with rows x length)
        DecodeCase{16, 1, 16, 16, 64, 4096, DType::kBF16},
        DecodeCase{256, 1, 16, 16, 64, 256, DType::kBF16},
        DecodeCase{16, 1, 16, 16, 64, 4096, DType::kF32},
        // few rows, long contexts: split over the keys
        DecodeCase{1, 1, 16, 16, 64, 4096, DType::kBF16}, DecodeCase{3, 1, 8, 2, 128, 4096, DType::kF32},
        // GQA, drafts and chunks (several query tiles), head dims 32 .. 256
        DecodeCase{8, 1, 32, 4, 128, 2048, DType::kBF16}, DecodeCase{8, 4, 16, 4, 64, 700, DType::kBF16},
        DecodeCase{5, 17, 8, 8, 64, 300, DType::kF32}, DecodeCase{6, 3, 12, 3, 32, 257, DType::kBF16},
        DecodeCase{4, 2, 4, 1, 256, 513, DType::kF32}, DecodeCase{4, 5, 6, 2, 96, 130, DType::kBF16},
        DecodeCase{7, 1, 4, 4, 192, 1000, DType::kF32},
        // bf16's vector kernel at each query-tile size (1, 2, 4, 8 queries a block) and
        // head dims 8 .. 256; 96 (not a power of two of vectors) takes the scalar kernel
        DecodeCase{5, 2, 8, 8, 128, 300, DType::kBF16}, DecodeCase{5, 3, 4, 4, 64, 300, DType::kBF16},
        DecodeCase{4, 2, 4, 1, 256, 513, DType::kBF16}, DecodeCase{3, 1, 8, 1, 64, 1500, DType::kBF16},
        // Head dims off the 32 grid (the tiny config's 24, test models' 8 and 16, a 40): the
        // padded lanes must add nothing.
        DecodeCase{5, 1, 4, 2, 24, 300, DType::kF32}, DecodeCase{4, 3, 4, 4, 8, 130, DType::kBF16},
        DecodeCase{6, 1, 4, 1, 16, 2000, DType::kBF16}, DecodeCase{3, 2, 6, 3, 40, 257, DType::kF32}));

// Not a check: one decode step's time at the bench shapes and the share of HBM bandwidth its
// reads of the cache take (bytes of K and V up to each row's length).
TEST(DecodeAttentionGpuTiming, BenchShapes) {
  SKIP_WITHOUT_GPU();
  auto rng = rng_for_test();
  for (int64_t rows : {64, 256}) {
    for (int64_t len : {512, 4096}) {
      const int64_t slots = rows;
      const Tensor q = on_gpu(random_normal({rows, 1, 16, 64}, rng), DType::kBF16);
      // One random slot copied into every slot: random values without generating gigabytes
      // on the host.
      const Tensor k_slot = on_gpu(random_normal({1, len, 16, 64}, rng), DType::kBF16);
      const Tensor v_slot = on_gpu(random_normal({1, len, 16, 64}, rng), DType::kBF16);
      const Tensor ck = Tensor::empty({slots, len, 16, 64}, DType::kBF16, kGpu);
      const Tensor cv = Tensor::empty({slots, len, 16, 64}, DType::kBF16, kGpu);
      for (int64_t s = 0; s < slots; ++s) {
        ck.rows(s, s + 1).copy_from(k_slot);
        cv.rows(s, s + 1).copy_from(v_slot);
      }
      std::vector<int32_t> slot(rows), length(rows, static_cast<int32_t>(len));
      for (int64_t r = 0; r < rows; ++r) slot[r] = static_cast<int32_t>(r);
      const Tensor gs = i32(slot).to(kGpu), gl = i32(length).to(kGpu);
      Tensor out = Tensor::empty(q.shape(), DType::kBF16, kGpu);
      auto wait = [&] { (void)out.view({out.numel()}).rows(0, 1).to_f32_vector(); };
      const DecodeAttentionKernel before = decode_attention_kernel();
      for (DecodeAttentionKernel kernel :
           {DecodeAttentionKernel::kScalar, DecodeAttentionKernel::kVector}) {
        set_decode_attention_kernel(kernel);
        decode_attention(out, q, ck, cv, gs, gl);
        wait();
        constexpr int kRepeats = 20;
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < kRepeats; ++i) decode_attention(out, q, ck, cv, gs, gl);
        wait();
        const double us = std::chrono::duration<double, std::micro>(
                              std::chrono::steady_clock::now() - start)
                              .count() /
                          kRepeats;
        const double bytes = 2.0 * rows * len * 16 * 64 * 2;
        std::printf("decode_attention bf16 %s R%lld len %lld H16 hd64: %.1f us, %.0f GB/s of KV\n",
                    kernel == DecodeAttentionKernel::kVector ? "vector" : "scalar",
                    static_cast<long long>(rows), static_cast<long long>(len), us,
                    bytes / us * 1e-3);
      }
      set_decode_attention_kernel(before);
    }
  }
}

}  // namespace
}  // namespace sy
