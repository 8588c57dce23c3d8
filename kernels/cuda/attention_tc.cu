// Causal grouped-query attention on tensor cores: bf16 q, k, v, out and gradients with head dim
// 64 or 128, fp32 accumulation, lse f32 (natural log). Same contract and same FlashAttention-2
// scheme as the CUDA-core kernels in kernels/cuda/attention.cu, which take every other case.
//
// Setting SWITCHYARD_ATTENTION=simt in the environment (read once, at the first attention
// call) sends these cases to the CUDA-core kernels too; SWITCHYARD_ATTENTION=tc, or unset, is
// the default. set_attention_kernels (attention_tc.h) switches at run time.
//
// Every product is mma.sync m16n8k16 (bf16 in, fp32 accumulate); operands come from shared
// memory through ldmatrix. A warp owns 16 rows of each product's left operand, so a row's
// softmax statistics live in the 4 lanes of a quad and reduce with two shuffles:
//   forward, grid (query tiles, H, B): a block of W warps owns 16 W queries, keeps its Q
//     fragments in registers, streams K and V tiles (double-buffered cp.async) and runs the
//     online softmax in base 2; S never leaves registers (its accumulator fragment is the A
//     fragment of P V, rounded to bf16).
//   backward, dQ first, grid (query tiles, H, B): also writes delta = rowsum(dO * O) for the
//     dK/dV pass; per key tile S = Q K^T, dP = dO V^T, dS = P (dP - delta), dQ += dS K.
//   backward, dK and dV, grid (key tiles, Hkv, B): a block of W warps owns 16 W keys of one KV
//     head and walks every query tile of every query head of its group that sees them:
//     S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q. GQA needs no cross-block sum.
// No atomics anywhere, so every output is bit-identical run to run. Causal tiles are skipped
// per warp (a warp whose 16 rows see none of a tile only helps load it); the mask is applied
// only on tiles that straddle the diagonal or the sequence end, whose rows are zero-filled.
//
// Shared-memory rows are HD + 8 bf16 (HD * 2 + 16 bytes): the 8 rows an ldmatrix phase reads
// then start 16 bytes apart modulo 128, so neither ldmatrix nor the 16-byte cp.async stores
// conflict on banks.
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/attention_tc.h"
#include "kernels/cuda/common.cuh"

