// Causal grouped-query attention on the GPU, flash-style (the FlashAttention-2 scheme), f32 or
// bf16 in and out, fp32 arithmetic; lse is f32. The T x T score matrix never reaches global
// memory.
//
// Forward: a block owns a tile of BR queries of one (batch, head), streams tiles of BC keys
// and values through shared memory, and keeps a running max and sum per query (online
// softmax, in base 2); it writes out and lse = max + log(sum) per query.
// Backward recomputes P = exp(scale q.k - lse) tile by tile, in three kernels:
//   1. delta = rowsum(dO * O), one warp per query row;
//   2. dK, dV: a block owns a tile of keys of one KV head and walks every query tile (of
//      every query head of its group) that sees it: dV += P^T dO, dS = P (dO V^T - delta),
//      dK += scale dS^T Q, both in registers, so GQA needs no reduction across blocks;
//   3. dQ: a block owns a query tile and walks its key tiles again: dQ += scale dS K.
// dQ gets its own pass instead of atomics from pass 2: that recomputes S and dP once more
// (7 tile products instead of 5) but makes every gradient bit-identical run to run.
//
// The tile products run on CUDA cores (fp32 FMA, no tensor cores yet). A block is 256
// threads as a 16 x 16 grid; thread (ty, tx) owns rows ty + 16 i and columns tx + 16 j of
// each product. Operands sit in shared memory as f32, rows padded to HDP + 1 floats so that
// neither the row-broadcast nor the column reads hit the same bank twice.
// Head dims 32, 64, 128 and 256 run at their size; any other hd up to 256 runs in the next
// larger one with zero padding (zeros add nothing to dot products and padded output
// columns are never stored).
//
// bf16 with head dim 64 or 128 (16-byte aligned) goes to the tensor-core kernels of
// kernels/cuda/attention_tc.cu instead, unless SWITCHYARD_ATTENTION=simt is set.
#include <cmath>

#include "kernels/attention.h"
#include "kernels/cuda/attention_tc.h"
#include "kernels/cuda/common.cuh"

