// The rollout engine's slot KV cache on the GPU (kernels/kv_cache.h).
//   kv_cache_append: a scatter of whole 16-byte vectors (one thread each) from k/v rows into
//     their slots; rows with count 0 and padding positions past count[r] cost one index test.
//   decode_attention: flash decoding. One block per (row, KV head, tile of up to kQ queries,
//     key split): the tile's queries are the group of query heads reading that KV head, at
//     each of the row's new positions, so each cached key and value is read once for all of
//     them. The block's warps take interleaved keys, each lane holding hd / 32 of a key's
//     dims, and keep an online softmax (running max, sum and weighted values, fp32) per
//     query; the warps merge in shared memory. Long contexts with few rows are split over
//     the keys so the GPU fills, and a second kernel merges the splits' partial softmaxes.
//     bf16 or f32 in and out; fp32 arithmetic; any head dim up to 256 (a lane's dims past
//     hd hold zeros: a head dim of 24 or 16 pads to one 32-wide lane set). In bf16 with a head
//     dim of 8, 16, 32, 64, 128 or 256 a vector kernel reads 16-byte vectors instead, when
//     chosen (set_decode_attention_kernel; not the default until it has run on a GPU).
// The CUDA kernels trust slot, start, count and length (the CPU op checks them).
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/kv_cache.h"