namespace sy::cuda {
namespace {

using nv_bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// q/out [B, Tq, H, HD], k/v [B, Tk, Hkv, HD]; query t sits at absolute position Tk - Tq + t.
struct Dims {
  int batch, tq, tk, heads, kv_heads;
};

__device__ __forceinline__ int64_t q_row(const Dims& d, int b, int t, int h) {
  return (static_cast<int64_t>(b) * d.tq + t) * d.heads + h;
}
__device__ __forceinline__ int64_t kv_row(const Dims& d, int b, int j, int g) {
  return (static_cast<int64_t>(b) * d.tk + j) * d.kv_heads + g;
}
__device__ __forceinline__ int64_t lse_index(const Dims& d, int b, int h, int t) {
  return (static_cast<int64_t>(b) * d.heads + h) * d.tq + t;
}

// --- PTX wrappers -------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; zero-filled when !valid (src is then not read).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 4 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 bf16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, and register i
// gets, in lane l, row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 of matrix i (the transpose
// of matrix i with .trans). Volatile with a memory clobber: they must not move across the
// barriers that publish the shared memory they read.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// c += a b for a 16x16 A (row-major fragment a), a 16x8 B (fragment b0, b1), fp32 c.
// With g = lane / 4 and q = lane % 4: a[0] holds A[g][2q..2q+1], a[1] A[g+8][2q..], a[2]
// A[g][2q+8..], a[3] A[g+8][2q+8..]; b0 holds B[2q..2q+1][g], b1 B[2q+8..2q+9][g]; c[0..1]
// hold C[g][2q..2q+1] and c[2..3] C[g+8][2q..2q+1].
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x on the special-function unit; results below 2^-126 flush to zero (they are
// probabilities far below anything bf16 can add to a sum of order 1).
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats as bf16x2, the first in the low half (the lower column of a fragment).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t r;
  memcpy(&r, &v, sizeof(r));
  return r;
}

// The A fragment of columns 16 kk .. 16 kk + 15 of a 16-row accumulator held as n-tiles of 8
// columns: the C layout of n-tiles 2 kk and 2 kk + 1 is the A layout of their 16 columns.
template <int N>
__device__ __forceinline__ void a_fragment(uint32_t (&a)[4], const float (&c)[N][4], int kk) {
  a[0] = pack_bf16(c[2 * kk][0], c[2 * kk][1]);
  a[1] = pack_bf16(c[2 * kk][2], c[2 * kk][3]);
  a[2] = pack_bf16(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = pack_bf16(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// Byte offsets, within a [rows][LD] bf16 tile, of the row this lane addresses for ldmatrix_x4:
//  - lane_a: the A fragment of a 16x16 block (matrices: rows 0-7 / 8-15 x columns 0-7 / 8-15,
//    in register order); with .trans, the B fragments of two n-tiles of a [k][n] tile.
//  - lane_b: the B fragments of two 8-row n-tiles of an [n][k] tile: registers 0, 1 are
//    rows 0-7 at k 0-7 and 8-15, registers 2, 3 the same for rows 8-15.
template <int LD>
__device__ __forceinline__ uint32_t lane_a(int lane) {
  return ((lane & 15) * LD + (lane >> 4) * 8) * 2;
}
template <int LD>
__device__ __forceinline__ uint32_t lane_b(int lane) {
  return ((lane & 7) + ((lane >> 4) << 3)) * LD * 2 + ((lane >> 3) & 1) * 16;
}
// Byte offset of element (row, col) of a [rows][LD] bf16 tile.
template <int LD>
__device__ __forceinline__ uint32_t at(int row, int col) {
  return (row * LD + col) * 2;
}

// --- tile movement ------------------------------------------------------------------------

// Starts copying ROWS rows of HD bf16 (consecutive rows `stride` elements apart in global
// memory) into a [ROWS][HD + 8] tile; rows at or past `valid` are zero-filled. Row 0 is valid.
template <int ROWS, int HD, int kThreads>
__device__ __forceinline__ void load_rows(uint32_t dst, const nv_bf16* src, int64_t stride,
                                          int valid) {
  constexpr int kChunks = HD / 8;  // 16-byte pieces per row
  static_assert(ROWS * kChunks % kThreads == 0, "tile copy must split evenly over threads");
#pragma unroll
  for (int i = 0; i < ROWS * kChunks / kThreads; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kThreads;
    const int r = c / kChunks, col = c % kChunks * 8;
    const bool ok = r < valid;
    cp_async_16(dst + at<HD + 8>(r, col), ok ? src + r * stride + col : src, ok);
  }
}

// Starts copying N floats into shared memory; those at or past `valid` are zero. src[0] is
// valid.
template <int N, int kThreads>
__device__ __forceinline__ void load_floats(uint32_t dst, const float* src, int valid) {
  for (int i = threadIdx.x; i < N; i += kThreads) {
    const bool ok = i < valid;
    cp_async_4(dst + 4 * i, ok ? src + i : src, ok);
  }
}

// Writes a warp's 16 x HD fp32 accumulator (n-tiles of 8 columns), times `scale`, as bf16 to
// rows `row0`.. of global memory (consecutive rows `stride` apart; rows at or past `valid`
// are skipped), staged through the warp's own 16 rows of a [rows][HD + 8] tile `stage` so
// that every global store is 16 contiguous bytes.
template <int HD>
__device__ __forceinline__ void store_rows(nv_bf16* dst, int64_t stride, int valid,
                                           const float (&acc)[HD / 8][4], float scale,
                                           nv_bf16* stage, int lane) {
  constexpr int LD = HD + 8, kChunks = HD / 8;
  const int g = lane >> 2, qd = lane & 3;
#pragma unroll
  for (int j = 0; j < HD / 8; ++j) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const uint32_t v = pack_bf16(acc[j][2 * half] * scale, acc[j][2 * half + 1] * scale);
      memcpy(stage + (g + 8 * half) * LD + j * 8 + 2 * qd, &v, sizeof(v));
    }
  }
  __syncwarp();
#pragma unroll
  for (int i = 0; i < 16 * kChunks / 32; ++i) {
    const int c = lane + 32 * i;
    const int r = c / kChunks, col = c % kChunks * 8;
    if (r < valid) {
      *reinterpret_cast<uint4*>(dst + r * stride + col) =
          *reinterpret_cast<const uint4*>(stage + r * LD + col);
    }
  }
}

// --- forward ------------------------------------------------------------------------------

// Grid (query tiles, H, B), 32 W threads; BR = 16 W queries per block, BC keys per tile.
// Shared: Q [BR][LD], then two stages of K [BC][LD] and V [BC][LD].
template <int HD, int W, int BC, int kMinBlocks>
__global__ void __launch_bounds__(32 * W, kMinBlocks)
    forward_kernel(nv_bf16* out, float* lse, const nv_bf16* q, const nv_bf16* k, const nv_bf16* v,
                   Dims dm, float scale_log2) {
  constexpr int kThreads = 32 * W, BR = 16 * W, LD = HD + 8;
  constexpr uint32_t kStage = 2 * BC * LD * 2;  // bytes of one K + V stage
  extern __shared__ __align__(16) unsigned char smem[];
  nv_bf16* sq = reinterpret_cast<nv_bf16*>(smem);
  const uint32_t sq_u = smem_u32(smem), skv_u = sq_u + BR * LD * 2;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, qd = lane & 3;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BR;  // the longest query tiles start first
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / (dm.heads / dm.kv_heads);
  const int offset = dm.tk - dm.tq;
  const int64_t q_stride = static_cast<int64_t>(dm.heads) * HD;
  const int64_t kv_stride = static_cast<int64_t>(dm.kv_heads) * HD;
  const nv_bf16* kb = k + kv_row(dm, b, 0, kvh) * HD;
  const nv_bf16* vb = v + kv_row(dm, b, 0, kvh) * HD;
  auto load_kv = [&](int tile) {
    const int k0 = tile * BC;
    const uint32_t stage = skv_u + (tile & 1) * kStage;
    load_rows<BC, HD, kThreads>(stage, kb + k0 * kv_stride, kv_stride, dm.tk - k0);
    load_rows<BC, HD, kThreads>(stage + BC * LD * 2, vb + k0 * kv_stride, kv_stride, dm.tk - k0);
  };
  load_rows<BR, HD, kThreads>(sq_u, q + q_row(dm, b, q0, h) * HD, q_stride, dm.tq - q0);
  load_kv(0);
  cp_async_commit();

  const int row_w = q0 + 16 * warp;  // the warp's first query
  const bool warp_live = row_w < dm.tq;
  const int n_tiles = min(dm.tk - 1, offset + q0 + BR - 1) / BC + 1;
  uint32_t qf[HD / 16][4];
  float o[HD / 8][4];
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // rows g and g + 8, base 2
#pragma unroll
  for (int j = 0; j < HD / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;

  for (int tile = 0; tile < n_tiles; ++tile) {
    if (tile + 1 < n_tiles) {
      load_kv(tile + 1);  // into the stage that tile - 1 used; the last barrier freed it
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (tile == 0) {
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
        ldmatrix_x4(qf[kk], sq_u + at<LD>(16 * warp, 16 * kk) + lane_a<LD>(lane));
      }
    }
    const int k0 = tile * BC;
    // Key 0 is in tile 0 and visible to every row, so every row's max is finite after it.
    if (warp_live && k0 <= offset + row_w + 15) {
      const uint32_t sk_u = skv_u + (tile & 1) * kStage, sv_u = sk_u + BC * LD * 2;
      float s[BC / 8][4];
#pragma unroll
      for (int j = 0; j < BC / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
        for (int np = 0; np < BC / 16; ++np) {
          uint32_t kf[4];
          ldmatrix_x4(kf, sk_u + at<LD>(16 * np, 16 * kk) + lane_b<LD>(lane));
          mma_bf16(s[2 * np], qf[kk], kf[0], kf[1]);
          mma_bf16(s[2 * np + 1], qf[kk], kf[2], kf[3]);
        }
      }
      // A warp-uniform branch: tiles inside the causal triangle skip the per-element tests.
      if (k0 + BC - 1 > offset + row_w || k0 + BC > dm.tk) {
#pragma unroll
        for (int j = 0; j < BC / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = k0 + 8 * j + 2 * qd + (e & 1);
            const int t = row_w + g + 8 * (e >> 1);
            if (key > offset + t || key >= dm.tk) s[j][e] = -INFINITY;
          }
        }
      }
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < BC / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
      }
      float alpha[2], m_use[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float m_new = fmaxf(m[r], mx[r] * scale_log2);  // scale_log2 > 0 keeps the max
        m_use[r] = m_new == -INFINITY ? 0.0f : m_new;         // a row with nothing visible yet
        alpha[r] = exp2_approx(m[r] - m_use[r]);
        m[r] = m_new;
        l[r] *= alpha[r];  // this lane's share of the row sum; the quad adds up at the end
      }
#pragma unroll
      for (int j = 0; j < BC / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[j][e] = exp2_approx(fmaf(s[j][e], scale_log2, -m_use[e >> 1]));
          l[e >> 1] += s[j][e];
        }
      }
#pragma unroll
      for (int j = 0; j < HD / 8; ++j) {
        o[j][0] *= alpha[0];
        o[j][1] *= alpha[0];
        o[j][2] *= alpha[1];
        o[j][3] *= alpha[1];
      }
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        uint32_t pf[4];
        a_fragment(pf, s, kk);
#pragma unroll
        for (int dp = 0; dp < HD / 16; ++dp) {
          uint32_t vf[4];
          ldmatrix_x4_trans(vf, sv_u + at<LD>(16 * kk, 16 * dp) + lane_a<LD>(lane));
          mma_bf16(o[2 * dp], pf, vf[0], vf[1]);
          mma_bf16(o[2 * dp + 1], pf, vf[2], vf[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before the next load refills it
  }
  if (!warp_live) return;  // no barrier below: the rest is the warp's own rows

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv[r] = 1.0f / l[r];
  }
#pragma unroll
  for (int j = 0; j < HD / 8; ++j) {
    o[j][0] *= inv[0];
    o[j][1] *= inv[0];
    o[j][2] *= inv[1];
    o[j][3] *= inv[1];
  }
  store_rows<HD>(out + q_row(dm, b, row_w, h) * HD, q_stride, dm.tq - row_w, o, 1.0f,
                 sq + 16 * warp * LD, lane);
  if (qd == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int t = row_w + g + 8 * r;
      if (t < dm.tq) lse[lse_index(dm, b, h, t)] = m[r] * kLn2 + logf(l[r]);
    }
  }
}

// --- backward -----------------------------------------------------------------------------

// Grid (query tiles, H, B), 32 W threads; BR = 16 W queries per block, BC keys per tile.
// Shared: Q [BR][LD], dO [BR][LD], then two stages of K [BC][LD] and V [BC][LD]. Writes dq
// and delta[b, h, t] = dO . O for its rows (read by the dK/dV kernel, launched after it).
template <int HD, int W, int BC>
__global__ void __launch_bounds__(32 * W)
    backward_q_kernel(nv_bf16* dq, float* delta, const nv_bf16* q, const nv_bf16* k,
                      const nv_bf16* v, const nv_bf16* out, const nv_bf16* dout, const float* lse,
                      Dims dm, float scale, float scale_log2) {
  constexpr int kThreads = 32 * W, BR = 16 * W, LD = HD + 8;
  constexpr uint32_t kStage = 2 * BC * LD * 2;
  extern __shared__ __align__(16) unsigned char smem[];
  nv_bf16* sq = reinterpret_cast<nv_bf16*>(smem);
  const uint32_t sq_u = smem_u32(smem), sdo_u = sq_u + BR * LD * 2, skv_u = sdo_u + BR * LD * 2;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, qd = lane & 3;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BR;
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / (dm.heads / dm.kv_heads);
  const int offset = dm.tk - dm.tq;
  const int64_t q_stride = static_cast<int64_t>(dm.heads) * HD;
  const int64_t kv_stride = static_cast<int64_t>(dm.kv_heads) * HD;
  const nv_bf16* kb = k + kv_row(dm, b, 0, kvh) * HD;
  const nv_bf16* vb = v + kv_row(dm, b, 0, kvh) * HD;
  auto load_kv = [&](int tile) {
    const int k0 = tile * BC;
    const uint32_t stage = skv_u + (tile & 1) * kStage;
    load_rows<BC, HD, kThreads>(stage, kb + k0 * kv_stride, kv_stride, dm.tk - k0);
    load_rows<BC, HD, kThreads>(stage + BC * LD * 2, vb + k0 * kv_stride, kv_stride, dm.tk - k0);
  };
  load_rows<BR, HD, kThreads>(sq_u, q + q_row(dm, b, q0, h) * HD, q_stride, dm.tq - q0);
  load_rows<BR, HD, kThreads>(sdo_u, dout + q_row(dm, b, q0, h) * HD, q_stride, dm.tq - q0);
  load_kv(0);
  cp_async_commit();

  const int row_w = q0 + 16 * warp;
  const bool warp_live = row_w < dm.tq;
  // delta of the warp's 16 rows while the copies fly: lanes 2r and 2r + 1 take halves of
  // row r. Rows past Tq get 0 (their dO is zero-filled, so dS is 0 there anyway).
  float row_delta[2], row_lse[2];
  {
    const int r = lane >> 1, t = row_w + r;
    float sum = 0.0f;
    if (t < dm.tq) {
      const int64_t base = q_row(dm, b, t, h) * HD + (lane & 1) * (HD / 2);
#pragma unroll
      for (int c = 0; c < HD / 2; c += 8) {
        const uint4 ov = *reinterpret_cast<const uint4*>(out + base + c);
        const uint4 gv = *reinterpret_cast<const uint4*>(dout + base + c);
        const __nv_bfloat162* o2 = reinterpret_cast<const __nv_bfloat162*>(&ov);
        const __nv_bfloat162* g2 = reinterpret_cast<const __nv_bfloat162*>(&gv);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 of = __bfloat1622float2(o2[i]), gf = __bfloat1622float2(g2[i]);
          sum = fmaf(gf.x, of.x, sum);
          sum = fmaf(gf.y, of.y, sum);
        }
      }
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    if ((lane & 1) == 0 && t < dm.tq) delta[lse_index(dm, b, h, t)] = sum;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      row_delta[i] = __shfl_sync(0xffffffffu, sum, 2 * (g + 8 * i));
      const int ti = row_w + g + 8 * i;
      row_lse[i] = ti < dm.tq ? lse[lse_index(dm, b, h, ti)] * kLog2e : 0.0f;
    }
  }

  const int n_tiles = min(dm.tk - 1, offset + q0 + BR - 1) / BC + 1;
  float acc[HD / 8][4];
#pragma unroll
  for (int j = 0; j < HD / 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;

  for (int tile = 0; tile < n_tiles; ++tile) {
    if (tile + 1 < n_tiles) {
      load_kv(tile + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int k0 = tile * BC;
    if (warp_live && k0 <= offset + row_w + 15) {
      const uint32_t sk_u = skv_u + (tile & 1) * kStage, sv_u = sk_u + BC * LD * 2;
      float s[BC / 8][4], dp[BC / 8][4];
#pragma unroll
      for (int j = 0; j < BC / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.0f;
      }
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
        uint32_t qf[4], of[4];
        ldmatrix_x4(qf, sq_u + at<LD>(16 * warp, 16 * kk) + lane_a<LD>(lane));
        ldmatrix_x4(of, sdo_u + at<LD>(16 * warp, 16 * kk) + lane_a<LD>(lane));
#pragma unroll
        for (int np = 0; np < BC / 16; ++np) {
          uint32_t kf[4], vf[4];
          ldmatrix_x4(kf, sk_u + at<LD>(16 * np, 16 * kk) + lane_b<LD>(lane));
          ldmatrix_x4(vf, sv_u + at<LD>(16 * np, 16 * kk) + lane_b<LD>(lane));
          mma_bf16(s[2 * np], qf, kf[0], kf[1]);
          mma_bf16(s[2 * np + 1], qf, kf[2], kf[3]);
          mma_bf16(dp[2 * np], of, vf[0], vf[1]);
          mma_bf16(dp[2 * np + 1], of, vf[2], vf[3]);
        }
      }
#pragma unroll
      for (int j = 0; j < BC / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[j][e] = exp2_approx(fmaf(s[j][e], scale_log2, -row_lse[e >> 1]));  // P
        }
      }
      if (k0 + BC - 1 > offset + row_w || k0 + BC > dm.tk) {  // warp-uniform, as in the forward
#pragma unroll
        for (int j = 0; j < BC / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = k0 + 8 * j + 2 * qd + (e & 1);
            const int t = row_w + g + 8 * (e >> 1);
            if (key > offset + t || key >= dm.tk) s[j][e] = 0.0f;  // replaces any inf
          }
        }
      }
#pragma unroll
      for (int j = 0; j < BC / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) dp[j][e] = s[j][e] * (dp[j][e] - row_delta[e >> 1]);  // dS
      }
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        uint32_t df[4];
        a_fragment(df, dp, kk);
#pragma unroll
        for (int dpi = 0; dpi < HD / 16; ++dpi) {
          uint32_t kf[4];
          ldmatrix_x4_trans(kf, sk_u + at<LD>(16 * kk, 16 * dpi) + lane_a<LD>(lane));
          mma_bf16(acc[2 * dpi], df, kf[0], kf[1]);
          mma_bf16(acc[2 * dpi + 1], df, kf[2], kf[3]);
        }
      }
    }
    __syncthreads();
  }
  if (!warp_live) return;
  // The warp's Q rows in shared memory are its own and no longer read: stage dq there.
  store_rows<HD>(dq + q_row(dm, b, row_w, h) * HD, q_stride, dm.tq - row_w, acc, scale,
                 sq + 16 * warp * LD, lane);
}

