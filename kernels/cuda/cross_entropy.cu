// Fused softmax cross-entropy on the GPU, one block per row of V logits (f32 or bf16):
//   forward:  lse = log(sum_j exp(logits_j)) in one read of the row, with a running
//             (max, sum) per thread, rescaled whenever the max grows, merged across the
//             block; loss = lse - logits_target (0 for ignore_index). Probabilities are
//             never stored; lse [N] (f32) is kept for the backward.
//   backward: dlogits_j = dloss (exp(logits_j - lse) - [j == target]) (written; zero for
//             ignored rows). Each element is read and then written by the same thread, so
//             dlogits may be the logits buffer itself.
//   forward_backward: both in one kernel, each row read from HBM once (16-byte cp.async
//             into shared memory, at any row alignment: the few elements before the row's
//             first 16-byte boundary and after its last are copied one at a time) and its
//             gradient written once from there. Pass 1 takes each pack's max first, so the
//             running sum is rescaled once per pack and exp() is taken once per element.
//             Rows too long for two blocks' shared memory on one SM (on an H200: bf16 past
//             57k elements, f32 past 28k), and a dlogits not 16-byte congruent with the
//             logits, take the two kernels above.
// Rows whose address is 16-byte aligned are read in 16-byte packs. A target outside
// [0, V) that is not ignore_index is a programming error: the kernel prints it and traps.
#include <array>
#include <atomic>
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

// Merges every thread's running (max, sum) over the block: each warp by shuffles, then every
// warp merges the warps' results itself (merge is symmetric, so all threads end with the same
// bits and no broadcast is needed). shared_m / shared_s hold 32 floats; a barrier must
// separate this from any earlier reader of them.
__device__ __forceinline__ void block_merge(float& m, float& s, float* shared_m, float* shared_s) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  }
  if (lane == 0) {
    shared_m[warp] = m;
    shared_s[warp] = s;
  }
  __syncthreads();
  m = lane < warps ? shared_m[lane] : -INFINITY;
  s = lane < warps ? shared_s[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) {
    merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  }
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
    __syncthreads();  // the previous row's readers are done with shared_*
    block_merge(m, s, shared_m, shared_s);
    if (threadIdx.x == 0) {
      const float row_lse = m + logf(s);
      lse[row] = row_lse;
      const int64_t target = target_of(targets, row, vocab, ignore_index);
      losses[row] = target < 0 ? 0.0f : row_lse - to_f32(xr[target]);
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

// 16 bytes global -> shared, bypassing L1 (the row is read once).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(
                   static_cast<uint32_t>(__cvta_generic_to_shared(dst))),
               "l"(src)
               : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

// Folds `count` logits into a running (max m, sum s of exp(x - m)): the max of the group
// first, then one rescale of s and one exp per element (exp2 of a log2(e)-scaled
// difference, so the error stays relative to x - m, not to x).
template <int kCount>
__device__ __forceinline__ void absorb(float& m, float& s, const float (&x)[kCount]) {
  constexpr float kLog2e = 1.4426950408889634f;
  float group_max = x[0];
  for (int k = 1; k < kCount; ++k) group_max = fmaxf(group_max, x[k]);
  const float mx = fmaxf(m, group_max);
  if (mx == -INFINITY) return;    // every element so far is -inf
  s *= exp2f((m - mx) * kLog2e);  // 0 while m is -inf (s is 0 then too)
  for (int k = 0; k < kCount; ++k) s += exp2f((x[k] - mx) * kLog2e);
  m = mx;
}

constexpr int kRowThreads = 512;