namespace sy::cuda {
namespace {

// W: the word moved per thread (uint4 for whole vectors, else the element itself).
template <typename W>
__global__ void kv_cache_append_kernel(W* cache_k, W* cache_v, const W* k, const W* v,
                                       const int32_t* slot, const int32_t* start,
                                       const int32_t* count, int64_t rows, int64_t steps,
                                       int64_t capacity, int64_t words) {
  const int64_t n = rows * steps * words;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t w = i % words, rt = i / words, t = rt % steps, r = rt / steps;
    if (t >= count[r]) continue;
    const int64_t dst = (static_cast<int64_t>(slot[r]) * capacity + start[r] + t) * words + w;
    cache_k[dst] = k[i];
    cache_v[dst] = v[i];
  }
}

constexpr int kAttnWarps = 4;
// Keys per split at least: below this a split's fixed costs outweigh its keys.
constexpr int64_t kMinSplitKeys = 128;

struct DecodeDims {
  int64_t tq, heads, kv_heads, capacity;
  int hd, group, q_tiles, splits;
  int64_t split_len;
  float scale;
};

// kD dims per lane (hd <= 32 kD), kQ queries per block.
template <typename T, int kD, int kQ>
__global__ void __launch_bounds__(kAttnWarps * 32)
    decode_attention_kernel(T* out, float* part_ml, float* part_acc, const T* q,
                            const T* cache_k, const T* cache_v, const int32_t* slot,
                            const int32_t* length, DecodeDims d) {
  constexpr int kHd = 32 * kD;
  __shared__ float merge_m[kAttnWarps][kQ], merge_l[kAttnWarps][kQ];
  __shared__ float merge_acc[kAttnWarps][kQ][kHd];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int64_t b = blockIdx.x;
  const int tile = static_cast<int>(b % d.q_tiles);
  b /= d.q_tiles;
  const int64_t g = b % d.kv_heads, r = b / d.kv_heads;
  const int split = blockIdx.y;
  const int64_t len = length[r];
  const int queries = static_cast<int>(d.tq * d.group);
  const int q0 = tile * kQ, nq = min(kQ, queries - q0);

  // Query qi of the tile: position t = qi / group, head g * group + qi % group.
  float qr[kQ][kD], acc[kQ][kD], m[kQ], l[kQ];
  int64_t last_key[kQ];
#pragma unroll
  for (int qi = 0; qi < kQ; ++qi) {
    m[qi] = -INFINITY;
    l[qi] = 0.0f;
    last_key[qi] = -1;
#pragma unroll
    for (int i = 0; i < kD; ++i) qr[qi][i] = acc[qi][i] = 0.0f;
    if (qi < nq) {
      const int64_t t = (q0 + qi) / d.group, h = g * d.group + (q0 + qi) % d.group;
      const T* qp = q + ((r * d.tq + t) * d.heads + h) * d.hd;
#pragma unroll
      for (int i = 0; i < kD; ++i) {
        const int dim = lane + 32 * i;
        qr[qi][i] = dim < d.hd ? to_f32(qp[dim]) * d.scale : 0.0f;
      }
      last_key[qi] = len - d.tq + t;
    }
  }
  const int64_t begin = split * d.split_len, end = min(len, begin + d.split_len);
  const int64_t base = static_cast<int64_t>(slot[r]) * d.capacity;
  const auto attend = [&](int64_t j, const float (&kr)[kD], const float (&vr)[kD]) {
#pragma unroll
    for (int qi = 0; qi < kQ; ++qi) {
      if (qi >= nq) break;
      float s = 0.0f;
#pragma unroll
      for (int i = 0; i < kD; ++i) s += qr[qi][i] * kr[i];
      s = warp_sum(s);
      if (j > last_key[qi]) continue;  // causal: a later key than this query's position
      const float mx = fmaxf(m[qi], s);
      const float correction = expf(m[qi] - mx), p = expf(s - mx);
      l[qi] = l[qi] * correction + p;
#pragma unroll
      for (int i = 0; i < kD; ++i) acc[qi][i] = acc[qi][i] * correction + p * vr[i];
      m[qi] = mx;
    }
  };
  // Two keys a warp at a time: their four loads are in flight together.
  for (int64_t j = begin + warp; j < end; j += 2 * kAttnWarps) {
    const int64_t j2 = j + kAttnWarps;
    const bool second = j2 < end;
    const int64_t at = ((base + j) * d.kv_heads + g) * d.hd;
    const int64_t at2 = ((base + (second ? j2 : j)) * d.kv_heads + g) * d.hd;
    float kr[kD], vr[kD], kr2[kD], vr2[kD];
#pragma unroll
    for (int i = 0; i < kD; ++i) {
      const int dim = lane + 32 * i;
      const bool in = dim < d.hd;
      kr[i] = in ? to_f32(cache_k[at + dim]) : 0.0f;
      vr[i] = in ? to_f32(cache_v[at + dim]) : 0.0f;
      kr2[i] = in ? to_f32(cache_k[at2 + dim]) : 0.0f;
      vr2[i] = in ? to_f32(cache_v[at2 + dim]) : 0.0f;
    }
    attend(j, kr, vr);
    if (second) attend(j2, kr2, vr2);
  }
  // Merge the warps' softmaxes.
#pragma unroll
  for (int qi = 0; qi < kQ; ++qi) {
    if (lane == 0) merge_m[warp][qi] = m[qi], merge_l[warp][qi] = l[qi];
#pragma unroll
    for (int i = 0; i < kD; ++i) merge_acc[warp][qi][lane + 32 * i] = acc[qi][i];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < nq * d.hd; e += blockDim.x) {
    const int qi = e / d.hd, dim = e % d.hd;
    float mx = -INFINITY;
    for (int w = 0; w < kAttnWarps; ++w) mx = fmaxf(mx, merge_m[w][qi]);
    float sum = 0.0f, value = 0.0f;
    if (mx > -INFINITY) {
      for (int w = 0; w < kAttnWarps; ++w) {
        const float f = expf(merge_m[w][qi] - mx);
        sum += merge_l[w][qi] * f;
        value += merge_acc[w][qi][dim] * f;
      }
    }
    const int64_t t = (q0 + qi) / d.group, h = g * d.group + (q0 + qi) % d.group;
    const int64_t row = (r * d.tq + t) * d.heads + h;
    if (d.splits == 1) {
      out[row * d.hd + dim] = from_f32<T>(sum > 0.0f ? value / sum : 0.0f);
    } else {
      const int64_t p = row * d.splits + split;
      part_acc[p * d.hd + dim] = value;
      if (dim == 0) part_ml[2 * p] = mx, part_ml[2 * p + 1] = sum;
    }
  }
}

// The bf16 path for head dims of 8 .. 256 whose 16-byte vectors split a warp evenly
// (hd / 8 a power of two): kL lanes hold one key's hd dims as 8-element vectors, so a warp
// reads 32 / kL keys at once with one 16-byte load per lane for K and one for V (the scalar
// kernel above moves 2-byte elements and reaches about a quarter of HBM's bandwidth). Each
// group of kL lanes keeps its own online softmax over the keys it reads; the block's
// (warp, group) softmaxes merge in shared memory, and splits merge as above.
template <int kL, int kQ>
__global__ void __launch_bounds__(kAttnWarps * 32)
    decode_attention_vec_kernel(__nv_bfloat16* out, float* part_ml, float* part_acc,
                                const __nv_bfloat16* q, const __nv_bfloat16* cache_k,
                                const __nv_bfloat16* cache_v, const int32_t* slot,
                                const int32_t* length, DecodeDims d) {
  constexpr int kGroups = 32 / kL, kHd = 8 * kL, kStates = kAttnWarps * kGroups;
  __shared__ float merge_m[kStates][kQ], merge_l[kStates][kQ];
  __shared__ float merge_acc[kQ][kStates][kHd];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane / kL, part = lane % kL;  // the lane's key within the warp; its dims
  int64_t b = blockIdx.x;
  const int tile = static_cast<int>(b % d.q_tiles);
  b /= d.q_tiles;
  const int64_t g = b % d.kv_heads, r = b / d.kv_heads;
  const int split = blockIdx.y;
  const int64_t len = length[r];
  const int queries = static_cast<int>(d.tq * d.group);
  const int q0 = tile * kQ, nq = min(kQ, queries - q0);

  float qr[kQ][8], acc[kQ][8], m[kQ], l[kQ];
  int64_t last_key[kQ];
#pragma unroll
  for (int qi = 0; qi < kQ; ++qi) {
    m[qi] = -INFINITY;
    l[qi] = 0.0f;
    last_key[qi] = -1;
#pragma unroll
    for (int i = 0; i < 8; ++i) qr[qi][i] = acc[qi][i] = 0.0f;
    if (qi < nq) {
      const int64_t t = (q0 + qi) / d.group, h = g * d.group + (q0 + qi) % d.group;
      Vec<__nv_bfloat16> v;
      v.raw = *reinterpret_cast<const uint4*>(q + ((r * d.tq + t) * d.heads + h) * kHd + 8 * part);
#pragma unroll
      for (int i = 0; i < 8; ++i) qr[qi][i] = __bfloat162float(v.x[i]) * d.scale;
      last_key[qi] = len - d.tq + t;
    }
  }
  const int64_t begin = split * d.split_len, end = min(len, begin + d.split_len);
  const int64_t base = static_cast<int64_t>(slot[r]) * d.capacity;
  constexpr int kStride = kAttnWarps * kGroups;  // keys a block reads per round
  const auto load = [&](int64_t j, Vec<__nv_bfloat16>& kv, Vec<__nv_bfloat16>& vv) {
    if (j < end) {
      const int64_t at = ((base + j) * d.kv_heads + g) * kHd + 8 * part;
      kv.raw = *reinterpret_cast<const uint4*>(cache_k + at);
      vv.raw = *reinterpret_cast<const uint4*>(cache_v + at);
    }
  };
  const auto attend = [&](int64_t j, const Vec<__nv_bfloat16>& kv, const Vec<__nv_bfloat16>& vv) {
    float kf[8], vf[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) kf[i] = __bfloat162float(kv.x[i]), vf[i] = __bfloat162float(vv.x[i]);
#pragma unroll
    for (int qi = 0; qi < kQ; ++qi) {
      if (qi >= nq) break;
      float s = 0.0f;
#pragma unroll
      for (int i = 0; i < 8; ++i) s += qr[qi][i] * kf[i];
#pragma unroll
      for (int o = kL / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (j >= end || j > last_key[qi]) continue;  // past the split, or causal
      const float mx = fmaxf(m[qi], s);
      const float correction = expf(m[qi] - mx), p = expf(s - mx);
      l[qi] = l[qi] * correction + p;
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[qi][i] = acc[qi][i] * correction + p * vf[i];
      m[qi] = mx;
    }
  };
  // Round n reads key j0 + n * kStride of each lane group; two rounds in flight, the next
  // round's loads issued before this round's arithmetic. The round count is the block's, so
  // every lane joins every shuffle (keys past the split are masked in attend).
  const int64_t keys = end - begin;
  const int64_t rounds = keys > 0 ? (keys + kStride - 1) / kStride : 0;
  const int64_t j0 = begin + warp * kGroups + sub;
  Vec<__nv_bfloat16> k0, v0, k1, v1;
  k0.raw = v0.raw = k1.raw = v1.raw = make_uint4(0, 0, 0, 0);
  load(j0, k0, v0);
  for (int64_t n = 0; n < rounds; n += 2) {
    const int64_t ja = j0 + n * kStride, jb = ja + kStride;
    load(jb, k1, v1);
    attend(ja, k0, v0);
    load(jb + kStride, k0, v0);
    if (n + 1 < rounds) attend(jb, k1, v1);
  }
  // Merge the block's softmaxes: state (warp, sub) for each query.
  const int state = warp * kGroups + sub;
#pragma unroll
  for (int qi = 0; qi < kQ; ++qi) {
    if (part == 0) merge_m[state][qi] = m[qi], merge_l[state][qi] = l[qi];
#pragma unroll
    for (int i = 0; i < 8; ++i) merge_acc[qi][state][8 * part + i] = acc[qi][i];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < nq * kHd; e += blockDim.x) {
    const int qi = e / kHd, dim = e % kHd;
    float mx = -INFINITY;
    for (int w = 0; w < kStates; ++w) mx = fmaxf(mx, merge_m[w][qi]);
    float sum = 0.0f, value = 0.0f;
    if (mx > -INFINITY) {
      for (int w = 0; w < kStates; ++w) {
        const float f = expf(merge_m[w][qi] - mx);
        sum += merge_l[w][qi] * f;
        value += merge_acc[qi][w][dim] * f;
      }
    }
    const int64_t t = (q0 + qi) / d.group, h = g * d.group + (q0 + qi) % d.group;
    const int64_t row = (r * d.tq + t) * d.heads + h;
    if (d.splits == 1) {
      out[row * kHd + dim] = __float2bfloat16_rn(sum > 0.0f ? value / sum : 0.0f);
    } else {
      const int64_t p = row * d.splits + split;
      part_acc[p * kHd + dim] = value;
      if (dim == 0) part_ml[2 * p] = mx, part_ml[2 * p + 1] = sum;
    }
  }
}

// One warp per output row (r, t, h): the splits' partial softmaxes merged.
template <typename T>
__global__ void decode_attention_merge_kernel(T* out, const float* part_ml, const float* part_acc,
                                              int64_t out_rows, int splits, int hd) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + (threadIdx.x >> 5);
       row < out_rows; row += warps) {
    const float* ml = part_ml + 2 * row * splits;
    float mx = -INFINITY;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, ml[2 * s]);
    float sum = 0.0f;
    if (mx > -INFINITY)
      for (int s = 0; s < splits; ++s) sum += ml[2 * s + 1] * expf(ml[2 * s] - mx);
    for (int dim = lane; dim < hd; dim += 32) {
      float value = 0.0f;
      if (sum > 0.0f) {
        for (int s = 0; s < splits; ++s)
          value += part_acc[(row * splits + s) * hd + dim] * expf(ml[2 * s] - mx);
        value /= sum;
      }
      out[row * hd + dim] = from_f32<T>(value);
    }
  }
}

