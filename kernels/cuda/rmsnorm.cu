// RMSNorm on the GPU: y = x * rstd * weight per row of D, rstd = 1 / sqrt(mean(x^2) + eps).
// x, y, dy, dx are f32 or bf16 (one type per call); weight, dweight and rstd are f32, and
// every sum accumulates in fp32. With r = rstd and s = sum_j dy_j w_j x_j the backward is
//   dx_j = r (dy_j w_j - x_j r^2 s / D)   (written),   dweight_j += sum_rows dy_j x_j r.
// With a residual, its element is added to dx_j in fp32 before dx_j's one rounding. The
// forward with a residual first forms h = x + residual per element (fp32, rounded to T),
// writes it to `sum` and normalizes h: the values an add kernel and then the norm give.
//
// The op moves a few bytes per flop, so it runs at the speed its rows cross memory. Where D
// is a whole number of 16-byte vectors (8 bf16 or 4 f32) and x, y, dy, dx and weight are
// 16-byte aligned, the vector kernels give each row to a group of G warps (G = 1 up to 2048
// columns of bf16, 1024 of f32; G = 2, 4, 8 for wider rows, at most 16384 bf16 / 8192 f32).
// Each thread of the group holds at most kMaxVectors 16-byte vectors of the row in
// registers, so the row is read once: the sum of squares (or s) and the write use the same
// registers. With G = 1 a block holds 8 warps, each on its own rows (K = 8 / V of them at
// once where V < 8, so that a warp on short rows has as many bytes in flight as on the
// widest), and a row's sum is a warp shuffle; with G > 1 a block is one group and the sum
// goes through shared memory. Other widths and alignments take the generic kernels: one
// block per row, one element per thread.
//
// The weight gradient is summed without atomics, so it is the same on every run: each
// block of the backward owns a fixed set of rows (a fixed stride over them per group; a
// chunk of rows in the generic kernel) and writes its column sums to row b of a scratch; a second
// kernel adds the scratch rows, in a fixed order, into dweight. In the vector kernel each
// thread accumulates its columns in registers over its rows, and the warps of a G = 1 block
// add theirs in warp order in shared memory before the block's row is written.
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/rmsnorm.h"

namespace sy::cuda {
namespace {

// x + residual rounded to T: the residual stream's add.
template <typename T>
__device__ __forceinline__ T residual_sum(T x, T residual) {
  return from_f32<T>(to_f32(x) + to_f32(residual));
}

// With residual (and sum): h = x + residual is written to sum in the first pass over the row
// and the second pass reads it back (the same thread's elements).
template <typename T>
__global__ void rmsnorm_forward_kernel(T* y, float* rstd, const T* x, const float* weight,
                                       const T* residual, T* sum, int64_t n, int64_t d,
                                       float eps) {
  __shared__ float shared[32];
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    float ss = 0.0f;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      T h = x[row * d + j];
      if (residual) {
        h = residual_sum(h, residual[row * d + j]);
        sum[row * d + j] = h;
      }
      const float v = to_f32(h);
      ss += v * v;
    }
    const T* xr = (residual ? sum : x) + row * d;
    ss = block_sum(ss, shared);
    const float r = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
    T* yr = y + row * d;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      yr[j] = from_f32<T>(to_f32(xr[j]) * r * weight[j]);
    }
    if (threadIdx.x == 0) rstd[row] = r;
  }
}

// Block b handles rows [b * chunk, min(n, (b + 1) * chunk)) and writes its dweight column
// sums to partial[b, :].
template <typename T>
__global__ void rmsnorm_backward_kernel(T* dx, float* partial, const T* dy, const T* x,
                                        const float* weight, const float* rstd,
                                        const T* residual, int64_t n, int64_t d, int64_t chunk) {
  __shared__ float shared[32];
  const int64_t begin = blockIdx.x * chunk, end = min(n, begin + chunk);
  float* part = partial + blockIdx.x * d;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) part[j] = 0.0f;
  for (int64_t row = begin; row < end; ++row) {
    const T* xr = x + row * d;
    const T* dyr = dy + row * d;
    const float r = rstd[row];
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const float xj = to_f32(xr[j]), dyj = to_f32(dyr[j]);
      s += dyj * weight[j] * xj;
      part[j] += dyj * xj * r;  // column j belongs to this thread: no race
    }
    s = block_sum(s, shared);
    const float c = s / static_cast<float>(d) * r * r;
    T* dxr = dx + row * d;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      float v = r * (to_f32(dyr[j]) * weight[j] - to_f32(xr[j]) * c);
      if (residual) v += to_f32(residual[row * d + j]);  // read before written: may be dx
      dxr[j] = from_f32<T>(v);
    }
  }
}

