// RMSNorm on the GPU: y = x * rstd * weight per row of D, rstd = 1 / sqrt(mean(x^2) + eps).
// x, y, dy, dx are f32 or bf16 (one type per call); weight, dweight and rstd are f32, and
// every sum accumulates in fp32. With r = rstd and s = sum_j dy_j w_j x_j the backward is
//   dx_j = r (dy_j w_j - x_j r^2 s / D)   (written),   dweight_j += sum_rows dy_j x_j r.
// One block per row (a row-stride loop covers more rows than the grid holds). The weight
// gradient is summed without atomics, so it is the same on every run: each block of the
// backward owns a contiguous chunk of rows and writes its column sums to a scratch row,
// then a second kernel adds the scratch rows, in block order, into dweight.
#include "kernels/cuda/common.cuh"
#include "kernels/rmsnorm.h"

namespace sy::cuda {
namespace {

template <typename T>
__global__ void rmsnorm_forward_kernel(T* y, float* rstd, const T* x, const float* weight,
                                       int64_t n, int64_t d, float eps) {
  __shared__ float shared[32];
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const T* xr = x + row * d;
    float ss = 0.0f;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const float v = to_f32(xr[j]);
      ss += v * v;
    }
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
                                        const float* weight, const float* rstd, int64_t n,
                                        int64_t d, int64_t chunk) {
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
      dxr[j] = from_f32<T>(r * (to_f32(dyr[j]) * weight[j] - to_f32(xr[j]) * c));
    }
  }
}

__global__ void add_partials_kernel(float* dweight, const float* partial, int64_t blocks,
                                    int64_t d) {
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < d;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
    for (int64_t b = 0; b < blocks; ++b) sum += partial[b * d + j];
    dweight[j] += sum;
  }
}

// Threads per row: a warp multiple covering D, at most 1024 (more columns are strided).
int row_threads(int64_t d) {
  return static_cast<int>(std::clamp<int64_t>((d + 31) / 32 * 32, 32, 1024));
}

}  // namespace

void rmsnorm_forward(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     float eps) {
  const int64_t d = x.dim(-1), n = rstd.numel();
  if (n == 0) return;
  use_device(x);
  dispatch_float(x.dtype(), "rmsnorm x", [&](auto tag) {
    using T = decltype(tag);
    rmsnorm_forward_kernel<T><<<row_grid(n), row_threads(d), 0, stream()>>>(
        ptr<T>(y), ptr<float>(rstd), ptr<T>(x), ptr<float>(weight), n, d, eps);
    launch_check("rmsnorm_forward_kernel");
  });
}

void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dy, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd) {
  const int64_t d = x.dim(-1), n = rstd.numel();
  if (n == 0 || d == 0) return;
  use_device(x);
  // Enough blocks to fill the GPU a few times over; each takes an equal chunk of rows.
  const int64_t max_blocks = 4LL * sm_count();
  const int64_t chunk = (n + max_blocks - 1) / max_blocks;
  const int64_t blocks = (n + chunk - 1) / chunk;
  Scratch partial(static_cast<size_t>(blocks * d) * sizeof(float));
  dispatch_float(x.dtype(), "rmsnorm x", [&](auto tag) {
    using T = decltype(tag);
    rmsnorm_backward_kernel<T><<<static_cast<unsigned>(blocks), row_threads(d), 0, stream()>>>(
        ptr<T>(dx), partial.as<float>(), ptr<T>(dy), ptr<T>(x), ptr<float>(weight),
        ptr<float>(rstd), n, d, chunk);
    launch_check("rmsnorm_backward_kernel");
  });
  add_partials_kernel<<<grid_for(d), kThreads, 0, stream()>>>(ptr<float>(dweight),
                                                              partial.as<float>(), blocks, d);
  launch_check("add_partials_kernel");
}

}  // namespace sy::cuda
