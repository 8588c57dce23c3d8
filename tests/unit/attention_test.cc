// Causal grouped-query attention: forward against a naive double reference that materialises
// the masked score matrix, decode (Tq < Tk) against the tail of a full pass, and the backward
// against central finite differences for q, k and v.
#include "kernels/attention.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::all_close;
using testing::grad_check;
using testing::random_normal;
using testing::rng_for_test;
using testing::weighted_sum;

struct Dims {
  int64_t batch, tq, tk, heads, kv_heads, hd;
};

struct Reference {
  std::vector<double> out, lse;
};

// Materialises the scaled, causally masked scores of each (batch, head) in double.
Reference reference_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Dims& s) {
  std::vector<float> Q = q.to_f32_vector(), K = k.to_f32_vector(), V = v.to_f32_vector();
  Reference r{std::vector<double>(q.numel()), std::vector<double>(s.batch * s.heads * s.tq)};
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.hd));
  const double neg_inf = -std::numeric_limits<double>::infinity();
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.heads; ++h) {
      const int64_t g = h / (s.heads / s.kv_heads);
      std::vector<double> scores(s.tq * s.tk, neg_inf);
      for (int64_t t = 0; t < s.tq; ++t) {
        for (int64_t j = 0; j <= s.tk - s.tq + t; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < s.hd; ++d) {
            dot += static_cast<double>(Q[((b * s.tq + t) * s.heads + h) * s.hd + d]) *
                   K[((b * s.tk + j) * s.kv_heads + g) * s.hd + d];
          }
          scores[t * s.tk + j] = scale * dot;
        }
      }
      for (int64_t t = 0; t < s.tq; ++t) {
        double m = neg_inf, sum = 0;
        for (int64_t j = 0; j < s.tk; ++j) m = std::max(m, scores[t * s.tk + j]);
        for (int64_t j = 0; j < s.tk; ++j) sum += std::exp(scores[t * s.tk + j] - m);
        r.lse[(b * s.heads + h) * s.tq + t] = m + std::log(sum);
        for (int64_t d = 0; d < s.hd; ++d) {
          double o = 0;
          for (int64_t j = 0; j < s.tk; ++j) {
            o += std::exp(scores[t * s.tk + j] - m) / sum *
                 V[((b * s.tk + j) * s.kv_heads + g) * s.hd + d];
          }
          r.out[((b * s.tq + t) * s.heads + h) * s.hd + d] = o;
        }
      }
    }
  }
  return r;
}

// Rows [begin, begin + count) of dim 1 of a [B, T, H, hd] tensor, as a new tensor.
Tensor slice_time(const Tensor& x, int64_t begin, int64_t count) {
  const int64_t batch = x.dim(0), t = x.dim(1), row = x.dim(2) * x.dim(3);
  std::vector<float> all = x.to_f32_vector(), part;
  for (int64_t b = 0; b < batch; ++b) {
    auto first = all.begin() + (b * t + begin) * row;
    part.insert(part.end(), first, first + count * row);
  }
  return Tensor::from_f32(part, {batch, count, x.dim(2), x.dim(3)});
}

void PrintTo(const Dims& s, std::ostream* os) {
  *os << "B" << s.batch << "_Tq" << s.tq << "_Tk" << s.tk << "_H" << s.heads << "_Hkv" << s.kv_heads
      << "_hd" << s.hd;
}

class AttentionTest : public ::testing::TestWithParam<Dims> {};

TEST_P(AttentionTest, ForwardMatchesNaiveReference) {
  const Dims s = GetParam();
  auto rng = rng_for_test();
  Tensor q = random_normal({s.batch, s.tq, s.heads, s.hd}, rng);
  Tensor k = random_normal({s.batch, s.tk, s.kv_heads, s.hd}, rng);
  Tensor v = random_normal({s.batch, s.tk, s.kv_heads, s.hd}, rng);
  Tensor out = random_normal(q.shape(), rng);  // overwritten
  Tensor lse = random_normal({s.batch, s.heads, s.tq}, rng);
  attention_forward(out, lse, q, k, v);

  Reference r = reference_attention(q, k, v, s);
  EXPECT_TRUE(all_close(out, r.out, 1e-4, 1e-5));
  EXPECT_TRUE(all_close(lse, r.lse, 1e-5, 1e-5));
}

