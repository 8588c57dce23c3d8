// Fused softmax cross-entropy on the GPU, one block per row of V logits (f32 or bf16):
//   forward:  lse = log(sum_j exp(logits_j)) in one read of the row, with a running
//             (max, sum) per thread, rescaled whenever the max grows, merged across the
//             block; loss = lse - logits_target (0 for ignore_index). Probabilities are
//             never stored; lse [N] (f32) is kept for the backward.
//   backward: dlogits_j = dloss (exp(logits_j - lse) - [j == target]) (written; zero for
//             ignored rows). Each element is read and then written by the same thread, so
//             dlogits may be the logits buffer itself.
// Rows whose address is 16-byte aligned are read in 16-byte packs. A target outside
// [0, V) that is not ignore_index is a programming error: the kernel prints it and traps.
#include <type_traits>

#include "kernels/cross_entropy.h"
#include "kernels/cuda/common.cuh"

namespace sy::cuda {
namespace {

// Calls f(j, pointer to element j) for every element j of the row this thread handles:
// first in 16-byte packs (when the row is aligned), then the tail one at a time.
template <typename T, typename F>
__device__ __forceinline__ void for_each_in_row(T* row, int64_t v, F&& f) {
  constexpr int kPack = 16 / sizeof(T);
  int64_t start = 0;
  if (reinterpret_cast<uintptr_t>(row) % 16 == 0) {
    using Pack = typename std::conditional<std::is_const<T>::value, const int4, int4>::type;
    const int64_t packs = v / kPack;
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      auto pack = *reinterpret_cast<Pack*>(row + p * kPack);
      auto* e = reinterpret_cast<std::remove_const_t<T>*>(&pack);
      for (int k = 0; k < kPack; ++k) f(p * kPack + k, e[k]);
      if constexpr (!std::is_const<T>::value) *reinterpret_cast<int4*>(row + p * kPack) = pack;
    }
    start = packs * kPack;
  }
  for (int64_t j = start + threadIdx.x; j < v; j += blockDim.x) f(j, row[j]);
}

__device__ int64_t target_of(const int32_t* targets, int64_t row, int64_t vocab, int ignore_index) {
  const int32_t t = targets[row];
  if (t == ignore_index) return -1;
  if (t < 0 || t >= vocab) {
    printf(
        "cross_entropy: target %d of row %lld is outside vocab %lld and is not ignore_index %d\n",
        t, static_cast<long long>(row), static_cast<long long>(vocab), ignore_index);
    __trap();
  }
  return t;
}

// Merges a running (max, sum of exp(x - max)) with another; an empty side has max -inf.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float mx = fmaxf(m, m2);
  if (mx == -INFINITY) return;
  s = (m == -INFINITY ? 0.0f : s * expf(m - mx)) + (m2 == -INFINITY ? 0.0f : s2 * expf(m2 - mx));
  m = mx;
}

template <typename T>
__global__ void cross_entropy_forward_kernel(float* losses, float* lse, const T* logits,
                                             const int32_t* targets, int64_t n, int64_t vocab,
                                             int ignore_index) {
  __shared__ float shared_m[32], shared_s[32];
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const T* xr = logits + row * vocab;
    float m = -INFINITY, s = 0.0f;
    for_each_in_row(xr, vocab, [&](int64_t, T value) {
      const float x = to_f32(value);
      if (x > m) {
        s = s * expf(m - x) + 1.0f;  // expf(-inf) = 0 for the first element
        m = x;
      } else if (x > -INFINITY) {
        s += expf(x - m);
      }
    });
    for (int o = 16; o > 0; o >>= 1) {
      merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();  // the previous row's readers are done with shared_*
    if (lane == 0) {
      shared_m[warp] = m;
      shared_s[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
      m = lane < warps ? shared_m[lane] : -INFINITY;
      s = lane < warps ? shared_s[lane] : 0.0f;
      for (int o = 16; o > 0; o >>= 1) {
        merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
      }
      if (lane == 0) {
        const float row_lse = m + logf(s);
        lse[row] = row_lse;
        const int64_t target = target_of(targets, row, vocab, ignore_index);
        losses[row] = target < 0 ? 0.0f : row_lse - to_f32(xr[target]);
      }
    }
  }
}

template <typename T>
__global__ void cross_entropy_backward_kernel(T* dlogits, const float* dlosses, const T* logits,
                                              const float* lse, const int32_t* targets, int64_t n,
                                              int64_t vocab, int ignore_index) {
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    T* dxr = dlogits + row * vocab;
    const T* xr = logits + row * vocab;
    const int64_t target = target_of(targets, row, vocab, ignore_index);
    if (target < 0) {
      for_each_in_row(dxr, vocab, [](int64_t, T& out) { out = from_f32<T>(0.0f); });
      continue;
    }
    const float dl = dlosses[row], row_lse = lse[row];
    if (dxr == xr) {  // in place: each thread reads an element, then overwrites it
      for_each_in_row(dxr, vocab, [&](int64_t j, T& value) {
        float d = dl * expf(to_f32(value) - row_lse);
        if (j == target) d -= dl;
        value = from_f32<T>(d);
      });
    } else {
      for_each_in_row(xr, vocab, [&](int64_t j, T value) {
        float d = dl * expf(to_f32(value) - row_lse);
        if (j == target) d -= dl;
        dxr[j] = from_f32<T>(d);
      });
    }
  }
}

}  // namespace

void cross_entropy_forward(const Tensor& losses, const Tensor& lse, const Tensor& logits,
                           const Tensor& targets, int ignore_index) {
  const int64_t n = logits.dim(0), vocab = logits.dim(1);
  if (n == 0) return;
  SY_CHECK(vocab > 0) << "cross_entropy over an empty vocabulary";
  use_device(logits);
  dispatch_float(logits.dtype(), "cross_entropy logits", [&](auto tag) {
    using T = decltype(tag);
    cross_entropy_forward_kernel<T><<<row_grid(n), kThreads, 0, stream()>>>(
        ptr<float>(losses), ptr<float>(lse), ptr<T>(logits), ptr<int32_t>(targets), n, vocab,
        ignore_index);
    launch_check("cross_entropy_forward_kernel");
  });
}

void cross_entropy_backward(const Tensor& dlogits, const Tensor& dlosses, const Tensor& logits,
                            const Tensor& lse, const Tensor& targets, int ignore_index) {
  const int64_t n = logits.dim(0), vocab = logits.dim(1);
  if (n == 0 || vocab == 0) return;
  use_device(logits);
  dispatch_float(logits.dtype(), "cross_entropy logits", [&](auto tag) {
    using T = decltype(tag);
    cross_entropy_backward_kernel<T><<<row_grid(n), kThreads, 0, stream()>>>(
        ptr<T>(dlogits), ptr<float>(dlosses), ptr<T>(logits), ptr<float>(lse),
        ptr<int32_t>(targets), n, vocab, ignore_index);
    launch_check("cross_entropy_backward_kernel");
  });
}

}  // namespace sy::cuda