namespace sy::cuda {
namespace {

constexpr int kTileThreads = 256;  // a 16 x 16 grid
constexpr int kSide = 16;
constexpr int kMaxHeadDim = 256;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// q/out [B, Tq, H, hd], k/v [B, Tk, Hkv, hd]; query t sits at absolute position Tk - Tq + t.
struct Dims {
  int batch, tq, tk, heads, kv_heads, hd;
};

__device__ __forceinline__ int64_t q_index(const Dims& d, int b, int t, int h) {
  return ((static_cast<int64_t>(b) * d.tq + t) * d.heads + h) * d.hd;
}
__device__ __forceinline__ int64_t kv_index(const Dims& d, int b, int j, int g) {
  return ((static_cast<int64_t>(b) * d.tk + j) * d.kv_heads + g) * d.hd;
}
__device__ __forceinline__ int64_t lse_index(const Dims& d, int b, int h, int t) {
  return (static_cast<int64_t>(b) * d.heads + h) * d.tq + t;
}

// Max and sum over the 16 threads of one tile row (a half-warp: lanes differ in bits 0-3).
__device__ __forceinline__ float row_max(float x) {
  for (int o = kSide / 2; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float row_sum(float x) {
  for (int o = kSide / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Copies `valid_rows` rows of one head (consecutive rows `row_stride` elements apart) into
// shared memory as f32 [ROWS][HDP + 1]; rows past `valid_rows` and columns past hd are zero.
template <int ROWS, int HDP, typename T>
__device__ void load_tile(float* dst, const T* src, int64_t row_stride, int valid_rows, int hd) {
  for (int i = threadIdx.x; i < ROWS * HDP; i += kTileThreads) {
    const int r = i / HDP, c = i % HDP;
    dst[r * (HDP + 1) + c] = r < valid_rows && c < hd ? to_f32(src[r * row_stride + c]) : 0.0f;
  }
}

// acc[i][j] = a[ty + 16 i, :] . b[tx + 16 j, :]; a and b are [rows][HDP + 1].
template <int RM, int RN, int HDP>
__device__ __forceinline__ void row_dots(float (&acc)[RM][RN], const float* a, const float* b,
                                         int ty, int tx) {
#pragma unroll
  for (int i = 0; i < RM; ++i) {
#pragma unroll
    for (int j = 0; j < RN; ++j) acc[i][j] = 0.0f;
  }
#pragma unroll 4
  for (int d = 0; d < HDP; ++d) {
    float av[RM], bv[RN];
#pragma unroll
    for (int i = 0; i < RM; ++i) av[i] = a[(ty + kSide * i) * (HDP + 1) + d];
#pragma unroll
    for (int j = 0; j < RN; ++j) bv[j] = b[(tx + kSide * j) * (HDP + 1) + d];
#pragma unroll
    for (int i = 0; i < RM; ++i) {
#pragma unroll
      for (int j = 0; j < RN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
  }
}

// acc[i][j] += sum_c p[ty + 16 i, c] * x[c, tx + 16 j] over c < KC; p is [rows][KC + 1],
// x is [KC][HDP + 1]. Thread (ty, tx) owns feature columns tx, tx + 16, ...
template <int RM, int KC, int HDP>
__device__ __forceinline__ void accumulate_products(float (&acc)[RM][HDP / kSide], const float* p,
                                                    const float* x, int ty, int tx) {
  constexpr int kDn = HDP / kSide;
#pragma unroll 4
  for (int c = 0; c < KC; ++c) {
    float pv[RM], xv[kDn];
#pragma unroll
    for (int i = 0; i < RM; ++i) pv[i] = p[(ty + kSide * i) * (KC + 1) + c];
#pragma unroll
    for (int j = 0; j < kDn; ++j) xv[j] = x[c * (HDP + 1) + tx + kSide * j];
#pragma unroll
    for (int i = 0; i < RM; ++i) {
#pragma unroll
      for (int j = 0; j < kDn; ++j) acc[i][j] = fmaf(pv[i], xv[j], acc[i][j]);
    }
  }
}

// Writes rows ty + 16 i (those below `valid_rows`) of a [rows][HDP] register tile, times
// `scale`, to one head's rows of dst (consecutive rows `row_stride` elements apart).
template <int RM, int HDP, typename T>
__device__ __forceinline__ void store_rows(T* dst, const float (&acc)[RM][HDP / kSide],
                                           int64_t row_stride, int valid_rows, int hd, float scale,
                                           int ty, int tx) {
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int r = ty + kSide * i;
    if (r >= valid_rows) continue;
#pragma unroll
    for (int j = 0; j < HDP / kSide; ++j) {
      const int c = tx + kSide * j;
      if (c < hd) dst[r * row_stride + c] = from_f32<T>(acc[i][j] * scale);
    }
  }
}

// Tile sizes per padded head dim: shared memory stays under ~140 KB and per-thread
// accumulators under ~64 registers.
template <int HDP>
struct Tiles {
  static constexpr int kFwdRows = 64, kFwdKeys = 64;  // forward: BR queries, BC keys
  static constexpr int kKvKeys = 64, kKvRows = 64;    // dK/dV: BC keys, BR queries
  static constexpr int kQRows = 64, kQKeys = 64;      // dQ: BR queries, BC keys
};
template <>
struct Tiles<128> {
  static constexpr int kFwdRows = 64, kFwdKeys = 32;
  static constexpr int kKvKeys = 64, kKvRows = 32;
  static constexpr int kQRows = 64, kQKeys = 32;
};
template <>
struct Tiles<256> {
  static constexpr int kFwdRows = 32, kFwdKeys = 32;
  static constexpr int kKvKeys = 32, kKvRows = 32;
  static constexpr int kQRows = 32, kQKeys = 32;
};

// Grid (query tiles, H, B). Shared: Q [BR], K [BC], V [BC] rows of HDP + 1, P [BR][BC + 1].
template <typename T, int HDP, int BR, int BC>
__global__ void __launch_bounds__(kTileThreads)
    attention_forward_kernel(T* out, float* lse, const T* q, const T* k, const T* v, Dims dm,
                             float scale_log2) {
  constexpr int kLd = HDP + 1, kRm = BR / kSide, kRn = BC / kSide, kDn = HDP / kSide;
  extern __shared__ float smem[];
  float* sq = smem;
  float* sk = sq + BR * kLd;
  float* sv = sk + BC * kLd;
  float* sp = sv + BC * kLd;
  const int tx = threadIdx.x % kSide, ty = threadIdx.x / kSide;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BR;  // the longest query tiles start first
  const int h = blockIdx.y, b = blockIdx.z, g = h / (dm.heads / dm.kv_heads);
  const int offset = dm.tk - dm.tq;
  const int64_t q_stride = static_cast<int64_t>(dm.heads) * dm.hd;
  const int64_t kv_stride = static_cast<int64_t>(dm.kv_heads) * dm.hd;
  load_tile<BR, HDP>(sq, q + q_index(dm, b, q0, h), q_stride, dm.tq - q0, dm.hd);

  // Per owned row: running max (base 2, scaled), running sum, unnormalised output.
  float m[kRm], l[kRm], acc[kRm][kDn];
#pragma unroll
  for (int i = 0; i < kRm; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int j = 0; j < kDn; ++j) acc[i][j] = 0.0f;
  }
  const int last_key = min(dm.tk - 1, offset + q0 + BR - 1);
  for (int k0 = 0; k0 <= last_key; k0 += BC) {
    __syncthreads();  // every thread is done with the previous K, V and P
    load_tile<BC, HDP>(sk, k + kv_index(dm, b, k0, g), kv_stride, dm.tk - k0, dm.hd);
    load_tile<BC, HDP>(sv, v + kv_index(dm, b, k0, g), kv_stride, dm.tk - k0, dm.hd);
    __syncthreads();
    float s[kRm][kRn];
    row_dots<kRm, kRn, HDP>(s, sq, sk, ty, tx);
#pragma unroll
    for (int i = 0; i < kRm; ++i) {
      // Rows past Tq see every key below Tk (never stored); key 0 is visible to all rows,
      // so the first tile makes every running max finite.
      const int last = offset + q0 + ty + kSide * i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < kRn; ++j) {
        const int key = k0 + tx + kSide * j;
        s[i][j] = key <= last && key < dm.tk ? s[i][j] * scale_log2 : -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
      const float m_new = fmaxf(m[i], row_max(mx));
      const float alpha = exp2f(m[i] - m_new);
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kRn; ++j) {
        s[i][j] = exp2f(s[i][j] - m_new);
        sum += s[i][j];
        sp[(ty + kSide * i) * (BC + 1) + tx + kSide * j] = s[i][j];
      }
      l[i] = l[i] * alpha + row_sum(sum);
      m[i] = m_new;
#pragma unroll
      for (int j = 0; j < kDn; ++j) acc[i][j] *= alpha;
    }
    __syncthreads();
    accumulate_products<kRm, BC, HDP>(acc, sp, sv, ty, tx);
  }
#pragma unroll
  for (int i = 0; i < kRm; ++i) {
    const int t = q0 + ty + kSide * i;
    if (t >= dm.tq) continue;
    const float inv = 1.0f / l[i];
    T* o = out + q_index(dm, b, t, h);
#pragma unroll
    for (int j = 0; j < kDn; ++j) {
      const int c = tx + kSide * j;
      if (c < dm.hd) o[c] = from_f32<T>(acc[i][j] * inv);
    }
    if (tx == 0) lse[lse_index(dm, b, h, t)] = m[i] * kLn2 + logf(l[i]);
  }
}

// delta[b, h, t] = dO . O for each query row; one warp per row of [B, Tq, H].
template <typename T>
__global__ void attention_delta_kernel(float* delta, const T* out, const T* dout, Dims dm) {
  const int64_t rows = static_cast<int64_t>(dm.batch) * dm.tq * dm.heads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // the whole warp leaves together
  const T* o = out + row * dm.hd;
  const T* g = dout + row * dm.hd;
  float s = 0.0f;
  for (int d = lane; d < dm.hd; d += 32) s = fmaf(to_f32(g[d]), to_f32(o[d]), s);
  s = warp_sum(s);
  if (lane == 0) {
    const int h = static_cast<int>(row % dm.heads);
    const int64_t bt = row / dm.heads;
    delta[lse_index(dm, static_cast<int>(bt / dm.tq), h, static_cast<int>(bt % dm.tq))] = s;
  }
}

// Grid (key tiles, Hkv, B). Shared: K, V [BC] and Q, dO [BR] rows of HDP + 1, then
// P^T / dS^T [BC][BR + 1], lse (base 2) [BR], delta [BR]. Products here are transposed:
// thread rows are keys, thread columns are queries.
template <typename T, int HDP, int BC, int BR>
__global__ void __launch_bounds__(kTileThreads)
    attention_backward_kv_kernel(T* dk, T* dv, const T* q, const T* k, const T* v, const T* dout,
                                 const float* lse, const float* delta, Dims dm, float scale,
                                 float scale_log2) {
  constexpr int kLd = HDP + 1, kCm = BC / kSide, kRn = BR / kSide, kDn = HDP / kSide;
  extern __shared__ float smem[];
  float* sk = smem;
  float* sv = sk + BC * kLd;
  float* sq = sv + BC * kLd;
  float* sdo = sq + BR * kLd;
  float* sp = sdo + BR * kLd;
  float* slse = sp + BC * (BR + 1);
  float* sdelta = slse + BR;
  const int tx = threadIdx.x % kSide, ty = threadIdx.x / kSide;
  const int k0 = blockIdx.x * BC, g = blockIdx.y, b = blockIdx.z;
  const int group = dm.heads / dm.kv_heads, offset = dm.tk - dm.tq;
  const int64_t q_stride = static_cast<int64_t>(dm.heads) * dm.hd;
  const int64_t kv_stride = static_cast<int64_t>(dm.kv_heads) * dm.hd;
  load_tile<BC, HDP>(sk, k + kv_index(dm, b, k0, g), kv_stride, dm.tk - k0, dm.hd);
  load_tile<BC, HDP>(sv, v + kv_index(dm, b, k0, g), kv_stride, dm.tk - k0, dm.hd);

  float dk_acc[kCm][kDn], dv_acc[kCm][kDn];
#pragma unroll
  for (int i = 0; i < kCm; ++i) {
#pragma unroll
    for (int j = 0; j < kDn; ++j) dk_acc[i][j] = dv_acc[i][j] = 0.0f;
  }
  // Query t sees key k0 once offset + t >= k0: earlier query tiles see none of this tile.
  const int first_q = max(0, k0 - offset) / BR * BR;
  for (int h = g * group; h < (g + 1) * group; ++h) {
    for (int q0 = first_q; q0 < dm.tq; q0 += BR) {
      __syncthreads();  // every thread is done with the previous Q, dO and P
      load_tile<BR, HDP>(sq, q + q_index(dm, b, q0, h), q_stride, dm.tq - q0, dm.hd);
      load_tile<BR, HDP>(sdo, dout + q_index(dm, b, q0, h), q_stride, dm.tq - q0, dm.hd);
      for (int r = threadIdx.x; r < BR; r += kTileThreads) {
        const bool valid = q0 + r < dm.tq;
        slse[r] = valid ? lse[lse_index(dm, b, h, q0 + r)] * kLog2e : 0.0f;
        sdelta[r] = valid ? delta[lse_index(dm, b, h, q0 + r)] : 0.0f;
      }
      __syncthreads();
      float s[kCm][kRn], dp[kCm][kRn];
      row_dots<kCm, kRn, HDP>(s, sk, sq, ty, tx);
      row_dots<kCm, kRn, HDP>(dp, sv, sdo, ty, tx);
#pragma unroll
      for (int i = 0; i < kCm; ++i) {
        const int key = k0 + ty + kSide * i;
#pragma unroll
        for (int j = 0; j < kRn; ++j) {
          const int r = tx + kSide * j, t = q0 + r;
          const bool visible = t < dm.tq && key < dm.tk && key <= offset + t;
          const float p = visible ? exp2f(s[i][j] * scale_log2 - slse[r]) : 0.0f;
          sp[(ty + kSide * i) * (BR + 1) + r] = p;
          s[i][j] = p * (dp[i][j] - sdelta[r]);  // dS^T
        }
      }
      __syncthreads();
      accumulate_products<kCm, BR, HDP>(dv_acc, sp, sdo, ty, tx);
      __syncthreads();
#pragma unroll
      for (int i = 0; i < kCm; ++i) {
#pragma unroll
        for (int j = 0; j < kRn; ++j) sp[(ty + kSide * i) * (BR + 1) + tx + kSide * j] = s[i][j];
      }
      __syncthreads();
      accumulate_products<kCm, BR, HDP>(dk_acc, sp, sq, ty, tx);
    }
  }
  store_rows<kCm, HDP>(dk + kv_index(dm, b, k0, g), dk_acc, kv_stride, dm.tk - k0, dm.hd, scale, ty,
                       tx);
  store_rows<kCm, HDP>(dv + kv_index(dm, b, k0, g), dv_acc, kv_stride, dm.tk - k0, dm.hd, 1.0f, ty,
                       tx);
}

// Grid (query tiles, H, B). Shared: Q, dO [BR] and K, V [BC] rows of HDP + 1, dS [BR][BC + 1].
template <typename T, int HDP, int BR, int BC>
__global__ void __launch_bounds__(kTileThreads)
    attention_backward_q_kernel(T* dq, const T* q, const T* k, const T* v, const T* dout,
                                const float* lse, const float* delta, Dims dm, float scale,
                                float scale_log2) {
  constexpr int kLd = HDP + 1, kRm = BR / kSide, kRn = BC / kSide, kDn = HDP / kSide;
  extern __shared__ float smem[];
  float* sq = smem;
  float* sdo = sq + BR * kLd;
  float* sk = sdo + BR * kLd;
  float* sv = sk + BC * kLd;
  float* sp = sv + BC * kLd;
  const int tx = threadIdx.x % kSide, ty = threadIdx.x / kSide;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BR;
  const int h = blockIdx.y, b = blockIdx.z, g = h / (dm.heads / dm.kv_heads);
  const int offset = dm.tk - dm.tq;
  const int64_t q_stride = static_cast<int64_t>(dm.heads) * dm.hd;
  const int64_t kv_stride = static_cast<int64_t>(dm.kv_heads) * dm.hd;
  load_tile<BR, HDP>(sq, q + q_index(dm, b, q0, h), q_stride, dm.tq - q0, dm.hd);
  load_tile<BR, HDP>(sdo, dout + q_index(dm, b, q0, h), q_stride, dm.tq - q0, dm.hd);

  float row_lse[kRm], row_delta[kRm], dq_acc[kRm][kDn];
#pragma unroll
  for (int i = 0; i < kRm; ++i) {
    const int t = q0 + ty + kSide * i;
    row_lse[i] = t < dm.tq ? lse[lse_index(dm, b, h, t)] * kLog2e : 0.0f;
    row_delta[i] = t < dm.tq ? delta[lse_index(dm, b, h, t)] : 0.0f;
#pragma unroll
    for (int j = 0; j < kDn; ++j) dq_acc[i][j] = 0.0f;
  }
  const int last_key = min(dm.tk - 1, offset + q0 + BR - 1);
  for (int k0 = 0; k0 <= last_key; k0 += BC) {
    __syncthreads();  // every thread is done with the previous K, V and dS
    load_tile<BC, HDP>(sk, k + kv_index(dm, b, k0, g), kv_stride, dm.tk - k0, dm.hd);
    load_tile<BC, HDP>(sv, v + kv_index(dm, b, k0, g), kv_stride, dm.tk - k0, dm.hd);
    __syncthreads();
    float s[kRm][kRn], dp[kRm][kRn];
    row_dots<kRm, kRn, HDP>(s, sq, sk, ty, tx);
    row_dots<kRm, kRn, HDP>(dp, sdo, sv, ty, tx);
#pragma unroll
    for (int i = 0; i < kRm; ++i) {
      const int t = q0 + ty + kSide * i;
#pragma unroll
      for (int j = 0; j < kRn; ++j) {
        const int key = k0 + tx + kSide * j;
        const bool visible = t < dm.tq && key < dm.tk && key <= offset + t;
        const float p = visible ? exp2f(s[i][j] * scale_log2 - row_lse[i]) : 0.0f;
        sp[(ty + kSide * i) * (BC + 1) + tx + kSide * j] = p * (dp[i][j] - row_delta[i]);
      }
    }
    __syncthreads();
    accumulate_products<kRm, BC, HDP>(dq_acc, sp, sk, ty, tx);
  }
  store_rows<kRm, HDP>(dq + q_index(dm, b, q0, h), dq_acc, q_stride, dm.tq - q0, dm.hd, scale, ty,
                       tx);
}

// Kernels above 48 KB of dynamic shared memory must opt in.
template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
  SY_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(bytes)));
}

Dims dims_of(const Tensor& q, const Tensor& k) {
  for (int64_t d : {q.dim(0), q.dim(1), k.dim(1), q.dim(2), k.dim(2), q.dim(3)}) {
    SY_CHECK(d < (1LL << 31)) << "attention: dimension " << d << " does not fit an int";
  }
  SY_CHECK(q.dim(0) <= 65535 && q.dim(2) <= 65535)
      << "attention: batch " << q.dim(0) << " and heads " << q.dim(2) << " must be <= 65535";
  return {static_cast<int>(q.dim(0)), static_cast<int>(q.dim(1)), static_cast<int>(k.dim(1)),
          static_cast<int>(q.dim(2)), static_cast<int>(k.dim(2)), static_cast<int>(q.dim(3))};
}

unsigned tiles(int n, int tile) { return static_cast<unsigned>((n + tile - 1) / tile); }

template <typename T, int HDP>
void forward_with(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                  const Tensor& v, const Dims& dm) {
  constexpr int kBr = Tiles<HDP>::kFwdRows, kBc = Tiles<HDP>::kFwdKeys;
  const size_t smem = ((kBr + 2 * kBc) * (HDP + 1) + kBr * (kBc + 1)) * sizeof(float);
  auto kernel = attention_forward_kernel<T, HDP, kBr, kBc>;
  allow_shared(kernel, smem);
  const float scale_log2 = kLog2e / std::sqrt(static_cast<float>(dm.hd));
  kernel<<<dim3(tiles(dm.tq, kBr), dm.heads, dm.batch), kTileThreads, smem, stream()>>>(
      ptr<T>(out), ptr<float>(lse), ptr<T>(q), ptr<T>(k), ptr<T>(v), dm, scale_log2);
  launch_check("attention_forward_kernel");
}

template <typename T, int HDP>
void backward_with(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                   const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                   const Tensor& lse, const Dims& dm) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(dm.hd));
  const float scale_log2 = scale * kLog2e;
  const int64_t rows = static_cast<int64_t>(dm.batch) * dm.tq * dm.heads;
  Scratch delta(static_cast<size_t>(rows) * sizeof(float));
  if (rows > 0) {
    constexpr int kWarps = 8;
    attention_delta_kernel<T>
        <<<static_cast<unsigned>((rows + kWarps - 1) / kWarps), 32 * kWarps, 0, stream()>>>(
            delta.as<float>(), ptr<T>(out), ptr<T>(dout), dm);
    launch_check("attention_delta_kernel");
  }
  {
    constexpr int kBc = Tiles<HDP>::kKvKeys, kBr = Tiles<HDP>::kKvRows;
    const size_t smem =
        ((2 * kBc + 2 * kBr) * (HDP + 1) + kBc * (kBr + 1) + 2 * kBr) * sizeof(float);
    auto kernel = attention_backward_kv_kernel<T, HDP, kBc, kBr>;
    allow_shared(kernel, smem);
    kernel<<<dim3(tiles(dm.tk, kBc), dm.kv_heads, dm.batch), kTileThreads, smem, stream()>>>(
        ptr<T>(dk), ptr<T>(dv), ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<T>(dout), ptr<float>(lse),
        delta.as<float>(), dm, scale, scale_log2);
    launch_check("attention_backward_kv_kernel");
  }
  if (dm.tq > 0) {
    constexpr int kBr = Tiles<HDP>::kQRows, kBc = Tiles<HDP>::kQKeys;
    const size_t smem = ((2 * kBr + 2 * kBc) * (HDP + 1) + kBr * (kBc + 1)) * sizeof(float);
    auto kernel = attention_backward_q_kernel<T, HDP, kBr, kBc>;
    allow_shared(kernel, smem);
    kernel<<<dim3(tiles(dm.tq, kBr), dm.heads, dm.batch), kTileThreads, smem, stream()>>>(
        ptr<T>(dq), ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<T>(dout), ptr<float>(lse),
        delta.as<float>(), dm, scale, scale_log2);
    launch_check("attention_backward_q_kernel");
  }
}

