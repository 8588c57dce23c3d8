// Elementwise and layout glue on the GPU, f32 or bf16 (one type per call, fp32 arithmetic):
// add (out may alias a or b), scale_, concat_cols / split_cols (row-wise copies), and
// sum_squares in double. sum_squares is deterministic: each block sums a fixed slice in
// double, then one block adds the block sums in order, so a gradient norm is the same on
// every run. add moves 16-byte vectors (8 bf16 or 4 f32 per load) where out, a and b are
// 16-byte aligned, and the last n mod 8 (or 4) elements one at a time: scalar 2-byte
// accesses left most of the bandwidth unused. Each thread reads its elements of a and b
// before it writes the same elements of out, so out may alias a or b on both paths.
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

// Tree sum of one double per thread (blockDim.x == kThreads); thread 0 gets the total.
__device__ double block_sum_double(double v) {
  __shared__ double shared[kThreads];
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) shared[threadIdx.x] += shared[threadIdx.x + half];
    __syncthreads();
  }
  return shared[0];
}

template <typename T>
__global__ void sum_squares_kernel(double* partial, const T* x, int64_t n) {
  double s = 0.0;
  SY_GRID_STRIDE(i, n) {
    const double v = to_f32(x[i]);
    s += v * v;
  }
  s = block_sum_double(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sum_partials_kernel(double* out, const double* partial, int64_t blocks) {
  double s = 0.0;
  for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) s += partial[b];
  s = block_sum_double(s);
  if (threadIdx.x == 0) *out = s;
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

namespace {
// Queues the deterministic two-kernel sum of squares of x into *result (device memory).
void enqueue_sum_squares(const Tensor& x, double* result) {
  const int64_t n = x.numel();
  const unsigned blocks = std::min<unsigned>(grid_for(n), 4 * sm_count());
  Scratch partial(blocks * sizeof(double));
  dispatch_float(x.dtype(), "sum_squares", [&](auto tag) {
    using T = decltype(tag);
    sum_squares_kernel<T><<<blocks, kThreads, 0, stream()>>>(partial.as<double>(), ptr<T>(x), n);
    launch_check("sum_squares_kernel");
  });
  sum_partials_kernel<<<1, kThreads, 0, stream()>>>(result, partial.as<double>(), blocks);
  launch_check("sum_partials_kernel");
}
}  // namespace

double sum_squares(const Tensor& x) { return sum_squares_each({x})[0]; }

std::vector<double> sum_squares_each(const std::vector<Tensor>& xs) {
  std::vector<double> out(xs.size(), 0.0);
  if (xs.empty()) return out;
  use_device(xs[0]);
  Scratch results(xs.size() * sizeof(double));
  SY_CUDA_CHECK(cudaMemsetAsync(results.as<double>(), 0, xs.size() * sizeof(double), stream()));
  for (size_t i = 0; i < xs.size(); ++i)
    if (xs[i].numel() > 0) enqueue_sum_squares(xs[i], results.as<double>() + i);
  SY_CUDA_CHECK(cudaMemcpyAsync(out.data(), results.as<double>(), xs.size() * sizeof(double),
                                cudaMemcpyDeviceToHost, stream()));
  SY_CUDA_CHECK(cudaStreamSynchronize(stream()));
  return out;
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

}  // namespace sy::cuda
