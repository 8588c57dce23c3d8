// The slot KV cache (kernels/kv_cache.h) on the CPU: ragged rows prefilled in one append and
// then decoded a token at a time through their slots must give, at every step, what
// attention_forward (kernels/attention.h) gives on each row's whole sequence; also GQA, chunks
// of several queries (Tq > 1), idle rows (count 0, length 0), and refused arguments.
#include "kernels/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::all_close;
using testing::random_normal;
using testing::rng_for_test;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

Tensor i32(const std::vector<int32_t>& v) {
  return Tensor::from_i32(v, {static_cast<int64_t>(v.size())});
}

// Rows [begin, end) of a [T, ...] tensor, copied, as [1, end - begin, ...].
Tensor positions(const Tensor& seq, int64_t begin, int64_t end) {
  Tensor part = seq.rows(begin, end).clone();
  Shape s = part.shape();
  s.insert(s.begin(), 1);
  return part.view(s);
}

// attention_forward on one whole sequence: the outputs of its queries [first, last].
Tensor full_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t length,
                      int64_t tq) {
  const Tensor qs = positions(q, length - tq, length);
  const Tensor ks = positions(k, 0, length), vs = positions(v, 0, length);
  Tensor out = Tensor::empty(qs.shape()), lse = Tensor::empty({1, q.dim(1), tq});
  attention_forward(out, lse, qs, ks, vs);
  return out;
}

struct Pool {
  Tensor k, v;
};

Pool make_pool(int64_t slots, int64_t capacity, int64_t kv_heads, int64_t hd,
               std::mt19937_64& rng) {
  // Random, not zeros: a read of a position never written shows up as a wrong output.
  return {random_normal({slots, capacity, kv_heads, hd}, rng),
          random_normal({slots, capacity, kv_heads, hd}, rng)};
}

struct Shape4 {
  int64_t heads, kv_heads, hd;
};