// Grid (key tiles, Hkv, B), 32 W threads; BC = 16 W keys per block, BR queries per step.
// Shared: K [BC][LD], V [BC][LD], then two stages of Q [BR][LD], dO [BR][LD], lse [BR] and
// delta [BR] (f32).
template <int HD, int W, int BR>
__global__ void __launch_bounds__(32 * W)
    backward_kv_kernel(nv_bf16* dk, nv_bf16* dv, const nv_bf16* q, const nv_bf16* k,
                       const nv_bf16* v, const nv_bf16* dout, const float* lse, const float* delta,
                       Dims dm, float scale, float scale_log2) {
  constexpr int kThreads = 32 * W, BC = 16 * W, LD = HD + 8;
  constexpr uint32_t kTile = BR * LD * 2, kStage = 2 * kTile + 2 * BR * 4;
  extern __shared__ __align__(16) unsigned char smem[];
  nv_bf16* sk = reinterpret_cast<nv_bf16*>(smem);
  nv_bf16* sv = sk + BC * LD;
  const uint32_t sk_u = smem_u32(smem), sv_u = sk_u + BC * LD * 2, sst_u = sv_u + BC * LD * 2;
  const unsigned char* sst = smem + 2 * BC * LD * 2;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, qd = lane & 3;
  const int k0 = blockIdx.x * BC, kvh = blockIdx.y, b = blockIdx.z;
  const int group = dm.heads / dm.kv_heads, offset = dm.tk - dm.tq;
  const int64_t q_stride = static_cast<int64_t>(dm.heads) * HD;
  const int64_t kv_stride = static_cast<int64_t>(dm.kv_heads) * HD;
  // Query t sees key k0 once offset + t >= k0: earlier query tiles see none of this block.
  const int first_q = max(0, k0 - offset) / BR * BR;
  const int per_head = dm.tq > first_q ? (dm.tq - first_q + BR - 1) / BR : 0;
  const int n_steps = group * per_head;  // (query head, query tile) pairs, head-major
  auto load_step = [&](int step) {
    const int h = kvh * group + step / per_head, q0 = first_q + step % per_head * BR;
    const uint32_t stage = sst_u + (step & 1) * kStage;
    const int64_t row = q_row(dm, b, q0, h) * HD;
    load_rows<BR, HD, kThreads>(stage, q + row, q_stride, dm.tq - q0);
    load_rows<BR, HD, kThreads>(stage + kTile, dout + row, q_stride, dm.tq - q0);
    load_floats<BR, kThreads>(stage + 2 * kTile, lse + lse_index(dm, b, h, q0), dm.tq - q0);
    load_floats<BR, kThreads>(stage + 2 * kTile + BR * 4, delta + lse_index(dm, b, h, q0),
                              dm.tq - q0);
  };
  load_rows<BC, HD, kThreads>(sk_u, k + kv_row(dm, b, k0, kvh) * HD, kv_stride, dm.tk - k0);
  load_rows<BC, HD, kThreads>(sv_u, v + kv_row(dm, b, k0, kvh) * HD, kv_stride, dm.tk - k0);
  if (n_steps > 0) load_step(0);
  cp_async_commit();

  const int key_w = k0 + 16 * warp;  // the warp's first key
  float dk_acc[HD / 8][4], dv_acc[HD / 8][4];
#pragma unroll
  for (int j = 0; j < HD / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[j][e] = dv_acc[j][e] = 0.0f;
  }

  for (int step = 0; step < n_steps; ++step) {
    if (step + 1 < n_steps) {
      load_step(step + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int q0 = first_q + step % per_head * BR;
    if (key_w < dm.tk && key_w <= offset + q0 + BR - 1) {
      const uint32_t sq_u = sst_u + (step & 1) * kStage, sdo_u = sq_u + kTile;
      const float* slse = reinterpret_cast<const float*>(sst + (step & 1) * kStage + 2 * kTile);
      const float* sdelta = slse + BR;
      // Transposed products: rows are the warp's keys, columns the step's queries.
      float s[BR / 8][4], dp[BR / 8][4];
#pragma unroll
      for (int j = 0; j < BR / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.0f;
      }
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
        uint32_t kf[4], vf[4];
        ldmatrix_x4(kf, sk_u + at<LD>(16 * warp, 16 * kk) + lane_a<LD>(lane));
        ldmatrix_x4(vf, sv_u + at<LD>(16 * warp, 16 * kk) + lane_a<LD>(lane));
#pragma unroll
        for (int np = 0; np < BR / 16; ++np) {
          uint32_t qf[4], of[4];
          ldmatrix_x4(qf, sq_u + at<LD>(16 * np, 16 * kk) + lane_b<LD>(lane));
          ldmatrix_x4(of, sdo_u + at<LD>(16 * np, 16 * kk) + lane_b<LD>(lane));
          mma_bf16(s[2 * np], kf, qf[0], qf[1]);
          mma_bf16(s[2 * np + 1], kf, qf[2], qf[3]);
          mma_bf16(dp[2 * np], vf, of[0], of[1]);
          mma_bf16(dp[2 * np + 1], vf, of[2], of[3]);
        }
      }
#pragma unroll
      for (int j = 0; j < BR / 8; ++j) {
        const float2 lse2 = *reinterpret_cast<const float2*>(slse + 8 * j + 2 * qd);
        const float lse_log2[2] = {lse2.x * kLog2e, lse2.y * kLog2e};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[j][e] = exp2_approx(fmaf(s[j][e], scale_log2, -lse_log2[e & 1]));  // P^T
        }
      }
      // Warp-uniform, as in the forward; also clears the columns of queries past Tq.
      if (key_w + 15 > offset + q0 || q0 + BR > dm.tq || key_w + 16 > dm.tk) {
#pragma unroll
        for (int j = 0; j < BR / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = key_w + g + 8 * (e >> 1);
            const int t = q0 + 8 * j + 2 * qd + (e & 1);
            if (t >= dm.tq || key >= dm.tk || key > offset + t) s[j][e] = 0.0f;
          }
        }
      }
#pragma unroll
      for (int j = 0; j < BR / 8; ++j) {
        const float2 delta2 = *reinterpret_cast<const float2*>(sdelta + 8 * j + 2 * qd);
        const float row_delta[2] = {delta2.x, delta2.y};
#pragma unroll
        for (int e = 0; e < 4; ++e) dp[j][e] = s[j][e] * (dp[j][e] - row_delta[e & 1]);  // dS^T
      }
#pragma unroll
      for (int kk = 0; kk < BR / 16; ++kk) {
        uint32_t pf[4], df[4];
        a_fragment(pf, s, kk);
        a_fragment(df, dp, kk);
#pragma unroll
        for (int dpi = 0; dpi < HD / 16; ++dpi) {
          uint32_t of[4], qf[4];
          ldmatrix_x4_trans(of, sdo_u + at<LD>(16 * kk, 16 * dpi) + lane_a<LD>(lane));
          ldmatrix_x4_trans(qf, sq_u + at<LD>(16 * kk, 16 * dpi) + lane_a<LD>(lane));
          mma_bf16(dv_acc[2 * dpi], pf, of[0], of[1]);
          mma_bf16(dv_acc[2 * dpi + 1], pf, of[2], of[3]);
          mma_bf16(dk_acc[2 * dpi], df, qf[0], qf[1]);
          mma_bf16(dk_acc[2 * dpi + 1], df, qf[2], qf[3]);
        }
      }
    }
    __syncthreads();
  }
  // With no steps the K/V copies were never waited for; they must land before the staging
  // below overwrites the same rows.
  cp_async_wait<0>();
  __syncthreads();
  if (key_w >= dm.tk) return;
  // The warp's K and V rows are its own and no longer read: stage dk and dv there.
  store_rows<HD>(dk + kv_row(dm, b, key_w, kvh) * HD, kv_stride, dm.tk - key_w, dk_acc, scale,
                 sk + 16 * warp * LD, lane);
  store_rows<HD>(dv + kv_row(dm, b, key_w, kvh) * HD, kv_stride, dm.tk - key_w, dv_acc, 1.0f,
                 sv + 16 * warp * LD, lane);
}

