// Elementwise and layout glue on the GPU, f32 or bf16 (one type per call, fp32 arithmetic):
// add (out may alias a or b), scale_, concat_cols / split_cols (row-wise copies), and
// sum_squares in double (deterministic; its notes are with its kernels, at the end of the file).
// add moves 16-byte vectors (8 bf16 or 4 f32 per load) where out, a and b are
// 16-byte aligned, and the last n mod 8 (or 4) elements one at a time: scalar 2-byte
// accesses left most of the bandwidth unused. Each thread reads its elements of a and b
// before it writes the same elements of out, so out may alias a or b on both paths.
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/elementwise.h"

namespace sy::cuda {
namespace {

#define SY_GRID_STRIDE(i, n)                                                             \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename T>
__global__ void add_kernel(T* out, const T* a, const T* b, int64_t n) {
  SY_GRID_STRIDE(i, n) { out[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i])); }
}

template <typename T>
__global__ void add_vec_kernel(T* out, const T* a, const T* b, int64_t n) {
  constexpr int W = Vec<T>::kWidth;
  const int64_t vectors = n / W;
  SY_GRID_STRIDE(i, vectors) {
    Vec<T> va, vb, vo;
    va.raw = reinterpret_cast<const uint4*>(a)[i];
    vb.raw = reinterpret_cast<const uint4*>(b)[i];
#pragma unroll
    for (int e = 0; e < W; ++e) vo.x[e] = from_f32<T>(to_f32(va.x[e]) + to_f32(vb.x[e]));
    reinterpret_cast<uint4*>(out)[i] = vo.raw;
  }
  // The tail past the last whole vector: fewer than W elements, one per thread of block 0.
  const int64_t i = vectors * W + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}

template <typename T>
__global__ void scale_kernel(T* x, float s, int64_t n) {
  SY_GRID_STRIDE(i, n) { x[i] = from_f32<T>(to_f32(x[i]) * s); }
}

template <typename T>
__global__ void fill_kernel(T* x, float v, int64_t n) {
  const T value = from_f32<T>(v);
  SY_GRID_STRIDE(i, n) { x[i] = value; }
}

// out [rows, ca + cb] = [a | b]; one thread per element of out.
template <typename T>
__global__ void concat_cols_kernel(T* out, const T* a, const T* b, int64_t rows, int64_t ca,
                                   int64_t cb) {
  const int64_t width = ca + cb;
  SY_GRID_STRIDE(i, rows * width) {
    const int64_t r = i / width, c = i % width;
    out[i] = c < ca ? a[r * ca + c] : b[r * cb + c - ca];
  }
}

template <typename T>
__global__ void split_cols_kernel(T* da, T* db, const T* dout, int64_t rows, int64_t ca,
                                  int64_t cb) {
  const int64_t width = ca + cb;
  SY_GRID_STRIDE(i, rows * width) {
    const int64_t r = i / width, c = i % width;
    if (c < ca) {
      da[r * ca + c] = dout[i];
    } else {
      db[r * cb + c - ca] = dout[i];
    }
  }
}

template <typename TOut, typename TIn>
__global__ void cast_kernel(TOut* out, const TIn* x, int64_t n) {
  SY_GRID_STRIDE(i, n) { out[i] = from_f32<TOut>(to_f32(x[i])); }
}

#undef SY_GRID_STRIDE

}  // namespace

void add(const Tensor& out, const Tensor& a, const Tensor& b) {
  const int64_t n = out.numel();
  if (n == 0) return;
  use_device(out);
  dispatch_float(out.dtype(), "add", [&](auto tag) {
    using T = decltype(tag);
    if (aligned16({out.raw(), a.raw(), b.raw()})) {
      add_vec_kernel<T>
          <<<grid_for(std::max<int64_t>(n / Vec<T>::kWidth, 1)), kThreads, 0, stream()>>>(
              ptr<T>(out), ptr<T>(a), ptr<T>(b), n);
      launch_check("add_vec_kernel");
      return;
    }
    add_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(ptr<T>(out), ptr<T>(a), ptr<T>(b), n);
    launch_check("add_kernel");
  });
}

void scale_(const Tensor& x, float s) {
  const int64_t n = x.numel();
  if (n == 0) return;
  use_device(x);
  dispatch_float(x.dtype(), "scale_", [&](auto tag) {
    using T = decltype(tag);
    scale_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(ptr<T>(x), s, n);
    launch_check("scale_kernel");
  });
}

void fill_(const Tensor& x, float v) {
  const int64_t n = x.numel();
  if (n == 0) return;
  use_device(x);
  dispatch_float(x.dtype(), "fill_", [&](auto tag) {
    using T = decltype(tag);
    fill_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(ptr<T>(x), v, n);
    launch_check("fill_kernel");
  });
}