void check_ragged_decode(const Shape4& d) {
  auto rng = rng_for_test();
  const int64_t slots = 6, capacity = 24;
  const std::vector<int32_t> slot_of = {4, 0, 2, 5};  // rows sit in scattered slots
  const std::vector<int64_t> prompt = {9, 1, 14, 5};
  const std::vector<int64_t> total = {20, 6, 24, 5};  // the last row never decodes
  const int64_t rows = 4, max_prompt = 14;
  Pool pool = make_pool(slots, capacity, d.kv_heads, d.hd, rng);
  std::vector<Tensor> q(rows), k(rows), v(rows);
  for (int64_t r = 0; r < rows; ++r) {
    q[r] = random_normal({total[r], d.heads, d.hd}, rng);
    k[r] = random_normal({total[r], d.kv_heads, d.hd}, rng);
    v[r] = random_normal({total[r], d.kv_heads, d.hd}, rng);
  }
  // Prefill: one append of ragged prompts, padded to the longest with NaN that must not land.
  Tensor pk = Tensor::empty({rows, max_prompt, d.kv_heads, d.hd});
  Tensor pv = Tensor::empty(pk.shape());
  pk.fill_(kNaN);
  pv.fill_(kNaN);
  for (int64_t r = 0; r < rows; ++r) {
    pk.rows(r, r + 1).view({max_prompt, d.kv_heads, d.hd}).rows(0, prompt[r]).copy_from(
        k[r].rows(0, prompt[r]));
    pv.rows(r, r + 1).view({max_prompt, d.kv_heads, d.hd}).rows(0, prompt[r]).copy_from(
        v[r].rows(0, prompt[r]));
  }
  kv_cache_append(pool.k, pool.v, pk, pv, i32(slot_of), i32({0, 0, 0, 0}),
                  i32({9, 1, 14, 5}));
  std::vector<int64_t> length = prompt;
  const int64_t steps = 19;
  for (int64_t step = 0; step <= steps; ++step) {
    if (step > 0) {
      // One decode step: each row still going appends one position; the others idle.
      Tensor nk = Tensor::empty({rows, 1, d.kv_heads, d.hd}), nv = Tensor::empty(nk.shape());
      nk.fill_(kNaN);
      nv.fill_(kNaN);
      std::vector<int32_t> start(rows), count(rows), slots_now(slot_of);
      for (int64_t r = 0; r < rows; ++r) {
        start[r] = static_cast<int32_t>(length[r]);
        count[r] = length[r] < total[r] ? 1 : 0;
        if (count[r]) {
          nk.rows(r, r + 1).view({d.kv_heads, d.hd}).copy_from(
              k[r].rows(length[r], length[r] + 1).view({d.kv_heads, d.hd}));
          nv.rows(r, r + 1).view({d.kv_heads, d.hd}).copy_from(
              v[r].rows(length[r], length[r] + 1).view({d.kv_heads, d.hd}));
        } else {
          slots_now[r] = -1;  // an idle row's slot is not looked at
        }
      }
      kv_cache_append(pool.k, pool.v, nk, nv, i32(slots_now), i32(start), i32(count));
      for (int64_t r = 0; r < rows; ++r) length[r] += count[r];
    }
    // The query of each row's newest position.
    Tensor qn = Tensor::empty({rows, 1, d.heads, d.hd});
    std::vector<int32_t> len32(rows);
    for (int64_t r = 0; r < rows; ++r) {
      qn.rows(r, r + 1).view({d.heads, d.hd}).copy_from(
          q[r].rows(length[r] - 1, length[r]).view({d.heads, d.hd}));
      len32[r] = static_cast<int32_t>(length[r]);
    }
    Tensor out = Tensor::empty(qn.shape());
    decode_attention(out, qn, pool.k, pool.v, i32(slot_of), i32(len32));
    for (int64_t r = 0; r < rows; ++r) {
      const Tensor want = full_attention(q[r], k[r], v[r], length[r], 1);
      const Tensor got = out.rows(r, r + 1).clone();
      ASSERT_TRUE(all_close(got, want, 1e-5, 1e-6)) << "step " << step << " row " << r;
    }
  }
  // Chunks of several queries at the end of each row (draft verification, chunked prefill).
  for (int64_t tq : {2, 5}) {
    Tensor qc = Tensor::empty({rows, tq, d.heads, d.hd});
    std::vector<int32_t> len32(rows);
    for (int64_t r = 0; r < rows; ++r) {
      qc.rows(r, r + 1).view({tq, d.heads, d.hd}).copy_from(q[r].rows(length[r] - tq, length[r]));
      len32[r] = static_cast<int32_t>(length[r]);
    }
    Tensor out = Tensor::empty(qc.shape());
    decode_attention(out, qc, pool.k, pool.v, i32(slot_of), i32(len32));
    for (int64_t r = 0; r < rows; ++r) {
      const Tensor want = full_attention(q[r], k[r], v[r], length[r], tq);
      ASSERT_TRUE(all_close(out.rows(r, r + 1).clone(), want, 1e-5, 1e-6))
          << "Tq " << tq << " row " << r;
    }
  }
}

TEST(KvCache, RaggedSlotsMatchFullAttentionMha) { check_ragged_decode({4, 4, 8}); }
TEST(KvCache, RaggedSlotsMatchFullAttentionGqa) { check_ragged_decode({6, 2, 16}); }
TEST(KvCache, RaggedSlotsMatchFullAttentionOneKvHead) { check_ragged_decode({4, 1, 4}); }

TEST(KvCache, IdleRowsWriteNothingAndReadZeros) {
  auto rng = rng_for_test();
  Pool pool = make_pool(3, 8, 2, 4, rng);
  const Tensor before_k = pool.k.clone(), before_v = pool.v.clone();
  const Tensor k = random_normal({2, 3, 2, 4}, rng), v = random_normal({2, 3, 2, 4}, rng);
  // Row 0 writes 2 of its 3 positions into slot 1 at 5; row 1 is idle.
  kv_cache_append(pool.k, pool.v, k, v, i32({1, 7}), i32({5, 0}), i32({2, 0}));
  const std::vector<float> ck = pool.k.to_f32_vector(), bk = before_k.to_f32_vector();
  const std::vector<float> cv = pool.v.to_f32_vector(), bv = before_v.to_f32_vector();
  const std::vector<float> kk = k.to_f32_vector(), vv = v.to_f32_vector();
  const int64_t width = 2 * 4;
  for (int64_t s = 0; s < 3; ++s)
    for (int64_t p = 0; p < 8; ++p)
      for (int64_t i = 0; i < width; ++i) {
        const int64_t at = (s * 8 + p) * width + i;
        if (s == 1 && (p == 5 || p == 6)) {
          EXPECT_EQ(ck[at], kk[(p - 5) * width + i]);
          EXPECT_EQ(cv[at], vv[(p - 5) * width + i]);
        } else {
          EXPECT_EQ(ck[at], bk[at]) << "slot " << s << " position " << p;
          EXPECT_EQ(cv[at], bv[at]) << "slot " << s << " position " << p;
        }
      }
  const Tensor q = random_normal({2, 1, 4, 4}, rng);
  Tensor out = Tensor::empty(q.shape());
  out.fill_(kNaN);
  decode_attention(out, q, pool.k, pool.v, i32({1, -1}), i32({7, 0}));
  const std::vector<float> o = out.to_f32_vector();
  for (int64_t i = 16; i < 32; ++i) EXPECT_EQ(o[i], 0.0f) << i;
  for (int64_t i = 0; i < 16; ++i) EXPECT_TRUE(std::isfinite(o[i])) << i;
}