// --- host side ----------------------------------------------------------------------------

// Warps and tile sizes per head dim. Forward: 16 W queries per block, kFwdKeys per K/V tile,
// registers capped so that kFwdMinBlocks blocks fit an SM. dQ: 16 W queries, kQKeys per
// tile. dK/dV: 16 W keys, kKvRows queries per step. (sm_90, ptxas of CUDA 13, hd 64 / 128:
// forward 128 / 212 registers, dQ 168 / 166, dK/dV 224 / 254, no spills but 4 bytes in the
// hd 64 forward.)
template <int HD>
struct Tiles;
template <>
struct Tiles<64> {
  static constexpr int kFwdWarps = 8, kFwdKeys = 64, kFwdMinBlocks = 2;
  static constexpr int kQWarps = 4, kQKeys = 64;
  static constexpr int kKvWarps = 4, kKvRows = 64;
};
template <>
struct Tiles<128> {
  static constexpr int kFwdWarps = 8, kFwdKeys = 64, kFwdMinBlocks = 1;
  static constexpr int kQWarps = 4, kQKeys = 32;
  static constexpr int kKvWarps = 4, kKvRows = 32;
};

template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
  SY_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(bytes)));
}

unsigned tiles(int n, int tile) { return static_cast<unsigned>((n + tile - 1) / tile); }