template <typename W>
void launch_append(const Tensor& cache_k, const Tensor& cache_v, const Tensor& k, const Tensor& v,
                   const Tensor& slot, const Tensor& start, const Tensor& count, int64_t words) {
  const int64_t rows = k.dim(0), steps = k.dim(1);
  kv_cache_append_kernel<W><<<grid_for(rows * steps * words), kThreads, 0, stream()>>>(
      static_cast<W*>(cache_k.raw()), static_cast<W*>(cache_v.raw()),
      static_cast<const W*>(k.raw()), static_cast<const W*>(v.raw()), slot.data<int32_t>(),
      start.data<int32_t>(), count.data<int32_t>(), rows, steps, cache_k.dim(1), words);
  launch_check("kv_cache_append_kernel");
}

// Either kernel with the grid, the key splits and their merge (both kernels take the same
// arguments and write the same partial layout): a block per (row, KV head, tile of kQ
// queries), split over the keys until there are enough blocks for 64 warps an SM (the loads
// in flight that keep HBM busy), splits no shorter than kMinSplitKeys.
template <typename T, int kQ, typename Kernel>
void launch_split_decode(Kernel kernel, const char* name, const Tensor& out, const Tensor& q,
                         const Tensor& cache_k, const Tensor& cache_v, const Tensor& slot,
                         const Tensor& length, DecodeDims d) {
  const int64_t rows = q.dim(0);
  d.q_tiles = static_cast<int>((d.tq * d.group + kQ - 1) / kQ);
  const int64_t blocks = rows * d.kv_heads * d.q_tiles;
  SY_CHECK(blocks <= kMaxRowBlocks) << "decode_attention: " << blocks << " blocks exceed one grid";
  const int64_t want = (16LL * sm_count() + blocks - 1) / blocks;
  const int64_t most = std::max<int64_t>(1, (d.capacity + kMinSplitKeys - 1) / kMinSplitKeys);
  d.splits = static_cast<int>(std::clamp<int64_t>(want, 1, std::min<int64_t>(most, 65535)));
  d.split_len = (d.capacity + d.splits - 1) / d.splits;
  const int64_t out_rows = rows * d.tq * d.heads;
  Scratch scratch(d.splits > 1 ? static_cast<size_t>(out_rows) * d.splits * (2 + d.hd) * 4 : 0);
  float* part_ml = scratch.as<float>();
  float* part_acc = part_ml ? part_ml + 2 * out_rows * d.splits : nullptr;
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(d.splits));
  kernel<<<grid, kAttnWarps * 32, 0, stream()>>>(ptr<T>(out), part_ml, part_acc, ptr<T>(q),
                                                 ptr<T>(cache_k), ptr<T>(cache_v),
                                                 slot.data<int32_t>(), length.data<int32_t>(), d);
  launch_check(name);
  if (d.splits > 1) {
    decode_attention_merge_kernel<T><<<grid_for(out_rows * 32), kThreads, 0, stream()>>>(
        ptr<T>(out), part_ml, part_acc, out_rows, d.splits, d.hd);
    launch_check("decode_attention_merge_kernel");
  }
}

