// Token sampling on the GPU (kernels/sampling.h), one block per row of f32 logits, no sort and
// nothing waiting for the host. The row is cut into kWarps contiguous chunks, one per warp,
// so that the inverse-CDF walk in ascending id order needs only each chunk's kept mass and one
// warp's walk through the chunk the draw lands in. Passes over the row:
//   1. z = logits / T, its max m and first argmax (greedy rows stop after the log-sum-exp);
//   2. (top-k only) a 4-digit radix select on the order-preserving key of z: the k-th largest
//      key tz and how many of the tokens equal to it are kept (the lowest ids);
//   3. (top-p only) a 3-digit radix select on the bits of e = exp(z - m) over fixed-point mass
//      histograms: the largest value te whose kept-and-above mass still reaches top_p of the
//      mass left after top-k and min-p, and how many of the tokens equal to te are kept;
//   4. per chunk: the mass and counts of the tokens strictly inside the cuts, and the tokens
//      at the two tie values, plus the whole row's mass for the log-prob;
//   5. one warp walks the chosen chunk 32 ids at a time (ballots give the tie ranks, a warp
//      scan the running mass) to the first id whose cumulative mass exceeds u * mass(K).
// The common RL case (temperature 1, no cuts) is passes 1 and 4 plus one chunk's walk.
// Every sum is a fixed-order tree, so a row draws the same token on every run; the chunk
// masses are summed in another order than the walk's scan, so when they disagree by rounding
// the walk takes the chunk's last kept token, as the CPU takes K's last id.
#include <climits>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/hash.h"
#include "kernels/sampling.h"

namespace sy::cuda {
namespace {

constexpr int kSampleThreads = 512;
constexpr int kWarps = kSampleThreads / 32;

// Orders floats as unsigned integers (larger float, larger key); -0 is folded into +0 first.
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t b = __float_as_uint(f + 0.0f);
  return b ^ ((b >> 31) ? 0xffffffffu : 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float(key ^ ((key >> 31) ? 0x80000000u : 0xffffffffu));
}

__device__ __forceinline__ int warp_sum_int(int v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// What the row's cuts decided, shared by the block.
struct Cuts {
  float m;           // max z
  int argmax;        // first id of the max
  bool greedy;
  float inv_t;       // unused when greedy
  float temperature;
  bool has_topk;
  uint32_t tz;       // key of the k-th largest z (0: no top-k, below every key)
  int need_z;        // tokens with key == tz that top-k keeps, lowest ids first
  float e_tz;        // exp(z(tz) - m)
  float min_p;
  float te;          // top-p's tie value (0 without top-p)
  int64_t n_e;       // tokens with e == te (among the ones left) that top-p keeps
};

struct ChunkStats {
  float mass_in[kWarps];  // sum of e over tokens with key > tz, e >= min_p, e > te
  int count_in[kWarps];   // their number
  int ties_e[kWarps];     // tokens with key > tz, e >= min_p, e == te
  int ties_z[kWarps];     // tokens with key == tz (top-k only)
  float mass[kWarps];     // the kept mass of each chunk
  int64_t rank_z[kWarps], rank_e[kWarps];  // tie ranks at each chunk's start
};

__device__ __forceinline__ float z_of(const float* x, int64_t j, const Cuts& c) {
  return c.greedy ? x[j] : x[j] / c.temperature;
}

// Block-wide (max, first argmax); every thread gets the result. shared_v / shared_i: 32 each.
__device__ void block_argmax(float& v, int& i, float* shared_v, int* shared_i) {
  const auto better = [](float v2, int i2, float v1, int i1) {
    return i2 >= 0 && (i1 < 0 || v2 > v1 || (v2 == v1 && i2 < i1));
  };
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, i, o);
    if (better(v2, i2, v, i)) v = v2, i = i2;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared_v[warp] = v, shared_i[warp] = i;
  __syncthreads();
  v = lane < kWarps ? shared_v[lane] : -INFINITY;
  i = lane < kWarps ? shared_i[lane] : -1;
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, i, o);
    if (better(v2, i2, v, i)) v = v2, i = i2;
  }
}