nv_bf16* bf16_ptr(const Tensor& t) { return ptr<nv_bf16>(t); }

// Shapes were checked by kernels/attention.cc and kernels/cuda/attention.cu's dims_of (every
// size fits an int, B and H at most 65535).
Dims dims_of(const Tensor& q, const Tensor& k) {
  return {static_cast<int>(q.dim(0)), static_cast<int>(q.dim(1)), static_cast<int>(k.dim(1)),
          static_cast<int>(q.dim(2)), static_cast<int>(k.dim(2))};
}

template <int HD>
void forward_with(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                  const Tensor& v, const Dims& dm) {
  constexpr int W = Tiles<HD>::kFwdWarps, BC = Tiles<HD>::kFwdKeys, BR = 16 * W;
  const size_t smem = static_cast<size_t>(BR + 4 * BC) * (HD + 8) * 2;
  auto kernel = forward_kernel<HD, W, BC, Tiles<HD>::kFwdMinBlocks>;
  allow_shared(kernel, smem);
  const float scale_log2 = kLog2e / std::sqrt(static_cast<float>(HD));
  kernel<<<dim3(tiles(dm.tq, BR), dm.heads, dm.batch), 32 * W, smem, stream()>>>(
      bf16_ptr(out), ptr<float>(lse), bf16_ptr(q), bf16_ptr(k), bf16_ptr(v), dm, scale_log2);
  launch_check("attention forward_kernel (tensor cores)");
}