template <typename T, int kD, int kQ>
void launch_decode(const Tensor& out, const Tensor& q, const Tensor& cache_k,
                   const Tensor& cache_v, const Tensor& slot, const Tensor& length,
                   const DecodeDims& d) {
  launch_split_decode<T, kQ>(decode_attention_kernel<T, kD, kQ>, "decode_attention_kernel", out,
                             q, cache_k, cache_v, slot, length, d);
}

template <int kL, int kQ>
void launch_decode_vec(const Tensor& out, const Tensor& q, const Tensor& cache_k,
                       const Tensor& cache_v, const Tensor& slot, const Tensor& length,
                       const DecodeDims& d) {
  launch_split_decode<__nv_bfloat16, kQ>(decode_attention_vec_kernel<kL, kQ>,
                                         "decode_attention_vec_kernel", out, q, cache_k, cache_v,
                                         slot, length, d);
}

template <int kL>
void launch_decode_vec_queries(const Tensor& out, const Tensor& q, const Tensor& cache_k,
                               const Tensor& cache_v, const Tensor& slot, const Tensor& length,
                               const DecodeDims& d) {
  const int64_t queries = d.tq * d.group;  // a block's queries: smaller tiles, fewer registers
  if (queries == 1) return launch_decode_vec<kL, 1>(out, q, cache_k, cache_v, slot, length, d);
  if (queries == 2) return launch_decode_vec<kL, 2>(out, q, cache_k, cache_v, slot, length, d);
  if (queries <= 4) return launch_decode_vec<kL, 4>(out, q, cache_k, cache_v, slot, length, d);
  launch_decode_vec<kL, 8>(out, q, cache_k, cache_v, slot, length, d);
}