// The k-th largest key of z over the row, and how many tokens equal to it are within the top k.
__device__ void radix_select(const float* x, int64_t vocab, const Cuts& c, int k, uint32_t& tz,
                             int& need, int* hist, uint32_t* shared_prefix, int* shared_left) {
  uint32_t prefix = 0, mask = 0;
  int left = k;  // the rank still wanted among the keys matching prefix
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const uint32_t key = order_key(z_of(x, j, c));
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1);
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l holds digits 255 - 8l down to 248 - 8l: a scan over lanes from the top digit.
      const int lane = threadIdx.x;
      int mine = 0;
      for (int d = 0; d < 8; ++d) mine += hist[255 - 8 * lane - d];
      int above = mine;  // inclusive scan from lane 0 (the top digits)
      for (int o = 1; o < 32; o <<= 1) {
        const int n = __shfl_up_sync(0xffffffffu, above, o);
        if (lane >= o) above += n;
      }
      const int before = above - mine;
      const unsigned hit = __ballot_sync(0xffffffffu, before < left && above >= left);
      const int src = __ffs(hit) - 1;
      if (lane == src) {
        int acc = before;
        for (int d = 0; d < 8; ++d) {
          const int digit = 255 - 8 * lane - d;
          if (acc + hist[digit] >= left) {
            *shared_prefix = prefix | (static_cast<uint32_t>(digit) << shift);
            *shared_left = left - acc;
            break;
          }
          acc += hist[digit];
        }
      }
    }
    __syncthreads();
    prefix = *shared_prefix;
    left = *shared_left;
    mask |= 255u << shift;
    __syncthreads();
  }
  tz = prefix;
  need = left;
}

// Whether a token passes top-k strictly (key above tz) and min-p.
__device__ __forceinline__ bool above_z(uint32_t key, const Cuts& c) { return key > c.tz; }

// Top-p's cut as a radix select on the bits of e = exp(z - m) (positive floats order as their
// bits), three digits of 11, 11 and 10 bits from the top: each pass histograms the mass of the
// tokens left after top-k and min-p whose bits match the digits chosen so far, and keeps the
// digit at which the mass from the top first reaches top_p of what is left. Masses are summed
// as 40-bit fixed point in 64-bit integers, so the sums do not depend on the order of the
// atomics (a row draws the same token on every run); a token below 2^-40 of the max adds 0,
// at most 1.4e-7 of the mass over a 152k vocabulary. Sets c.te, the largest e whose mass at
// or above it reaches the target, and c.n_e, how many of the tokens equal to te are kept.
constexpr int kMassShift = 40;
constexpr int kTopPBins = 2048;

struct TopPShared {
  unsigned long long hist[kTopPBins];
  unsigned long long warp_total[kWarps];
  unsigned long long target;
  unsigned long long above;  // mass strictly above the digits chosen so far
  uint32_t prefix;
  int found;
};

__device__ __forceinline__ unsigned long long fixed_mass(float e) {
  return __float2ull_rz(e * static_cast<float>(1ull << kMassShift));  // e <= 1: exact scale
}

// Inclusive scan of v over the block's threads in thread order; every thread gets its own
// prefix. Uses s.warp_total.
__device__ unsigned long long block_scan_inclusive(unsigned long long v, TopPShared& s) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long n = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += n;
  }
  if (lane == 31) s.warp_total[warp] = v;
  __syncthreads();
  for (int w = 0; w < warp; ++w) v += s.warp_total[w];
  __syncthreads();
  return v;
}