template <int HD>
void backward_with(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                   const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                   const Tensor& lse, const Dims& dm) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  const float scale_log2 = scale * kLog2e;
  Scratch delta(static_cast<size_t>(dm.batch) * dm.heads * dm.tq * sizeof(float));
  if (dm.tq > 0) {
    constexpr int W = Tiles<HD>::kQWarps, BC = Tiles<HD>::kQKeys, BR = 16 * W;
    const size_t smem = static_cast<size_t>(2 * BR + 4 * BC) * (HD + 8) * 2;
    auto kernel = backward_q_kernel<HD, W, BC>;
    allow_shared(kernel, smem);
    kernel<<<dim3(tiles(dm.tq, BR), dm.heads, dm.batch), 32 * W, smem, stream()>>>(
        bf16_ptr(dq), delta.as<float>(), bf16_ptr(q), bf16_ptr(k), bf16_ptr(v), bf16_ptr(out),
        bf16_ptr(dout), ptr<float>(lse), dm, scale, scale_log2);
    launch_check("attention backward_q_kernel (tensor cores)");
  }
  {
    constexpr int W = Tiles<HD>::kKvWarps, BR = Tiles<HD>::kKvRows, BC = 16 * W;
    const size_t smem =
        static_cast<size_t>(2 * BC + 4 * BR) * (HD + 8) * 2 + 4 * BR * sizeof(float);
    auto kernel = backward_kv_kernel<HD, W, BR>;
    allow_shared(kernel, smem);
    kernel<<<dim3(tiles(dm.tk, BC), dm.kv_heads, dm.batch), 32 * W, smem, stream()>>>(
        bf16_ptr(dk), bf16_ptr(dv), bf16_ptr(q), bf16_ptr(k), bf16_ptr(v), bf16_ptr(dout),
        ptr<float>(lse), delta.as<float>(), dm, scale, scale_log2);
    launch_check("attention backward_kv_kernel (tensor cores)");
  }
}