// The vector kernel's cases: bf16, hd / 8 a power of two up to 32 lanes, 16-byte aligned.
bool launch_decode_vec_for(const Tensor& out, const Tensor& q, const Tensor& cache_k,
                           const Tensor& cache_v, const Tensor& slot, const Tensor& length,
                           const DecodeDims& d) {
  if (sy::decode_attention_kernel() != DecodeAttentionKernel::kVector || q.dtype() != DType::kBF16 ||
      !aligned16({q.raw(), cache_k.raw(), cache_v.raw()})) {
    return false;
  }
  switch (d.hd) {
    case 8:
      launch_decode_vec_queries<1>(out, q, cache_k, cache_v, slot, length, d);
      return true;
    case 16:
      launch_decode_vec_queries<2>(out, q, cache_k, cache_v, slot, length, d);
      return true;
    case 32:
      launch_decode_vec_queries<4>(out, q, cache_k, cache_v, slot, length, d);
      return true;
    case 64:
      launch_decode_vec_queries<8>(out, q, cache_k, cache_v, slot, length, d);
      return true;
    case 128:
      launch_decode_vec_queries<16>(out, q, cache_k, cache_v, slot, length, d);
      return true;
    case 256:
      launch_decode_vec_queries<32>(out, q, cache_k, cache_v, slot, length, d);
      return true;
    default:
      return false;
  }
}

}  // namespace