void concat_cols(const Tensor& out, const Tensor& a, const Tensor& b) {
  const int64_t rows = a.dim(0), ca = a.dim(1), cb = b.dim(1);
  if (rows * (ca + cb) == 0) return;
  use_device(out);
  dispatch_float(out.dtype(), "concat_cols", [&](auto tag) {
    using T = decltype(tag);
    concat_cols_kernel<T><<<grid_for(rows * (ca + cb)), kThreads, 0, stream()>>>(
        ptr<T>(out), ptr<T>(a), ptr<T>(b), rows, ca, cb);
    launch_check("concat_cols_kernel");
  });
}

void split_cols(const Tensor& da, const Tensor& db, const Tensor& dout) {
  const int64_t rows = da.dim(0), ca = da.dim(1), cb = db.dim(1);
  if (rows * (ca + cb) == 0) return;
  use_device(dout);
  dispatch_float(dout.dtype(), "split_cols", [&](auto tag) {
    using T = decltype(tag);
    split_cols_kernel<T><<<grid_for(rows * (ca + cb)), kThreads, 0, stream()>>>(
        ptr<T>(da), ptr<T>(db), ptr<T>(dout), rows, ca, cb);
    launch_check("split_cols_kernel");
  });
}

void cast(const Tensor& out, const Tensor& x) {
  const int64_t n = x.numel();
  if (n == 0) return;
  use_device(x);
  dispatch_float(out.dtype(), "cast out", [&](auto out_tag) {
    dispatch_float(x.dtype(), "cast x", [&](auto in_tag) {
      using TOut = decltype(out_tag);
      using TIn = decltype(in_tag);
      cast_kernel<TOut, TIn>
          <<<grid_for(n), kThreads, 0, stream()>>>(ptr<TOut>(out), ptr<TIn>(x), n);
      launch_check("cast_kernel");
    });
  });
}

namespace {

// --- sum of squares ---------------------------------------------------------------------------
//
// sum_squares_each covers a list of tensors (a model's gradients) in two launches, however many
// there are: one launch pair per tensor left the GPU idle between ~150 small kernels. Each tensor
// is cut into chunks of kSquaresChunk elements; block k of the first kernel sums chunk k's
// squares in double into partial[k], finding its tensor by binary search in a table of the
// tensors (one entry per tensor, a staged upload: no per-chunk list to build on the host), then
// block t of the second adds up tensor t's partials into out[t]. Both sums
// have a fixed shape (which thread takes which elements, then a tree over the block), so a
// tensor's sum is the same bits on every run, whatever other tensors share the call and whether
// or not its data is 16-byte aligned. Against one double sum in index order (the CPU's) only the
// order differs: the square of an f32 or bf16 value is exact in double, and a sum of N positive
// terms is off by less than N 2^-53 relative.

// Elements per chunk, one block's share: a multiple of every vector width, so each chunk of a
// 16-byte aligned tensor starts 16-byte aligned. 64K elements (256 KB of f32) keep a block busy
// long enough to hide its start; a 1.2B-parameter model makes ~18K chunks.
constexpr int64_t kSquaresChunk = int64_t{1} << 16;

struct SquaresEntry {
  const void* x;  // null when empty
  int64_t n;
  int64_t first_chunk;  // its chunks: [first_chunk, the next entry's first_chunk or the total)
  int32_t bf16;         // else f32
  int32_t vectorized;   // x 16-byte aligned: Vec loads
};

// Tree sum of one double per thread (blockDim.x == kThreads); every thread gets the total.
__device__ double block_sum_double(double v) {
  __shared__ double shared[kThreads];
  __syncthreads();  // the previous call's total may still be being read
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) shared[threadIdx.x] += shared[threadIdx.x + half];
    __syncthreads();
  }
  return shared[0];
}

// This thread's share of the squares of x[begin, end): groups of W consecutive elements (one
// Vec), group g to thread g mod blockDim.x, each group in element order. Vector and scalar
// loads take the same elements in the same order, so alignment does not change the sum; the
// squares are exact in double, so neither does contraction into fused multiply-adds.
template <typename T>
__device__ double thread_squares(const T* x, int64_t begin, int64_t end, bool vectorized) {
  constexpr int W = Vec<T>::kWidth;
  const int64_t stride = int64_t{W} * blockDim.x;
  int64_t i = begin + int64_t{W} * threadIdx.x;
  double s = 0.0;
  if (vectorized) {
    const int64_t whole_end = begin + (end - begin) / W * W;
#pragma unroll 4
    for (; i < whole_end; i += stride) {
      Vec<T> v;
      v.raw = *reinterpret_cast<const uint4*>(x + i);
#pragma unroll
      for (int e = 0; e < W; ++e) {
        const double d = to_f32(v.x[e]);
        s += d * d;
      }
    }
  }
  // Every group when not vectorized; else the one past the last whole group, if it is ours.
  for (; i < end; i += stride) {
    for (int64_t j = i; j < min(i + W, end); ++j) {
      const double d = to_f32(x[j]);
      s += d * d;
    }
  }
  return s;
}