TEST(KvCacheDeathTest, RefusesBadArguments) {
  auto rng = rng_for_test();
  Pool pool = make_pool(3, 8, 2, 4, rng);
  const Tensor k = random_normal({2, 3, 2, 4}, rng), v = random_normal({2, 3, 2, 4}, rng);
  const auto append = [&](std::vector<int32_t> slot, std::vector<int32_t> start,
                          std::vector<int32_t> count) {
    kv_cache_append(pool.k, pool.v, k, v, i32(slot), i32(start), i32(count));
  };
  EXPECT_DEATH(append({3, 0}, {0, 0}, {1, 1}), "slot of row 0 is 3; the cache has slots \\[0, 3\\)");
  EXPECT_DEATH(append({0, 1}, {0, 6}, {1, 3}), "row 1 writes positions \\[6, 9\\)");
  EXPECT_DEATH(append({0, 1}, {-1, 0}, {1, 1}), "row 0 writes positions \\[-1, 0\\)");
  EXPECT_DEATH(append({0, 1}, {0, 0}, {4, 1}), "count of row 0 is 4; it must be in \\[0, 3\\]");
  EXPECT_DEATH(kv_cache_append(pool.k, pool.v, random_normal({2, 3, 2, 5}, rng),
                               random_normal({2, 3, 2, 5}, rng), i32({0, 1}), i32({0, 0}),
                               i32({1, 1})),
               "has \\[Hkv, hd\\] = \\[2, 5\\]");
  EXPECT_DEATH(kv_cache_append(pool.k, pool.v, k, v, i32({0, 1, 2}), i32({0, 0}), i32({1, 1})),
               "slot");
  EXPECT_DEATH(kv_cache_append(pool.k.to(DType::kBF16), pool.v.to(DType::kBF16), k, v,
                               i32({0, 1}), i32({0, 0}), i32({1, 1})),
               "kv cache k");
  EXPECT_DEATH(kv_cache_append(pool.k, pool.v.rows(0, 2), k, v, i32({0, 1}), i32({0, 0}),
                               i32({1, 1})),
               "kv cache v");

  const Tensor q = random_normal({2, 2, 4, 4}, rng);
  Tensor out = Tensor::empty(q.shape());
  EXPECT_DEATH(decode_attention(out, q, pool.k, pool.v, i32({0, 1}), i32({9, 2})),
               "length of row 0 is 9; it must be 0 \\(idle\\) or in \\[Tq, L\\] = \\[2, 8\\]");
  EXPECT_DEATH(decode_attention(out, q, pool.k, pool.v, i32({0, 1}), i32({1, 2})),
               "length of row 0 is 1");
  EXPECT_DEATH(decode_attention(out, q, pool.k, pool.v, i32({0, -1}), i32({2, 2})),
               "slot of row 1 is -1");
  EXPECT_DEATH(decode_attention(out, random_normal({2, 2, 3, 4}, rng), pool.k, pool.v,
                                i32({0, 1}), i32({2, 2})),
               "3 query heads are not a multiple of the cache's 2 KV heads");
  EXPECT_DEATH(decode_attention(Tensor::empty({2, 1, 4, 4}), q, pool.k, pool.v, i32({0, 1}),
                                i32({2, 2})),
               "decode_attention out");
  EXPECT_DEATH(decode_attention(out, q, pool.k, pool.v, i32({0, 1}), Tensor::zeros({2})),
               "decode_attention length");
}

}  // namespace
}  // namespace sy
