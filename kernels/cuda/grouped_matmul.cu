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
// The rest (f32, N or K not multiples of 16, misaligned views) waits for the offsets on the
// host and runs one cuBLAS GEMM per group.
#include <mma.h>

#include "kernels/cuda/common.cuh"
#include "kernels/grouped_matmul.h"
#include "kernels/matmul.h"

namespace sy::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kBlockThreads = 32 * kWarps;
constexpr int kFrag = 16;
constexpr int kBN = kWarps * kFrag;  // output columns per block
constexpr int kMaxFrags = 4;
constexpr int kBM = kMaxFrags * kFrag;  // rows per block
constexpr int kKC = 256;                // x columns staged at a time
constexpr int kLd = kKC + 8;            // staged row stride: a skew against bank conflicts
constexpr int kMaxRowChunks = 64;       // grid.z; more chunks are walked by a stride loop

static_assert(kBM * kBN * sizeof(float) <= kBM * kLd * sizeof(__nv_bfloat16),
              "the fp32 tile reuses the staging buffer");

using namespace nvcuda;

// One block's chunk of rows [lo, lo + rows) of group e, with MF fragments of 16 rows.
template <int MF>
__device__ __forceinline__ void chunk(__nv_bfloat16* y, const __nv_bfloat16* x,
                                      const __nv_bfloat16* w, int64_t lo, int rows, int64_t n,
                                      int64_t k, int e, __nv_bfloat16* xs) {
  const int warp = threadIdx.x / 32;
  const int64_t n_block = static_cast<int64_t>(blockIdx.x) * kBN;
  const int64_t n_warp = n_block + warp * kFrag;
  const bool live = n_warp < n;  // N is a multiple of 16: a warp's columns are all in or out
  const __nv_bfloat16* wp = w + (static_cast<int64_t>(e) * n + (live ? n_warp : 0)) * k;

  wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, float> acc[MF];
#pragma unroll
  for (int i = 0; i < MF; ++i) wmma::fill_fragment(acc[i], 0.0f);

  for (int64_t k0 = 0; k0 < k; k0 += kKC) {
    const int kc = static_cast<int>((k - k0 < kKC ? k - k0 : int64_t{kKC}));
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
    Vec<__nv_bfloat16> out;
#pragma unroll
    for (int j = 0; j < 8; ++j) out.x[j] = __float2bfloat16(tile[r * kBN + c + j]);
    *reinterpret_cast<uint4*>(y + (lo + r) * n + n_block + c) = out.raw;
  }
}

__global__ void __launch_bounds__(kBlockThreads)
    grouped_matmul_kernel(__nv_bfloat16* y, const __nv_bfloat16* x, const __nv_bfloat16* w,
                          const int64_t* offsets, int64_t n, int64_t k) {
  __shared__ __align__(32) __nv_bfloat16 xs[kBM * kLd];
  const int e = blockIdx.y;
  const int64_t end = offsets[e + 1];
  for (int64_t lo = offsets[e] + static_cast<int64_t>(blockIdx.z) * kBM; lo < end;
       lo += static_cast<int64_t>(gridDim.z) * kBM) {
    const int rows = static_cast<int>((end - lo < kBM ? end - lo : int64_t{kBM}));
    const int frags = (rows + kFrag - 1) / kFrag;  // the same for the whole block
    if (frags == 1) {
      chunk<1>(y, x, w, lo, rows, n, k, e, xs);
    } else if (frags == 2) {
      chunk<2>(y, x, w, lo, rows, n, k, e, xs);
    } else if (frags == 3) {
      chunk<3>(y, x, w, lo, rows, n, k, e, xs);
    } else {
      chunk<4>(y, x, w, lo, rows, n, k, e, xs);
    }
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
    const int64_t chunks = std::min<int64_t>((m + kBM - 1) / kBM, kMaxRowChunks);
    const dim3 grid(static_cast<unsigned>((n + kBN - 1) / kBN), static_cast<unsigned>(groups),
                    static_cast<unsigned>(chunks));
    grouped_matmul_kernel<<<grid, kBlockThreads, 0, stream()>>>(
        ptr<__nv_bfloat16>(y), ptr<__nv_bfloat16>(x), ptr<__nv_bfloat16>(w),
        reinterpret_cast<const int64_t*>(offsets.raw()), n, k);
    launch_check("grouped_matmul_kernel");
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
