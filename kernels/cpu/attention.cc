// CPU reference for causal grouped-query attention, fp32.
// Forward: per query row, scores s_j = scale * q . k_j over the visible keys, a stable
// softmax p_j = exp(s_j - lse), out = sum_j p_j v_j; lse is saved.
// Backward recomputes p_j from lse, one key at a time (no T x T matrix):
//   dP_j = dO . v_j, D = dO . O, dS_j = p_j (dP_j - D),
//   dq = scale sum_j dS_j k_j, dk_j += scale dS_j q, dv_j += p_j dO,
// with dk/dv of a KV head summed over the query heads that read it. Work is split over
// (batch, head) for the forward and (batch, KV head) for the backward, so no two threads
// write the same row.
#include "kernels/attention.h"
#include "kernels/cpu/threads.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

namespace sy::cpu {
namespace {

// Below this many multiply-adds, starting threads costs more than it saves (decode steps).
constexpr int64_t kParallelWork = 1 << 16;

float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Sizes and row addressing for q/out [B, Tq, H, hd] and k/v [B, Tk, Hkv, hd].
struct Layout {
  int64_t batch, tq, tk, heads, kv_heads, hd;
  int64_t group() const { return heads / kv_heads; }
  int64_t q_row(int64_t b, int64_t t, int64_t h) const { return ((b * tq + t) * heads + h) * hd; }
  int64_t kv_row(int64_t b, int64_t j, int64_t g) const {
    return ((b * tk + j) * kv_heads + g) * hd;
  }
  int64_t lse_index(int64_t b, int64_t h, int64_t t) const { return (b * heads + h) * tq + t; }
  // The last key query t may see (causal, with the queries at the end of the sequence).
  int64_t last_key(int64_t t) const { return tk - tq + t; }
  // Multiply-adds of one pass over every (query, visible key) pair, roughly.
  int64_t work() const { return batch * heads * tq * tk * hd; }
};

Layout layout_of(const Tensor& q, const Tensor& k) {
  return {q.dim(0), q.dim(1), k.dim(1), q.dim(2), k.dim(2), q.dim(3)};
}

}  // namespace

void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                       const Tensor& v) {
  const Layout l = layout_of(q, k);
  const float scale = 1.0f / std::sqrt(static_cast<float>(l.hd));
  const float *Q = q.data<float>(), *K = k.data<float>(), *V = v.data<float>();
  float *O = out.data<float>(), *L = lse.data<float>();
  parallel_for(l.batch * l.heads, l.work(), kParallelWork, [&](int64_t bh) {
    const int64_t b = bh / l.heads, h = bh % l.heads, g = h / l.group();
    std::vector<float> p(l.tk);
    for (int64_t t = 0; t < l.tq; ++t) {
      const float* qi = Q + l.q_row(b, t, h);
      const int64_t last = l.last_key(t);
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j <= last; ++j) {
        p[j] = scale * dot(qi, K + l.kv_row(b, j, g), l.hd);
        m = std::max(m, p[j]);
      }
      float sum = 0;
      for (int64_t j = 0; j <= last; ++j) {
        p[j] = std::exp(p[j] - m);
        sum += p[j];
      }
      float* oi = O + l.q_row(b, t, h);
      std::fill(oi, oi + l.hd, 0.0f);
      for (int64_t j = 0; j <= last; ++j) {
        const float w = p[j] / sum;
        const float* vj = V + l.kv_row(b, j, g);
        for (int64_t d = 0; d < l.hd; ++d) oi[d] += w * vj[d];
      }
      L[l.lse_index(b, h, t)] = m + std::log(sum);
    }
  });
}

void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse) {
  const Layout l = layout_of(q, k);
  const float scale = 1.0f / std::sqrt(static_cast<float>(l.hd));
  const float *Q = q.data<float>(), *K = k.data<float>(), *V = v.data<float>();
  const float *O = out.data<float>(), *dO = dout.data<float>(), *L = lse.data<float>();
  float *dQ = dq.data<float>(), *dK = dk.data<float>(), *dV = dv.data<float>();
  parallel_for(l.batch * l.kv_heads, l.work(), kParallelWork, [&](int64_t bg) {
    const int64_t b = bg / l.kv_heads, g = bg % l.kv_heads;
    for (int64_t j = 0; j < l.tk; ++j) {
      std::fill_n(dK + l.kv_row(b, j, g), l.hd, 0.0f);
      std::fill_n(dV + l.kv_row(b, j, g), l.hd, 0.0f);
    }
    for (int64_t h = g * l.group(); h < (g + 1) * l.group(); ++h) {
      for (int64_t t = 0; t < l.tq; ++t) {
        const float* qi = Q + l.q_row(b, t, h);
        const float* doi = dO + l.q_row(b, t, h);
        float* dqi = dQ + l.q_row(b, t, h);
        const float lse_i = L[l.lse_index(b, h, t)];
        const float d_i = dot(doi, O + l.q_row(b, t, h), l.hd);
        std::fill_n(dqi, l.hd, 0.0f);
        for (int64_t j = 0; j <= l.last_key(t); ++j) {
          const float* kj = K + l.kv_row(b, j, g);
          const float* vj = V + l.kv_row(b, j, g);
          float* dkj = dK + l.kv_row(b, j, g);
          float* dvj = dV + l.kv_row(b, j, g);
          const float p = std::exp(scale * dot(qi, kj, l.hd) - lse_i);
          const float ds = p * (dot(doi, vj, l.hd) - d_i);
          for (int64_t d = 0; d < l.hd; ++d) {
            dqi[d] += scale * ds * kj[d];
            dkj[d] += scale * ds * qi[d];
            dvj[d] += p * doi[d];
          }
        }
      }
    }
  });
}

}  // namespace sy::cpu