// Threads per row: a warp multiple covering D, at most 1024 (more columns are strided).
int row_threads(int64_t d) {
  return static_cast<int>(std::clamp<int64_t>((d + 31) / 32 * 32, 32, 1024));
}

// The vector kernels. A row of D / W vectors goes to a group of G warps; thread t of the
// group holds vectors t, t + 32 G, ..., V of them (the last ones past the row's end are
// skipped, so one V serves every width up to V * 32 G vectors).
constexpr int kMaxVectors = 8;  // per thread and tensor: 32 registers per tensor
constexpr int kMaxGroupWarps = 8;
constexpr int kGroupsPerBlock = 8;  // with G = 1: a block of 8 warps, each on its own rows

// Rows a group works on at once: a warp whose rows are short takes up to kMaxVectors / V
// of them together, so that it has as many bytes in flight as on one of the widest rows;
// one short row's loads alone would leave the warp waiting on memory most of the time.
constexpr int rows_at_once(int v, int g) { return g == 1 ? std::max(1, kMaxVectors / v) : 1; }

// A hint that the line holding p will be loaded soon: L2 fetches it (no register, no result).
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

__device__ __forceinline__ uint4 load_vector(const void* p) {
  return *reinterpret_cast<const uint4*>(p);
}
__device__ __forceinline__ void store_vector(void* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }

// The W weights of vector c, in W / 4 16-byte loads (weight is 16-byte aligned). Through
// the read-only path: no kernel writes weight, so these loads may move ahead of the stores
// of the row before them.
template <int W>
__device__ __forceinline__ void load_weights(float (&w)[W], const float* weight, int c) {
#pragma unroll
  for (int q = 0; q < W / 4; ++q) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(weight + c * W + 4 * q));
    w[4 * q] = v.x;
    w[4 * q + 1] = v.y;
    w[4 * q + 2] = v.z;
    w[4 * q + 3] = v.w;
  }
}

// Sum over the threads of one row's group: a warp shuffle for G = 1, the block otherwise
// (the block is then the group). Every thread of the group gets the same value.
template <int G>
__device__ __forceinline__ float row_sum(float v, float* shared) {
  if constexpr (G == 1) {
    return warp_sum(v);
  } else {
    return block_sum(v, shared);
  }
}

// Group g of block b handles K = rows_at_once(V, G) rows from (b * groups + g) * K, then
// the K from there plus grid * groups * K, and so on.
template <typename T, int V, int G>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_forward_vec_kernel(T* y, float* rstd, const T* x, const float* weight,
                               const T* residual, T* sum, int64_t n, int64_t d, float eps) {
  constexpr int W = Vec<T>::kWidth, kGroupThreads = 32 * G, K = rows_at_once(V, G);
  __shared__ float shared[32];
  const int t = threadIdx.x % kGroupThreads;
  const int groups = blockDim.x / kGroupThreads;  // 1 when G > 1: block_sum needs the block
  const int dv = static_cast<int>(d / W);
  for (int64_t row0 = (static_cast<int64_t>(blockIdx.x) * groups + threadIdx.x / kGroupThreads) * K;
       row0 < n; row0 += static_cast<int64_t>(gridDim.x) * groups * K) {
    // Rows past n load as zeros and are not written.
    Vec<T> v[K][V];
#pragma unroll
    for (int i = 0; i < K; ++i) {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int c = k * kGroupThreads + t;
        v[i][k].raw = row0 + i < n && c < dv ? load_vector(x + (row0 + i) * d + c * W)
                                             : make_uint4(0, 0, 0, 0);
      }
    }
    if (residual) {  // h = x + residual, stored to sum, normalized below
#pragma unroll
      for (int i = 0; i < K; ++i) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const int c = k * kGroupThreads + t;
          if (row0 + i < n && c < dv) {
            Vec<T> b;
            b.raw = load_vector(residual + (row0 + i) * d + c * W);
#pragma unroll
            for (int e = 0; e < W; ++e) v[i][k].x[e] = residual_sum(v[i][k].x[e], b.x[e]);
            store_vector(sum + (row0 + i) * d + c * W, v[i][k].raw);
          }
        }
      }
    }
    float ss[K];