// cuDNN's fused attention where the build has it (measured faster than ours in the training
// step: bench/device_run.sh bench), else our tensor-core kernels.
constexpr AttentionKernels kDefaultKernels =
#ifdef SWITCHYARD_HAVE_CUDNN_ATTENTION
    AttentionKernels::kCudnn;
#else
    AttentionKernels::kTensorCore;
#endif

AttentionKernels kernels_from_env() {
  const char* value = std::getenv("SWITCHYARD_ATTENTION");
  if (value == nullptr || *value == '\0') return kDefaultKernels;
  if (std::strcmp(value, "tc") == 0) return AttentionKernels::kTensorCore;
  if (std::strcmp(value, "cudnn") == 0) return AttentionKernels::kCudnn;
  SY_CHECK(std::strcmp(value, "simt") == 0)
      << "SWITCHYARD_ATTENTION must be 'cudnn' (cuDNN's fused attention for bf16 training "
         "shapes, the default where the build has it), 'tc' (our tensor-core kernels) or 'simt' "
         "(our CUDA-core kernels), got '"
      << value << "'";
  return AttentionKernels::kSimt;
}

std::atomic<AttentionKernels>& chosen_kernels() {
  static std::atomic<AttentionKernels> chosen{kernels_from_env()};
  return chosen;
}

}  // namespace

