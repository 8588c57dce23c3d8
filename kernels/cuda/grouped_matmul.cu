// Grouped linear layers on the GPU with the group offsets read on the device
// (kernels/grouped_matmul.h): y[rows of e] = x[rows of e] @ w[e]^T.
//
// A block owns one group e, 64 output columns and up to 64 of the group's rows (grid: column
// tiles x groups x row chunks; a block whose chunk starts past its group's rows returns
// before reading anything, so a group with no rows costs no weight traffic). Its four warps
// take 16 columns each and run bf16 tensor-core MMAs (wmma 16x16x16, fp32 accumulators) on
// 1-4 fragments of 16 rows, as many as the chunk has rows. The weight is the stream that
// matters (a decode step's experts see a few rows each, so every weight byte is used a few
// times): each warp reads its columns' [16, K] slice straight from global memory as col-major
// B fragments, unrolled so that several loads are in flight; the chunk's x rows are staged in
// shared memory 256 columns at a time (zero rows past the group's end), and the fp32 tile goes
// back through shared memory so that only the group's rows are written, as whole 16-byte
// vectors.
//
// With GroupedTiling::kAdaptive (set_grouped_matmul_tiling; not yet the default): with
// decode's few rows a group, chunks hold 32 rows (half the staging memory, twice the
// blocks an SM); where the grid still has too few blocks to keep the weight streaming (w2's
// 1024 columns make 16 tiles a group), K is split into slices of whole staged chunks whose
// fp32 partials a second kernel adds in slice order (no atomics: the same bits every run).
//
// The rest (f32, N or K not multiples of 16, misaligned views) waits for the offsets on the
// host and runs one cuBLAS GEMM per group.
#include <mma.h>

#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/grouped_matmul.h"
#include "kernels/matmul.h"

namespace sy::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kBlockThreads = 32 * kWarps;
constexpr int kFrag = 16;
constexpr int kBN = kWarps * kFrag;  // output columns per block
constexpr int kKC = 256;             // x columns staged at a time
constexpr int kLd = kKC + 8;         // staged row stride: a skew against bank conflicts
constexpr int kMaxRowChunks = 64;    // row chunks in the grid; more are walked by a stride loop
constexpr int kMaxSplits = 16;       // K slices at most

// The fp32 tile reuses the staging buffer.
static_assert(kBN * sizeof(float) <= kLd * sizeof(__nv_bfloat16));

using namespace nvcuda;

// Where a block's results go: y in bf16 (one K slice), or the slice's fp32 partial sums
// (part[slice, row, col]) that grouped_matmul_sum_kernel adds in slice order.
struct Out {
  __nv_bfloat16* y;
  float* part;
  int64_t m;  // rows of x and y (a slice's stride in part)
};