__global__ void chunk_squares_kernel(double* partial, const SquaresEntry* entries,
                                     int64_t num_entries, int64_t num_chunks) {
  for (int64_t k = blockIdx.x; k < num_chunks; k += gridDim.x) {
    // Chunk k's tensor: the last entry starting at or before it (an empty tensor starts where
    // the next one does, so it is passed over).
    int64_t lo = 0, hi = num_entries - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (entries[mid].first_chunk <= k) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const SquaresEntry e = entries[lo];
    const int64_t begin = (k - e.first_chunk) * kSquaresChunk;
    const int64_t end = min(e.n, begin + kSquaresChunk);
    const double s =
        e.bf16 ? thread_squares(static_cast<const __nv_bfloat16*>(e.x), begin, end, e.vectorized)
               : thread_squares(static_cast<const float*>(e.x), begin, end, e.vectorized);
    const double total = block_sum_double(s);
    if (threadIdx.x == 0) partial[k] = total;
  }
}

// out[t] = tensor t's partials added up (0 for an empty tensor), one block per tensor.
__global__ void tensor_squares_kernel(double* out, const double* partial,
                                      const SquaresEntry* entries, int64_t num_entries,
                                      int64_t num_chunks) {
  for (int64_t t = blockIdx.x; t < num_entries; t += gridDim.x) {
    const int64_t end = t + 1 < num_entries ? entries[t + 1].first_chunk : num_chunks;
    double s = 0.0;
    for (int64_t k = entries[t].first_chunk + threadIdx.x; k < end; k += blockDim.x)
      s += partial[k];
    s = block_sum_double(s);
    if (threadIdx.x == 0) out[t] = s;
  }
}

}  // namespace

void sum_squares_each(const std::vector<Tensor>& xs, double* out) {
  if (xs.empty()) return;
  use_device(xs[0]);
  const auto num_entries = static_cast<int64_t>(xs.size());
  static_assert(sizeof(SquaresEntry) % 4 == 0);
  const Tensor host_table =
      Tensor::empty({num_entries * static_cast<int64_t>(sizeof(SquaresEntry) / 4)}, DType::kI32);
  auto* entries = static_cast<SquaresEntry*>(host_table.raw());
  int64_t num_chunks = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    SY_CHECK(x.dtype() == DType::kF32 || x.dtype() == DType::kBF16)
        << "sum_squares_each xs[" << i << "] is " << dtype_name(x.dtype())
        << ", expected f32 or bf16";
    SY_CHECK(x.device() == xs[0].device())
        << "sum_squares_each xs[" << i << "] is on " << x.device().str() << ", xs[0] on "
        << xs[0].device().str();
    const int64_t n = x.numel();
    const void* data = n > 0 ? x.raw() : nullptr;
    entries[i] = SquaresEntry{data, n, num_chunks, x.dtype() == DType::kBF16,
                              data != nullptr && aligned16({data})};
    num_chunks += (n + kSquaresChunk - 1) / kSquaresChunk;
  }
  // A staged upload (queued behind the work that writes the tensors; nothing waits), freed
  // stream-ordered after the kernels have read it, as the partials are.
  const Tensor table = host_table.to(xs[0].device());
  const auto* device_entries = static_cast<const SquaresEntry*>(table.raw());
  Scratch partial(static_cast<size_t>(num_chunks) * sizeof(double));
  if (num_chunks > 0) {
    chunk_squares_kernel<<<row_grid(num_chunks), kThreads, 0, stream()>>>(
        partial.as<double>(), device_entries, num_entries, num_chunks);
    launch_check("chunk_squares_kernel");
  }
  tensor_squares_kernel<<<row_grid(num_entries), kThreads, 0, stream()>>>(
      out, partial.as<const double>(), device_entries, num_entries, num_chunks);
  launch_check("tensor_squares_kernel");
}

std::vector<double> sum_squares_each(const std::vector<Tensor>& xs) {
  std::vector<double> out(xs.size(), 0.0);
  if (xs.empty()) return out;
  use_device(xs[0]);
  Scratch results(xs.size() * sizeof(double));
  sum_squares_each(xs, results.as<double>());
  SY_CUDA_CHECK(cudaMemcpyAsync(out.data(), results.as<double>(), xs.size() * sizeof(double),
                                cudaMemcpyDeviceToHost, stream()));
  SY_CUDA_CHECK(cudaStreamSynchronize(stream()));
  return out;
}

double sum_squares(const Tensor& x) { return sum_squares_each({x})[0]; }

}  // namespace sy::cuda