#pragma unroll
    for (int i = 0; i < K; ++i) {
      ss[i] = 0.0f;
#pragma unroll
      for (int k = 0; k < V; ++k) {
#pragma unroll
        for (int e = 0; e < W; ++e) {
          const float f = to_f32(v[i][k].x[e]);
          ss[i] += f * f;
        }
      }
      ss[i] = row_sum<G>(ss[i], shared);
    }
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int64_t row = row0 + i;
      if (row >= n) break;
      const float r = 1.0f / sqrtf(ss[i] / static_cast<float>(d) + eps);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int c = k * kGroupThreads + t;
        if (c < dv) {
          float w[W];
          load_weights(w, weight, c);
          Vec<T> o;
#pragma unroll
          for (int e = 0; e < W; ++e) o.x[e] = from_f32<T>(to_f32(v[i][k].x[e]) * r * w[e]);
          store_vector(y + row * d + c * W, o.raw);
        }
      }
      if (t == 0) rstd[row] = r;
    }
  }
}

// Where x, dy and the column sums of K rows fit in 96 registers a thread, two blocks share a
// multiprocessor (the compiler keeps to 128 registers); a block of the widest rows has one.
template <int V, int K, int W>
constexpr int backward_min_blocks() {
  return V * W + 2 * K * V * 4 <= 96 ? 2 : 1;
}

// Group g of block b handles K = rows_at_once(V, G) rows from (b * groups + g) * K, then
// the K from there plus grid * groups * K, and so on; the block writes the column sums of
// all its rows to partial[b, :].
template <typename T, int V, int G>
__global__ void __launch_bounds__(kThreads,
                                  backward_min_blocks<V, rows_at_once(V, G), Vec<T>::kWidth>())
    rmsnorm_backward_vec_kernel(T* dx, float* partial, const T* dy, const T* x, const float* weight,
                                const float* rstd, const T* residual, int64_t n, int64_t d) {
  constexpr int W = Vec<T>::kWidth, kGroupThreads = 32 * G, K = rows_at_once(V, G);
  __shared__ float shared[32];
  // The warps' column sums, added in warp order (G = 1 only: with G > 1 a thread's columns
  // are its own in the whole block).
  __shared__ float combined[G == 1 ? V * 32 * W : 1];
  const int t = threadIdx.x % kGroupThreads, group = threadIdx.x / kGroupThreads;
  const int groups = blockDim.x / kGroupThreads;
  const int dv = static_cast<int>(d / W);
  float acc[V][W];
#pragma unroll
  for (int k = 0; k < V; ++k) {
#pragma unroll
    for (int e = 0; e < W; ++e) acc[k][e] = 0.0f;
  }
  for (int64_t row0 = (static_cast<int64_t>(blockIdx.x) * groups + group) * K; row0 < n;
       row0 += static_cast<int64_t>(gridDim.x) * groups * K) {
    // Rows past n load as zeros: they add nothing to s or to the column sums.
    Vec<T> xv[K][V], dyv[K][V];
    float r[K];
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int64_t row = row0 + i;
      r[i] = row < n ? rstd[row] : 0.0f;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int c = k * kGroupThreads + t;
        const bool in = row < n && c < dv;
        xv[i][k].raw = in ? load_vector(x + row * d + c * W) : make_uint4(0, 0, 0, 0);
        dyv[i][k].raw = in ? load_vector(dy + row * d + c * W) : make_uint4(0, 0, 0, 0);
      }
    }
    // The residual is read only after the rows' sums (registers are short): ask L2 for its
    // lines now, so that their latency passes during the reduction instead of after it.
    if (residual) {
#pragma unroll
      for (int i = 0; i < K; ++i) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const int c = k * kGroupThreads + t;
          if (row0 + i < n && c < dv) prefetch_l2(residual + (row0 + i) * d + c * W);
        }
      }
    }
    float s[K];
#pragma unroll
    for (int i = 0; i < K; ++i) s[i] = 0.0f;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int c = k * kGroupThreads + t;
      if (c < dv) {
        float w[W];
        load_weights(w, weight, c);
#pragma unroll
        for (int i = 0; i < K; ++i) {
#pragma unroll
          for (int e = 0; e < W; ++e) {
            const float xe = to_f32(xv[i][k].x[e]), dye = to_f32(dyv[i][k].x[e]);
            s[i] += dye * w[e] * xe;
            acc[k][e] += dye * xe * r[i];
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < K; ++i) s[i] = row_sum<G>(s[i], shared);
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int64_t row = row0 + i;
      if (row >= n) break;
      const float cr = s[i] / static_cast<float>(d) * r[i] * r[i];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int c = k * kGroupThreads + t;
        if (c < dv) {
          float w[W];
          load_weights(w, weight, c);
          // The residual's vector, read before dx's is written (it may be dx).
          Vec<T> res;
          if (residual) res.raw = load_vector(residual + row * d + c * W);
          Vec<T> o;
#pragma unroll
          for (int e = 0; e < W; ++e) {
            float v = r[i] * (to_f32(dyv[i][k].x[e]) * w[e] - to_f32(xv[i][k].x[e]) * cr);
            if (residual) v += to_f32(res.x[e]);
            o.x[e] = from_f32<T>(v);
          }
          store_vector(dx + row * d + c * W, o.raw);
        }
      }
    }
  }

  float* part = partial + static_cast<int64_t>(blockIdx.x) * d;
  if constexpr (G == 1) {
    for (int g = 0; g < groups; ++g) {
      if (group == g) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const int c = k * kGroupThreads + t;
          if (c < dv) {
#pragma unroll
            for (int e = 0; e < W; ++e) {
              float& slot = combined[c * W + e];
              slot = g == 0 ? acc[k][e] : slot + acc[k][e];
            }
          }
        }
      }
      __syncthreads();
    }
    for (int j = threadIdx.x; j < d; j += blockDim.x) part[j] = combined[j];
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int c = k * kGroupThreads + t;
      if (c < dv) {
#pragma unroll
        for (int e = 0; e < W; ++e) part[c * W + e] = acc[k][e];
      }
    }
  }
}