// One block's chunk of rows [lo, lo + rows) of group e over x columns [k_lo, k_hi), with MF
// fragments of 16 rows.
template <int MF>
__device__ __forceinline__ void chunk(Out out, const __nv_bfloat16* x, const __nv_bfloat16* w,
                                      int64_t lo, int rows, int64_t n, int64_t k, int64_t k_lo,
                                      int64_t k_hi, int slice, int e, __nv_bfloat16* xs) {
  const int warp = threadIdx.x / 32;
  const int64_t n_block = static_cast<int64_t>(blockIdx.x) * kBN;
  const int64_t n_warp = n_block + warp * kFrag;
  const bool live = n_warp < n;  // N is a multiple of 16: a warp's columns are all in or out
  const __nv_bfloat16* wp = w + (static_cast<int64_t>(e) * n + (live ? n_warp : 0)) * k;

  wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, float> acc[MF];
#pragma unroll
  for (int i = 0; i < MF; ++i) wmma::fill_fragment(acc[i], 0.0f);

  for (int64_t k0 = k_lo; k0 < k_hi; k0 += kKC) {
    const int kc = static_cast<int>((k_hi - k0 < kKC ? k_hi - k0 : int64_t{kKC}));
    const int vecs = kc / 8;  // 16-byte vectors per staged row
    __syncthreads();          // the previous chunk's fragments are loaded
    for (int i = threadIdx.x; i < MF * kFrag * vecs; i += kBlockThreads) {
      const int r = i / vecs, c = (i % vecs) * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (r < rows) v = *reinterpret_cast<const uint4*>(x + (lo + r) * k + k0 + c);
      *reinterpret_cast<uint4*>(xs + r * kLd + c) = v;
    }
    __syncthreads();
    if (live) {
#pragma unroll 8
      for (int kk = 0; kk < kc; kk += kFrag) {
        wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, __nv_bfloat16, wmma::col_major> b;
        wmma::load_matrix_sync(b, wp + k0 + kk, static_cast<unsigned>(k));
#pragma unroll
        for (int i = 0; i < MF; ++i) {
          wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, __nv_bfloat16, wmma::row_major> a;
          wmma::load_matrix_sync(a, xs + i * kFrag * kLd + kk, kLd);
          wmma::mma_sync(acc[i], a, b, acc[i]);
        }
      }
    }
  }
  __syncthreads();  // the staging buffer becomes the fp32 tile
  float* tile = reinterpret_cast<float*>(xs);
#pragma unroll
  for (int i = 0; i < MF; ++i) {
    wmma::store_matrix_sync(tile + i * kFrag * kBN + warp * kFrag, acc[i], kBN,
                            wmma::mem_row_major);
  }
  __syncthreads();
  constexpr int kRowVecs = kBN / 8;
  for (int i = threadIdx.x; i < rows * kRowVecs; i += kBlockThreads) {
    const int r = i / kRowVecs, c = (i % kRowVecs) * 8;
    if (n_block + c >= n) continue;
    const float* t = tile + r * kBN + c;
    if (out.part == nullptr) {
      Vec<__nv_bfloat16> v;
#pragma unroll
      for (int j = 0; j < 8; ++j) v.x[j] = __float2bfloat16(t[j]);
      *reinterpret_cast<uint4*>(out.y + (lo + r) * n + n_block + c) = v.raw;
    } else {
      float* dst = out.part + (slice * out.m + lo + r) * n + n_block + c;
      *reinterpret_cast<float4*>(dst) = make_float4(t[0], t[1], t[2], t[3]);
      *reinterpret_cast<float4*>(dst + 4) = make_float4(t[4], t[5], t[6], t[7]);
    }
  }
}

// Grid: column tiles x groups x (row chunks x K slices). kMaxF: fragments of 16 rows a chunk
// takes at most (its staging buffer's rows): 4 in general, 2 for decode's few rows a group,
// whose smaller buffer lets twice the blocks share an SM (more weight loads in flight).
template <int kMaxF>
__global__ void __launch_bounds__(kBlockThreads)
    grouped_matmul_kernel(Out out, const __nv_bfloat16* x, const __nv_bfloat16* w,
                          const int64_t* offsets, int64_t n, int64_t k, int splits,
                          int64_t slice_k) {
  constexpr int kBM = kMaxF * kFrag;
  __shared__ __align__(32) __nv_bfloat16 xs[kBM * kLd];
  const int e = blockIdx.y;
  const int slice = static_cast<int>(blockIdx.z % splits);
  const int64_t chunk0 = blockIdx.z / splits, chunks = gridDim.z / splits;
  const int64_t k_lo = slice * slice_k, k_hi = min(k, k_lo + slice_k);
  const int64_t end = offsets[e + 1];
  for (int64_t lo = offsets[e] + chunk0 * kBM; lo < end; lo += chunks * kBM) {
    const int rows = static_cast<int>((end - lo < kBM ? end - lo : int64_t{kBM}));
    const int frags = (rows + kFrag - 1) / kFrag;  // the same for the whole block
    if (frags == 1) {
      chunk<1>(out, x, w, lo, rows, n, k, k_lo, k_hi, slice, e, xs);
    } else if (frags == 2 || kMaxF == 2) {
      chunk<2>(out, x, w, lo, rows, n, k, k_lo, k_hi, slice, e, xs);
    } else if (frags == 3) {
      chunk<kMaxF == 4 ? 3 : 2>(out, x, w, lo, rows, n, k, k_lo, k_hi, slice, e, xs);
    } else {
      chunk<kMaxF>(out, x, w, lo, rows, n, k, k_lo, k_hi, slice, e, xs);
    }
  }
}

// y = the sum of the K slices' partials, in slice order (the same bits on every run), over
// the groups' rows [offsets[0], offsets[groups]); 8 columns a thread.
__global__ void grouped_matmul_sum_kernel(__nv_bfloat16* y, const float* part,
                                          const int64_t* offsets, int groups, int64_t m,
                                          int64_t n, int splits) {
  const int64_t first = offsets[0], last = offsets[groups];
  const int64_t vecs = (last - first) * (n / 8);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < vecs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t at = first * n + i * 8;
    float sum[8] = {};
    for (int s = 0; s < splits; ++s) {
      const float4 a = *reinterpret_cast<const float4*>(part + s * m * n + at);
      const float4 b = *reinterpret_cast<const float4*>(part + s * m * n + at + 4);
      sum[0] += a.x, sum[1] += a.y, sum[2] += a.z, sum[3] += a.w;
      sum[4] += b.x, sum[5] += b.y, sum[6] += b.z, sum[7] += b.w;
    }
    Vec<__nv_bfloat16> v;
#pragma unroll
    for (int j = 0; j < 8; ++j) v.x[j] = __float2bfloat16(sum[j]);
    *reinterpret_cast<uint4*>(y + at) = v.raw;
  }
}

}  // namespace