TEST_P(AttentionTest, DecodeEqualsTailOfFullPass) {
  const Dims s = GetParam();
  auto rng = rng_for_test();
  Tensor q_full = random_normal({s.batch, s.tk, s.heads, s.hd}, rng);
  Tensor k = random_normal({s.batch, s.tk, s.kv_heads, s.hd}, rng);
  Tensor v = random_normal({s.batch, s.tk, s.kv_heads, s.hd}, rng);
  Tensor out_full = Tensor::empty(q_full.shape());
  Tensor lse_full = Tensor::empty({s.batch, s.heads, s.tk});
  attention_forward(out_full, lse_full, q_full, k, v);

  Tensor q = slice_time(q_full, s.tk - s.tq, s.tq);
  Tensor out = Tensor::empty(q.shape());
  Tensor lse = Tensor::empty({s.batch, s.heads, s.tq});
  attention_forward(out, lse, q, k, v);

  // The same arithmetic in the same order: bit-identical.
  EXPECT_TRUE(all_close(out, slice_time(out_full, s.tk - s.tq, s.tq), 0, 0));
  std::vector<float> full = lse_full.to_f32_vector();
  std::vector<double> tail;
  for (int64_t bh = 0; bh < s.batch * s.heads; ++bh) {
    for (int64_t t = s.tk - s.tq; t < s.tk; ++t) tail.push_back(full[bh * s.tk + t]);
  }
  EXPECT_TRUE(all_close(lse, tail, 0, 0));
}

TEST_P(AttentionTest, BackwardMatchesFiniteDifferences) {
  const Dims s = GetParam();
  auto rng = rng_for_test();
  Tensor q = random_normal({s.batch, s.tq, s.heads, s.hd}, rng);
  Tensor k = random_normal({s.batch, s.tk, s.kv_heads, s.hd}, rng);
  Tensor v = random_normal({s.batch, s.tk, s.kv_heads, s.hd}, rng);
  Tensor out = Tensor::empty(q.shape());
  Tensor lse = Tensor::empty({s.batch, s.heads, s.tq});
  attention_forward(out, lse, q, k, v);

  // Gradients are written: start from garbage to prove nothing is accumulated into it.
  Tensor dout = random_normal(q.shape(), rng);
  Tensor dq = random_normal(q.shape(), rng);
  Tensor dk = random_normal(k.shape(), rng);
  Tensor dv = random_normal(v.shape(), rng);
  attention_backward(dq, dk, dv, dout, q, k, v, out, lse);

  Tensor scratch_out = Tensor::empty(q.shape());
  Tensor scratch_lse = Tensor::empty(lse.shape());
  auto loss = [&] {
    attention_forward(scratch_out, scratch_lse, q, k, v);
    return weighted_sum(scratch_out, dout);
  };
  EXPECT_TRUE(grad_check(loss, q, dq, rng)) << "dq";
  EXPECT_TRUE(grad_check(loss, k, dk, rng)) << "dk";
  EXPECT_TRUE(grad_check(loss, v, dv, rng)) << "dv";
}

// {batch, Tq, Tk, H, Hkv, hd}
INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(Dims{2, 5, 5, 4, 4, 8},      // MHA
                                           Dims{2, 7, 7, 4, 2, 5},      // GQA, odd head dim
                                           Dims{1, 6, 6, 4, 1, 3},      // one KV head (MQA)
                                           Dims{1, 1, 1, 2, 1, 4},      // a single token
                                           Dims{2, 3, 9, 4, 2, 5},      // decode, longer cache
                                           Dims{1, 1, 6, 3, 3, 7},      // decode one query
                                           Dims{3, 13, 13, 6, 3, 4},    // more tasks than threads
                                           Dims{2, 48, 64, 4, 2, 16}),  // big enough for threads
                         [](const ::testing::TestParamInfo<Dims>& info) {
                           return ::testing::PrintToString(info.param);
                         });

}  // namespace
}  // namespace sy