// One block per row. Element j of the row is staged at row[shift + j], shift being the row's
// misalignment in elements, so the row's 16-byte packs in global and shared memory coincide.
// Every thread reads back only the packs and scalars it staged itself, so staging needs no
// barrier, and the loss is written by the thread that holds the target element. A barrier
// ends each row: the next row of a block (at another alignment) may stage over another
// thread's part of this one.
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    cross_entropy_forward_backward_kernel(float* losses, float* lse, T* dlogits,
                                          const float* dlosses, const T* logits,
                                          const int32_t* targets, int64_t n, int vocab,
                                          int ignore_index) {
  constexpr int kPack = Vec<T>::kWidth;
  constexpr float kLog2e = 1.4426950408889634f;
  extern __shared__ uint4 staged[];
  __shared__ float shared_m[32], shared_s[32];
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const T* xr = logits + row * vocab;
    T* dxr = dlogits + row * vocab;
    // [0, head) precede the row's first 16-byte boundary, [head, tail) are whole packs.
    const int shift = static_cast<int>(reinterpret_cast<uintptr_t>(xr) % 16 / sizeof(T));
    const int head = min(vocab, (kPack - shift) % kPack);
    const int packs = (vocab - head) / kPack;
    const int tail = head + packs * kPack;
    T* sr = reinterpret_cast<T*>(staged) + shift;
    const uint4* src = reinterpret_cast<const uint4*>(xr + head);
    uint4* sp = reinterpret_cast<uint4*>(sr + head);
    for (int p = threadIdx.x; p < packs; p += blockDim.x) cp_async_16(sp + p, src + p);
    // Fewer than kPack scalars at each end: thread i takes element i and element tail + i.
    const int i = threadIdx.x, ti = tail + threadIdx.x;
    if (i < head) sr[i] = xr[i];
    if (ti < vocab) sr[ti] = xr[ti];
    cp_async_wait_all();

    float m = -INFINITY, s = 0.0f;
    for (int p = threadIdx.x; p < packs; p += blockDim.x) {
      Vec<T> v;
      v.raw = sp[p];
      float x[kPack];
      for (int k = 0; k < kPack; ++k) x[k] = to_f32(v.x[k]);
      absorb(m, s, x);
    }
    if (i < head) absorb(m, s, {to_f32(sr[i])});
    if (ti < vocab) absorb(m, s, {to_f32(sr[ti])});

    block_merge(m, s, shared_m, shared_s);  // every thread gets the row's (max, sum)
    const float row_lse = m + logf(s);
    const int64_t target = target_of(targets, row, vocab, ignore_index);
    if (threadIdx.x == 0) {
      lse[row] = row_lse;
      if (target < 0) losses[row] = 0.0f;
    }

    const float dl = target < 0 ? 0.0f : dlosses[row];
    auto grad = [&](int j, T value) {
      if (target < 0) return from_f32<T>(0.0f);
      const float x = to_f32(value);
      float d = dl * exp2f((x - row_lse) * kLog2e);
      if (j == target) {
        d -= dl;
        losses[row] = row_lse - x;
      }
      return from_f32<T>(d);
    };
    uint4* dst = reinterpret_cast<uint4*>(dxr + head);
    for (int p = threadIdx.x; p < packs; p += blockDim.x) {
      Vec<T> v;
      v.raw = sp[p];
      for (int k = 0; k < kPack; ++k) v.x[k] = grad(head + p * kPack + k, v.x[k]);
      dst[p] = v.raw;
    }
    if (i < head) dxr[i] = grad(i, sr[i]);
    if (ti < vocab) dxr[ti] = grad(ti, sr[ti]);
    __syncthreads();  // also: every warp has read shared_*
  }
}

// The most dynamic shared memory a block of cross_entropy_forward_backward_kernel<T> takes
// on the current device: two blocks must fit on an SM, so that one block's loads overlap
// the other's arithmetic (a row alone on an SM would wait on HBM, then on the SM's exp
// unit, in turn). Granted to the kernel on the first call per device, with the carveout
// preferring shared memory so that 3 rows of 64 KiB fit on an SM (the kernel does not use
// L1).
template <typename T>
int64_t staged_row_limit() {
  static std::array<std::atomic<int>, kMaxDevices> limits{};
  const int device = current_device();
  SY_CHECK(device < kMaxDevices) << "device " << device;
  int limit = limits[device].load(std::memory_order_relaxed);
  if (limit == 0) {
    auto* kernel = cross_entropy_forward_backward_kernel<T>;
    int per_sm = 0, per_block = 0, reserved = 0;
    SY_CUDA_CHECK(
        cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
    SY_CUDA_CHECK(
        cudaDeviceGetAttribute(&per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    SY_CUDA_CHECK(
        cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, device));
    cudaFuncAttributes attributes;
    SY_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
    const int static_bytes = static_cast<int>(attributes.sharedSizeBytes);
    limit = std::min(per_block, per_sm / 2 - reserved) - static_bytes;
    SY_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit));
    SY_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                       cudaSharedmemCarveoutMaxShared));
    limits[device].store(limit, std::memory_order_relaxed);
  }
  return limit;
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

void cross_entropy_forward_backward(const Tensor& losses, const Tensor& lse, const Tensor& dlogits,
                                    const Tensor& dlosses, const Tensor& logits,
                                    const Tensor& targets, int ignore_index) {
  const int64_t n = logits.dim(0), vocab = logits.dim(1);
  if (n == 0) return;
  SY_CHECK(vocab > 0) << "cross_entropy over an empty vocabulary";
  use_device(logits);
  bool fused = false;
  dispatch_float(logits.dtype(), "cross_entropy logits", [&](auto tag) {
    using T = decltype(tag);
    constexpr int64_t kPack = Vec<T>::kWidth;
    // The row and up to kPack - 1 elements of misalignment before it, in whole packs.
    const int64_t packs = (vocab + kPack - 1) / kPack + 1, bytes = packs * 16;
    const uintptr_t gap =
        reinterpret_cast<uintptr_t>(ptr<T>(dlogits)) - reinterpret_cast<uintptr_t>(ptr<T>(logits));
    if (bytes > staged_row_limit<T>() || gap % 16 != 0) return;
    const int threads =
        static_cast<int>(std::clamp<int64_t>((packs + 31) / 32 * 32, 32, kRowThreads));
    cross_entropy_forward_backward_kernel<T><<<row_grid(n), threads, bytes, stream()>>>(
        ptr<float>(losses), ptr<float>(lse), ptr<T>(dlogits), ptr<float>(dlosses), ptr<T>(logits),
        ptr<int32_t>(targets), n, static_cast<int>(vocab), ignore_index);
    launch_check("cross_entropy_forward_backward_kernel");
    fused = true;
  });
  if (!fused) {
    cuda::cross_entropy_forward(losses, lse, logits, targets, ignore_index);
    cuda::cross_entropy_backward(dlogits, dlosses, logits, lse, targets, ignore_index);
  }
}

}  // namespace sy::cuda