__device__ void top_p_select(const float* x, int64_t vocab, Cuts& c, float p, TopPShared& s) {
  constexpr int kShift[3] = {21, 10, 0};
  constexpr int kBits[3] = {11, 11, 10};
  uint32_t prefix = 0, mask = 0;
  unsigned long long above = 0, target = 0;
  const bool z_left = c.has_topk && c.e_tz >= c.min_p;
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = kShift[pass], bins = 1 << kBits[pass];
    for (int b = threadIdx.x; b < bins; b += blockDim.x) s.hist[b] = 0;
    if (threadIdx.x == 0) s.found = 0;
    __syncthreads();
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const float z = z_of(x, j, c);
      const float e = expf(z - c.m);
      const uint32_t bits = __float_as_uint(e);
      if (above_z(order_key(z), c) && e >= c.min_p && (bits & mask) == prefix) {
        atomicAdd(&s.hist[(bits >> shift) & (bins - 1)], fixed_mass(e));
      }
    }
    if (threadIdx.x == 0 && z_left) {
      // The tokens at top-k's tie value that top-k keeps: all the same e, so only their count
      // matters here, not which ids they are.
      const uint32_t bits = __float_as_uint(c.e_tz);
      if ((bits & mask) == prefix) {
        atomicAdd(&s.hist[(bits >> shift) & (bins - 1)],
                  static_cast<unsigned long long>(c.need_z) * fixed_mass(c.e_tz));
      }
    }
    __syncthreads();
    // Thread t owns `per` consecutive digits from the top: a scan in thread order is a scan
    // from the largest e down.
    const int per = bins / static_cast<int>(blockDim.x);
    const int top = bins - 1 - static_cast<int>(threadIdx.x) * per;
    unsigned long long mine = 0;
    for (int d = 0; d < per; ++d) mine += s.hist[top - d];
    const unsigned long long inclusive = block_scan_inclusive(mine, s);
    if (pass == 0) {
      // The mass left after top-k and min-p is the whole first histogram. Never a target of
      // 0: the cut must land on a digit that holds a token.
      if (threadIdx.x == blockDim.x - 1) {
        s.target = max(1ull, static_cast<unsigned long long>(
                                 ceil(static_cast<double>(p) * static_cast<double>(inclusive))));
      }
      __syncthreads();
      target = s.target;
    }
    const unsigned long long before = above + inclusive - mine;
    if (before < target && before + mine >= target) {
      unsigned long long acc = before;
      for (int d = 0; d < per; ++d) {
        const unsigned long long h = s.hist[top - d];
        if (acc + h >= target) {
          s.prefix = prefix | (static_cast<uint32_t>(top - d) << shift);
          s.above = acc;
          s.found = 1;
          break;
        }
        acc += h;
      }
    }
    __syncthreads();
    if (!s.found) return;  // cannot happen (the target is within the mass); no top-p cut then
    prefix = s.prefix;
    above = s.above;
    mask |= static_cast<uint32_t>(bins - 1) << shift;
    __syncthreads();
  }
  c.te = __uint_as_float(prefix);
  // The ties at te taken, lowest ids first, until the mass reaches the target; the last digit's
  // bin held mass, so te's fixed mass is positive.
  const unsigned long long unit = fixed_mass(c.te);
  c.n_e = unit == 0 ? INT64_MAX : static_cast<int64_t>((target - above + unit - 1) / unit);
}