void kv_cache_append(const Tensor& cache_k, const Tensor& cache_v, const Tensor& k,
                     const Tensor& v, const Tensor& slot, const Tensor& start,
                     const Tensor& count) {
  use_device(k);
  const int64_t width = k.dim(2) * k.dim(3);
  const size_t element = dtype_size(k.dtype());
  if ((width * element) % 16 == 0 &&
      aligned16({cache_k.raw(), cache_v.raw(), k.raw(), v.raw()})) {
    return launch_append<uint4>(cache_k, cache_v, k, v, slot, start, count,
                                width * static_cast<int64_t>(element) / 16);
  }
  if (element == 4) {
    return launch_append<uint32_t>(cache_k, cache_v, k, v, slot, start, count, width);
  }
  launch_append<uint16_t>(cache_k, cache_v, k, v, slot, start, count, width);
}

void decode_attention(const Tensor& out, const Tensor& q, const Tensor& cache_k,
                      const Tensor& cache_v, const Tensor& slot, const Tensor& length) {
  use_device(q);
  const int hd = static_cast<int>(q.dim(3));
  SY_CHECK(hd > 0 && hd <= 256) << "decode_attention on CUDA takes head dims up to 256, got " << hd;
  DecodeDims d{};
  d.tq = q.dim(1);
  d.heads = q.dim(2);
  d.kv_heads = cache_k.dim(2);
  d.capacity = cache_k.dim(1);
  d.hd = hd;
  d.group = static_cast<int>(d.heads / d.kv_heads);
  d.scale = 1.0f / sqrtf(static_cast<float>(hd));
  if (launch_decode_vec_for(out, q, cache_k, cache_v, slot, length, d)) return;
  dispatch_float(q.dtype(), "decode_attention", [&](auto tag) {
    using T = decltype(tag);
    switch ((hd + 31) / 32) {
      case 1:
        return launch_decode<T, 1, 8>(out, q, cache_k, cache_v, slot, length, d);
      case 2:
        return launch_decode<T, 2, 8>(out, q, cache_k, cache_v, slot, length, d);
      case 3:
        return launch_decode<T, 3, 4>(out, q, cache_k, cache_v, slot, length, d);
      case 4:
        return launch_decode<T, 4, 4>(out, q, cache_k, cache_v, slot, length, d);
      case 5:
        return launch_decode<T, 5, 2>(out, q, cache_k, cache_v, slot, length, d);
      case 6:
        return launch_decode<T, 6, 2>(out, q, cache_k, cache_v, slot, length, d);
      case 7:
        return launch_decode<T, 7, 2>(out, q, cache_k, cache_v, slot, length, d);
      default:
        return launch_decode<T, 8, 2>(out, q, cache_k, cache_v, slot, length, d);
    }
  });
}

}  // namespace sy::cuda