// The vector kernels' shape for a row of dv vectors: G warps per row, V vectors per thread.
struct RowLayout {
  int warps = 0;  // G; 0 when the row is too wide for the vector kernels
  int vectors = 0;
};

RowLayout row_layout(int64_t dv) {
  for (int g = 1; g <= kMaxGroupWarps; g *= 2) {
    const int64_t per_thread = (dv + 32 * g - 1) / (32 * g);
    // G > 1 only where G / 2 warps would need more than kMaxVectors a thread, so a thread
    // needs more than half of kMaxVectors: one V = kMaxVectors serves them all.
    if (per_thread <= kMaxVectors) return {g, g == 1 ? static_cast<int>(per_thread) : kMaxVectors};
  }
  return {};
}

// Calls f(V, G) as std::integral_constants for a layout row_layout returned.
template <typename F>
void dispatch_layout(RowLayout layout, F&& f) {
  using std::integral_constant;
  switch (layout.warps) {
    case 1:
      switch (layout.vectors) {
        case 1:
          return f(integral_constant<int, 1>{}, integral_constant<int, 1>{});
        case 2:
          return f(integral_constant<int, 2>{}, integral_constant<int, 1>{});
        case 3:
          return f(integral_constant<int, 3>{}, integral_constant<int, 1>{});
        case 4:
          return f(integral_constant<int, 4>{}, integral_constant<int, 1>{});
        case 5:
          return f(integral_constant<int, 5>{}, integral_constant<int, 1>{});
        case 6:
          return f(integral_constant<int, 6>{}, integral_constant<int, 1>{});
        case 7:
          return f(integral_constant<int, 7>{}, integral_constant<int, 1>{});
        case 8:
          return f(integral_constant<int, 8>{}, integral_constant<int, 1>{});
      }
      break;
    case 2:
      return f(integral_constant<int, kMaxVectors>{}, integral_constant<int, 2>{});
    case 4:
      return f(integral_constant<int, kMaxVectors>{}, integral_constant<int, 4>{});
    case 8:
      return f(integral_constant<int, kMaxVectors>{}, integral_constant<int, 8>{});
  }
  SY_CHECK(false) << "no RMSNorm vector kernel for " << layout.warps << " warps x "
                  << layout.vectors << " vectors";
}

// Groups in a block of the vector kernels: 8 warps with G = 1, one group of G otherwise.
int groups_per_block(int warps) { return warps == 1 ? kGroupsPerBlock : 1; }

// Partial-row blocks of kPartialGroups x 32 threads: thread (g, j) adds, in order, the
// partial rows g, g + kPartialGroups, ... of column j, then the first row of threads adds
// the kPartialGroups sums in order and accumulates them into dweight. A fixed tree, so the
// same on every run; columns are read 32 at a time, coalesced, by many warps at once.
constexpr int kPartialGroups = 16;

__global__ void add_partials_kernel(float* dweight, const float* partial, int64_t rows, int64_t d) {
  __shared__ float sums[kPartialGroups][32];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  float sum = 0.0f;
  if (j < d) {
    // Unrolled so that eight loads are in flight at once; the adds stay in row order.
#pragma unroll 8
    for (int64_t b = threadIdx.y; b < rows; b += kPartialGroups) sum += partial[b * d + j];
  }
  sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && j < d) {
    float total = 0.0f;
#pragma unroll
    for (int g = 0; g < kPartialGroups; ++g) total += sums[g][threadIdx.x];
    dweight[j] += total;
  }
}