__global__ void __launch_bounds__(kSampleThreads)
    sample_tokens_kernel(int32_t* token, float* logprob, const float* logits, int64_t vocab,
                         const float* temperature, const float* top_p, const float* min_p,
                         const int32_t* top_k, const int64_t* seed, const int64_t* row_id,
                         const int32_t* position, const int32_t* active) {
  const int64_t row = blockIdx.x;
  if (active[row] == 0) return;
  __shared__ float shared_f[32];
  __shared__ int shared_i[32];
  __shared__ int hist[256];
  __shared__ uint32_t shared_prefix;
  __shared__ int shared_left;
  __shared__ ChunkStats stats;
  __shared__ TopPShared top_p_shared;
  __shared__ int walk_chunk;
  __shared__ float walk_target;
  __shared__ float row_total;
  const float* x = logits + row * vocab;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  Cuts c;
  c.temperature = temperature[row];
  c.greedy = !(c.temperature > 0.0f);
  // Pass 1: the max and its first id.
  float best = -INFINITY;
  int best_id = -1;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float z = z_of(x, j, c);
    if (best_id < 0 || z > best) best = z, best_id = static_cast<int>(j);
  }
  block_argmax(best, best_id, shared_f, shared_i);
  c.m = best;
  c.argmax = best_id;

  if (c.greedy) {
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(x[j] - c.m);
    s = block_sum(s, shared_f);
    if (threadIdx.x == 0) {
      token[row] = c.argmax;
      logprob[row] = -logf(s);
    }
    return;
  }

  const int k = top_k[row];
  c.has_topk = k > 0 && k < vocab;
  c.tz = 0;
  c.need_z = 0;
  c.e_tz = 0.0f;
  c.min_p = min_p[row];
  if (c.has_topk) {
    radix_select(x, vocab, c, k, c.tz, c.need_z, hist, &shared_prefix, &shared_left);
    c.e_tz = expf(key_value(c.tz) - c.m);
  }
  const float p = top_p[row];
  c.te = 0.0f;
  c.n_e = INT64_MAX;
  if (p < 1.0f) top_p_select(x, vocab, c, p, top_p_shared);

  // Pass 4: each warp's chunk.
  const int64_t chunk = ((vocab + kWarps - 1) / kWarps + 31) / 32 * 32;
  const int64_t begin = warp * chunk, end = min(vocab, begin + chunk);
  {
    float mass_in = 0.0f, total = 0.0f;
    int count_in = 0, ties_e = 0, ties_z = 0;
    for (int64_t j = begin + lane; j < end; j += 32) {
      const float z = z_of(x, j, c);
      const float e = expf(z - c.m);
      const uint32_t key = order_key(z);
      total += e;
      if (above_z(key, c) && e >= c.min_p) {
        if (e > c.te) {
          mass_in += e;
          ++count_in;
        } else if (e == c.te) {
          ++ties_e;
        }
      }
      ties_z += c.has_topk && key == c.tz;
    }
    mass_in = warp_sum(mass_in);
    count_in = warp_sum_int(count_in);
    ties_e = warp_sum_int(ties_e);
    ties_z = warp_sum_int(ties_z);
    if (lane == 0) {
      stats.mass_in[warp] = mass_in;
      stats.count_in[warp] = count_in;
      stats.ties_e[warp] = ties_e;
      stats.ties_z[warp] = ties_z;
    }
    total = block_sum(total, shared_f);  // syncs, so stats are visible after it
    if (threadIdx.x == 0) {
      // Tie ranks and kept mass chunk by chunk, in id order.
      const bool z_left = c.has_topk && c.e_tz >= c.min_p;
      int64_t rank_z = 0, rank_e = 0;
      float kept_mass = 0.0f;
      int kept_any[kWarps];
      for (int w = 0; w < kWarps; ++w) {
        stats.rank_z[w] = rank_z;
        stats.rank_e[w] = rank_e;
        const int64_t kept_z =
            max(0LL, min(static_cast<long long>(stats.ties_z[w]),
                         static_cast<long long>(c.need_z - rank_z)));
        rank_z += stats.ties_z[w];
        const int64_t group_e = stats.ties_e[w] + (z_left && c.e_tz == c.te ? kept_z : 0);
        const int64_t kept_e = c.n_e == INT64_MAX
                                   ? group_e
                                   : max(0LL, min(static_cast<long long>(group_e),
                                                  static_cast<long long>(c.n_e - rank_e)));
        rank_e += group_e;
        const int64_t kept_z_in = z_left && c.e_tz > c.te ? kept_z : 0;
        stats.mass[w] = stats.mass_in[w] + kept_z_in * c.e_tz + kept_e * c.te;
        kept_any[w] = stats.count_in[w] + kept_z_in + kept_e > 0;
        kept_mass += stats.mass[w];
      }
      const double u = sampling_uniform_bits(static_cast<uint64_t>(seed[row]),
                                             static_cast<uint64_t>(row_id[row]),
                                             static_cast<uint64_t>(position[row]));
      const float target = static_cast<float>(u * kept_mass);
      float cumulative = 0.0f;
      int chosen = -1, last = 0;
      for (int w = 0; w < kWarps; ++w) {
        if (!kept_any[w]) continue;
        last = w;
        if (chosen < 0 && cumulative + stats.mass[w] > target) {
          chosen = w;
          walk_target = target - cumulative;
        }
        cumulative += stats.mass[w];
      }
      if (chosen < 0) {
        chosen = last;
        walk_target = INFINITY;  // rounding left none: K's last id
      }
      walk_chunk = chosen;
      row_total = total;
    }
    __syncthreads();
  }
  const float total = row_total;
  if (warp != walk_chunk) return;

  // Pass 5: the chosen warp walks its chunk in id order.
  const unsigned lower = (1u << lane) - 1u;
  int64_t rank_z = stats.rank_z[warp], rank_e = stats.rank_e[warp];
  float carry = 0.0f;
  const float target = walk_target;
  int64_t found = -1, last_kept = -1;
  for (int64_t base = begin; base < end; base += 32) {
    const int64_t j = base + lane;
    const bool valid = j < end;
    const float z = valid ? z_of(x, j, c) : -INFINITY;
    const float e = valid ? expf(z - c.m) : 0.0f;
    const uint32_t key = order_key(z);
    const unsigned tie_z = __ballot_sync(0xffffffffu, valid && c.has_topk && key == c.tz);
    const int64_t my_rank_z = rank_z + __popc(tie_z & lower);
    rank_z += __popc(tie_z);
    const bool topk = valid && (above_z(key, c) || (((tie_z >> lane) & 1u) && my_rank_z < c.need_z));
    const bool left = topk && e >= c.min_p;
    const unsigned tie_e = __ballot_sync(0xffffffffu, left && e == c.te);
    const int64_t my_rank_e = rank_e + __popc(tie_e & lower);
    rank_e += __popc(tie_e);
    const bool kept = left && (e > c.te || (e == c.te && my_rank_e < c.n_e));
    float scan = kept ? e : 0.0f;
    for (int o = 1; o < 32; o <<= 1) {
      const float n = __shfl_up_sync(0xffffffffu, scan, o);
      if (lane >= o) scan += n;
    }
    const unsigned cross = __ballot_sync(0xffffffffu, kept && carry + scan > target);
    if (cross) {
      found = base + __ffs(cross) - 1;
      break;
    }
    const unsigned kept_bits = __ballot_sync(0xffffffffu, kept);
    if (kept_bits) last_kept = base + 31 - __clz(kept_bits);
    carry += __shfl_sync(0xffffffffu, scan, 31);
  }
  if (lane == 0) {
    // A chunk chosen for its kept tokens has one, so the argmax fallback is never taken.
    const int64_t t = found >= 0 ? found : last_kept >= 0 ? last_kept : c.argmax;
    token[row] = static_cast<int32_t>(t);
    logprob[row] = (z_of(x, t, c) - c.m) - logf(total);
  }
}

}  // namespace

void sample_tokens(const Tensor& token, const Tensor& logprob, const Tensor& logits,
                   const SamplingParams& params) {
  use_device(logits);
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  SY_CHECK(rows <= kMaxRowBlocks) << "sample_tokens: " << rows << " rows exceed one grid";
  sample_tokens_kernel<<<static_cast<unsigned>(rows), kSampleThreads, 0, stream()>>>(
      token.data<int32_t>(), logprob.data<float>(), logits.data<float>(), vocab,
      params.temperature.data<float>(), params.top_p.data<float>(), params.min_p.data<float>(),
      params.top_k.data<int32_t>(), params.seed.data<int64_t>(), params.row_id.data<int64_t>(),
      params.position.data<int32_t>(), params.active.data<int32_t>());
  launch_check("sample_tokens_kernel");
}

}  // namespace sy::cuda
