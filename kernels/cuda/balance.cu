// The balancing terms' per-token work on the GPU (see kernels/balance.h). routing_stats runs
// one block per (sequence, expert) for the fixed-order block reduction in double of
// p = s / sum(s), and one more per sequence for an integer shared-memory histogram of the
// counts (integer atomics are exact) and the reduction of lse^2. The backwards are one thread
// per token row. No float atomics: bitwise identical run to run.
#include "kernels/balance.h"
#include "kernels/cuda/common.cuh"

namespace sy::cuda {
namespace {

constexpr int kStatsThreads = 256;

__device__ double row_lse(const float* row, int e) {
  float mx = row[0];
  for (int j = 1; j < e; ++j) mx = fmaxf(mx, row[j]);
  double sum = 0;
  for (int j = 0; j < e; ++j) sum += exp(static_cast<double>(row[j]) - mx);
  return mx + log(sum);
}

// Sum over the block in a fixed order: warp shuffles, then warp 0 adds the warp sums.
__device__ double block_sum_double(double v, double* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // shared may still be read by the previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : 0.0;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// rinv[r] = 1 / sum_e s[r, e] and lse2[r] = lse(logits[r])^2, one thread per row.
__global__ void routing_rows_kernel(double* rinv, double* lse2, const float* scores,
                                    const float* logits, int64_t n, int e) {
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < n;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double total = 0;
    for (int j = 0; j < e; ++j) total += scores[r * e + j];
    rinv[r] = 1.0 / total;
    const double lse = row_lse(logits + r * e, e);
    lse2[r] = lse * lse;
  }
}

// Block (b, j): sequence b's rows [b T, (b + 1) T); for j < e expert j's score sum, for j = e
// the counts (dynamic shared memory: E ints) and the lse^2 sum. One block per (sequence, column)
// instead of one per sequence walking the experts in turn: the same sums in the same order
// (so the same bits), over E + 1 times as many blocks.
__global__ void routing_stats_kernel(float* stats, const int32_t* indices, const float* scores,
                                     const double* rinv, const double* lse2, int64_t t_count, int k,
                                     int e) {
  extern __shared__ int counts[];
  __shared__ double partial[32];
  const int64_t b = blockIdx.x, first = b * t_count;
  const int j = static_cast<int>(blockIdx.y);
  float* out = stats + b * (2 * e + 1);
  if (j < e) {
    double acc = 0;
    for (int64_t t = threadIdx.x; t < t_count; t += blockDim.x)
      acc += scores[(first + t) * e + j] * rinv[first + t];
    acc = block_sum_double(acc, partial);
    if (threadIdx.x == 0) out[e + j] = static_cast<float>(acc);
    return;
  }
  for (int c = threadIdx.x; c < e; c += blockDim.x) counts[c] = 0;
  __syncthreads();
  for (int64_t s = threadIdx.x; s < t_count * k; s += blockDim.x)
    atomicAdd(&counts[indices[first * k + s]], 1);
  __syncthreads();
  for (int c = threadIdx.x; c < e; c += blockDim.x) out[c] = static_cast<float>(counts[c]);
  double z = 0;
  for (int64_t t = threadIdx.x; t < t_count; t += blockDim.x) z += lse2[first + t];
  z = block_sum_double(z, partial);
  if (threadIdx.x == 0) out[2 * e] = static_cast<float>(z);
}

__global__ void balance_backward_kernel(float* dscores, const float* scores, const float* dp,
                                        int64_t n, int64_t t_count, int e) {
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < n;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float* g = dp + (r / t_count) * e;
    const float* s = scores + r * e;
    double total = 0, dot = 0;
    for (int j = 0; j < e; ++j) total += s[j];
    for (int j = 0; j < e; ++j) dot += static_cast<double>(g[j]) * s[j] / total;
    for (int j = 0; j < e; ++j) dscores[r * e + j] += static_cast<float>((g[j] - dot) / total);
  }
}

__global__ void z_loss_backward_kernel(float* dlogits, const float* logits, float scale, int64_t n,
                                       int e) {
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < n;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float* row = logits + r * e;
    const double lse = row_lse(row, e);
    const double c = static_cast<double>(scale) * 2.0 * lse;
    for (int j = 0; j < e; ++j)
      dlogits[r * e + j] += static_cast<float>(c * exp(static_cast<double>(row[j]) - lse));
  }
}

}  // namespace

void routing_stats(const Tensor& stats, const Tensor& indices, const Tensor& scores,
                   const Tensor& logits) {
  const int64_t n = scores.dim(0), b_count = stats.dim(0);
  const int e = static_cast<int>(scores.dim(1)), k = static_cast<int>(indices.dim(1));
  use_device(stats);
  if (n == 0) {
    stats.zero_();
    return;
  }
  Scratch rinv(n * sizeof(double)), lse2(n * sizeof(double));
  routing_rows_kernel<<<grid_for(n), kThreads, 0, stream()>>>(
      rinv.as<double>(), lse2.as<double>(), ptr<float>(scores), ptr<float>(logits), n, e);
  launch_check("routing_rows_kernel");
  SY_CHECK(b_count <= kMaxRowBlocks) << "routing_stats over " << b_count << " sequences";
  SY_CHECK(e < 65535) << "routing_stats over " << e << " experts";
  const dim3 grid(static_cast<unsigned>(b_count), static_cast<unsigned>(e + 1));
  routing_stats_kernel<<<grid, kStatsThreads, e * sizeof(int), stream()>>>(
      ptr<float>(stats), ptr<int32_t>(indices), ptr<float>(scores), rinv.as<double>(),
      lse2.as<double>(), n / b_count, k, e);
  launch_check("routing_stats_kernel");
}

void balance_backward(const Tensor& dscores, const Tensor& scores, const Tensor& dp) {
  const int64_t n = scores.dim(0);
  if (n == 0) return;
  use_device(scores);
  balance_backward_kernel<<<grid_for(n), kThreads, 0, stream()>>>(
      ptr<float>(dscores), ptr<float>(scores), ptr<float>(dp), n, n / dp.dim(0),
      static_cast<int>(scores.dim(1)));
  launch_check("balance_backward_kernel");
}

void z_loss_backward(const Tensor& dlogits, const Tensor& logits, float scale) {
  const int64_t n = logits.dim(0);
  if (n == 0) return;
  use_device(logits);
  z_loss_backward_kernel<<<grid_for(n), kThreads, 0, stream()>>>(
      ptr<float>(dlogits), ptr<float>(logits), scale, n, static_cast<int>(logits.dim(1)));
  launch_check("z_loss_backward_kernel");
}

}  // namespace sy::cuda