// Calls f.template operator()<HDP>() with the padded head dim that holds hd.
template <typename F>
void with_head_dim(int hd, F&& f) {
  SY_CHECK(hd >= 1 && hd <= kMaxHeadDim)
      << "attention on CUDA takes head dims 1.." << kMaxHeadDim << ", got " << hd;
  if (hd <= 32) return f.template operator()<32>();
  if (hd <= 64) return f.template operator()<64>();
  if (hd <= 128) return f.template operator()<128>();
  return f.template operator()<256>();
}

}  // namespace

void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                       const Tensor& v) {
  const Dims dm = dims_of(q, k);
  if (out.numel() == 0) return;
  use_device(q);
  if (cudnn_attention_takes({&q, &k, &v, &out}, false))
    return cudnn_attention_forward(out, lse, q, k, v);
  if (tensor_core_attention_takes({&q, &k, &v, &out})) {
    return tensor_core_attention_forward(out, lse, q, k, v);
  }
  dispatch_float(q.dtype(), "attention q", [&](auto tag) {
    using T = decltype(tag);
    with_head_dim(dm.hd, [&]<int HDP>() { forward_with<T, HDP>(out, lse, q, k, v, dm); });
  });
}

void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse) {
  const Dims dm = dims_of(q, k);
  if (dk.numel() == 0) return;  // no keys: no queries either (Tq <= Tk)
  use_device(q);
  if (cudnn_attention_takes({&q, &k, &v, &out, &dout, &dq, &dk, &dv}, true)) {
    return cudnn_attention_backward(dq, dk, dv, dout, q, k, v, out, lse);
  }
  if (tensor_core_attention_takes({&q, &k, &v, &out, &dout, &dq, &dk, &dv})) {
    return tensor_core_attention_backward(dq, dk, dv, dout, q, k, v, out, lse);
  }
  dispatch_float(q.dtype(), "attention q", [&](auto tag) {
    using T = decltype(tag);
    with_head_dim(
        dm.hd, [&]<int HDP>() { backward_with<T, HDP>(dq, dk, dv, dout, q, k, v, out, lse, dm); });
  });
}

}  // namespace sy::cuda