bool grouped_matmul_on_device(DType dtype, int64_t n, int64_t k) {
  return dtype == DType::kBF16 && n % kFrag == 0 && k % kFrag == 0 && n > 0 && k > 0;
}

void grouped_matmul(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& offsets) {
  const int64_t groups = w.dim(0), n = w.dim(1), k = w.dim(2), m = x.dim(0);
  if (m == 0 || n == 0 || groups == 0) return;
  use_device(x);
  // wmma loads need 32-byte aligned fragments: the bases, and rows of K (a multiple of 16).
  if (grouped_matmul_on_device(x.dtype(), n, k) && aligned(x.raw(), 32) && aligned(w.raw(), 32) &&
      aligned(y.raw(), 16)) {
    SY_CHECK(groups <= 65535) << "grouped_matmul: " << groups << " groups, at most 65535";
    // Decode's few rows a group (at most 16 on average): chunks of 32 rows, half the staging.
    const bool adaptive = sy::grouped_matmul_tiling() == GroupedTiling::kAdaptive;
    const int max_f = adaptive && m <= 16 * groups ? 2 : 4;
    const int64_t bm = max_f * kFrag;
    const int64_t tiles = (n + kBN - 1) / kBN;
    const int64_t chunks = std::min<int64_t>((m + bm - 1) / bm, kMaxRowChunks);
    // Too few blocks to keep the weight streaming (a w2's N of 1024 over 16 experts makes 256):
    // split K into slices of whole staged chunks, each block one slice, summed in order after.
    const int64_t k_chunks = (k + kKC - 1) / kKC;
    const int64_t want = (6LL * sm_count() + tiles * groups - 1) / (tiles * groups);
    const int splits = adaptive ? static_cast<int>(std::clamp<int64_t>(
                                      want, 1, std::min<int64_t>(k_chunks, kMaxSplits)))
                                : 1;
    const int64_t slice_k = (k_chunks + splits - 1) / splits * kKC;
    const int used = static_cast<int>((k + slice_k - 1) / slice_k);  // slices that hold columns
    Scratch part(used > 1 ? static_cast<size_t>(used) * m * n * sizeof(float) : 0);
    const Out out{.y = ptr<__nv_bfloat16>(y), .part = used > 1 ? part.as<float>() : nullptr, .m = m};
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(groups),
                    static_cast<unsigned>(chunks * used));
    const auto* off = reinterpret_cast<const int64_t*>(offsets.raw());
    if (max_f == 2) {
      grouped_matmul_kernel<2><<<grid, kBlockThreads, 0, stream()>>>(
          out, ptr<__nv_bfloat16>(x), ptr<__nv_bfloat16>(w), off, n, k, used, slice_k);
    } else {
      grouped_matmul_kernel<4><<<grid, kBlockThreads, 0, stream()>>>(
          out, ptr<__nv_bfloat16>(x), ptr<__nv_bfloat16>(w), off, n, k, used, slice_k);
    }
    launch_check("grouped_matmul_kernel");
    if (used > 1) {
      grouped_matmul_sum_kernel<<<grid_for(m * n / 8), kThreads, 0, stream()>>>(
          ptr<__nv_bfloat16>(y), out.part, off, static_cast<int>(groups), m, n, used);
      launch_check("grouped_matmul_sum_kernel");
    }
    return;
  }
  const Tensor host = offsets.to(Device::cpu());
  const int64_t* off = host.data<int64_t>();
  for (int64_t e = 0; e < groups; ++e) {
    SY_CHECK(off[e] <= off[e + 1] && off[e + 1] <= m && off[0] == 0)
        << "grouped_matmul: offsets[" << e << ".." << e + 1 << "] = " << off[e] << ", "
        << off[e + 1] << " are not non-decreasing from 0 within the " << m << " rows";
    if (off[e] == off[e + 1]) continue;
    sy::matmul(y.rows(off[e], off[e + 1]), x.rows(off[e], off[e + 1]),
               w.rows(e, e + 1).view({n, k}), false, true);
  }
}

}  // namespace sy::cuda