void add_partials(const Tensor& dweight, const float* partial, int64_t rows, int64_t d) {
  const auto blocks = static_cast<unsigned>((d + 31) / 32);
  add_partials_kernel<<<blocks, dim3(32, kPartialGroups), 0, stream()>>>(ptr<float>(dweight),
                                                                         partial, rows, d);
  launch_check("add_partials_kernel");
}

}  // namespace

void rmsnorm_forward(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     float eps, const Tensor& residual, const Tensor& sum) {
  const int64_t d = x.dim(-1), n = rstd.numel();
  if (n == 0) return;
  use_device(x);
  dispatch_float(x.dtype(), "rmsnorm x", [&](auto tag) {
    using T = decltype(tag);
    const RowLayout layout = row_layout(d / Vec<T>::kWidth);
    const T* res = residual.defined() ? ptr<T>(residual) : nullptr;
    T* h = sum.defined() ? ptr<T>(sum) : nullptr;
    if (layout.warps && vectorizable<T>(d, {y.raw(), x.raw(), weight.raw(), res, h})) {
      dispatch_layout(layout, [&](auto v, auto g) {
        constexpr int V = decltype(v)::value, G = decltype(g)::value;
        const int groups = groups_per_block(G), rows_per_block = groups * rows_at_once(V, G);
        rmsnorm_forward_vec_kernel<T, V, G>
            <<<row_grid((n + rows_per_block - 1) / rows_per_block), 32 * G * groups, 0, stream()>>>(
                ptr<T>(y), ptr<float>(rstd), ptr<T>(x), ptr<float>(weight), res, h, n, d, eps);
        launch_check("rmsnorm_forward_vec_kernel");
      });
      return;
    }
    rmsnorm_forward_kernel<T><<<row_grid(n), row_threads(d), 0, stream()>>>(
        ptr<T>(y), ptr<float>(rstd), ptr<T>(x), ptr<float>(weight), res, h, n, d, eps);
    launch_check("rmsnorm_forward_kernel");
  });
}

void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dy, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd, const Tensor& residual) {
  const int64_t d = x.dim(-1), n = rstd.numel();
  if (n == 0 || d == 0) return;
  use_device(x);
  dispatch_float(x.dtype(), "rmsnorm x", [&](auto tag) {
    using T = decltype(tag);
    const RowLayout layout = row_layout(d / Vec<T>::kWidth);
    const T* res = residual.defined() ? ptr<T>(residual) : nullptr;
    if (layout.warps &&
        vectorizable<T>(d, {dx.raw(), dy.raw(), x.raw(), weight.raw(),
                            residual.defined() ? residual.raw() : nullptr})) {
      dispatch_layout(layout, [&](auto v, auto g) {
        constexpr int V = decltype(v)::value, G = decltype(g)::value;
        auto kernel = rmsnorm_backward_vec_kernel<T, V, G>;
        const int groups = groups_per_block(G), threads = 32 * G * groups;
        const int rows_per_block = groups * rows_at_once(V, G);
        // One resident wave: every block owns a fixed share of the rows and one partial
        // row, so more blocks than fit at once would only add partial rows and a tail.
        int per_sm = 0;
        SY_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0));
        const int64_t blocks = std::min<int64_t>((n + rows_per_block - 1) / rows_per_block,
                                                 std::max(per_sm, 1) * int64_t{sm_count()});
        Scratch partial(static_cast<size_t>(blocks * d) * sizeof(float));
        kernel<<<static_cast<unsigned>(blocks), threads, 0, stream()>>>(
            ptr<T>(dx), partial.as<float>(), ptr<T>(dy), ptr<T>(x), ptr<float>(weight),
            ptr<float>(rstd), res, n, d);
        launch_check("rmsnorm_backward_vec_kernel");
        add_partials(dweight, partial.as<float>(), blocks, d);
      });
      return;
    }
    // Enough blocks to fill the GPU a few times over; each takes an equal chunk of rows.
    const int64_t max_blocks = 4LL * sm_count();
    const int64_t chunk = (n + max_blocks - 1) / max_blocks;
    const int64_t blocks = (n + chunk - 1) / chunk;
    Scratch partial(static_cast<size_t>(blocks * d) * sizeof(float));
    rmsnorm_backward_kernel<T><<<static_cast<unsigned>(blocks), row_threads(d), 0, stream()>>>(
        ptr<T>(dx), partial.as<float>(), ptr<T>(dy), ptr<T>(x), ptr<float>(weight),
        ptr<float>(rstd), res, n, d, chunk);
    launch_check("rmsnorm_backward_kernel");
    add_partials(dweight, partial.as<float>(), blocks, d);
  });
}

}  // namespace sy::cuda