AttentionKernels attention_kernels() { return chosen_kernels().load(); }

#ifndef SWITCHYARD_HAVE_CUDNN_ATTENTION
// This build left kernels/cuda/attention_cudnn.cc out (CMake found no cudnn.h or NVRTC).
bool cudnn_attention_takes(std::initializer_list<const Tensor*>, bool) {
  SY_CHECK(attention_kernels() != AttentionKernels::kCudnn)
      << "SWITCHYARD_ATTENTION=cudnn, but this build has no cuDNN attention (CMake found no "
         "cudnn.h or no NVRTC); unset it, or rebuild where the CUDA toolkit has both";
  return false;
}
void cudnn_attention_forward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                             const Tensor&) {
  SY_CHECK(false) << "no cuDNN attention in this build";
}
void cudnn_attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                              const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                              const Tensor&) {
  SY_CHECK(false) << "no cuDNN attention in this build";
}
#endif

void set_attention_kernels(AttentionKernels kernels) { chosen_kernels().store(kernels); }

bool tensor_core_attention_takes(std::initializer_list<const Tensor*> tensors) {
  const Tensor& q = **tensors.begin();
  if (q.dtype() != DType::kBF16 || (q.dim(3) != 64 && q.dim(3) != 128)) return false;
  for (const Tensor* t : tensors) {
    if (reinterpret_cast<uintptr_t>(t->data<bf16>()) % 16 != 0) return false;
  }
  return attention_kernels() != AttentionKernels::kSimt;
}

void tensor_core_attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q,
                                   const Tensor& k, const Tensor& v) {
  const Dims dm = dims_of(q, k);
  if (q.dim(3) == 64) return forward_with<64>(out, lse, q, k, v, dm);
  forward_with<128>(out, lse, q, k, v, dm);
}

void tensor_core_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                    const Tensor& dout, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const Tensor& out, const Tensor& lse) {
  const Dims dm = dims_of(q, k);
  if (q.dim(3) == 64) return backward_with<64>(dq, dk, dv, dout, q, k, v, out, lse, dm);
  backward_with<128>(dq, dk, dv, dout, q, k, v, out, lse, dm);
}

}  // namespace sy::cuda
