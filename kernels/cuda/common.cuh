#pragma once
// Helpers shared by the CUDA files in kernels/cuda/: a check for CUDA runtime calls, a
// check after each kernel launch, grid sizing that stays inside CUDA's limits, the
// element-type plumbing (f32 / bf16 loads and stores with fp32 arithmetic) and 16-byte
// vectors for the memory-bound kernels.
// Usable only when SWITCHYARD_HAVE_CUDA is defined (these files are compiled only then).
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <initializer_list>

#include "kernels/check.h"
#include "kernels/cuda/stream_state.h"
#include "kernels/tensor.h"

namespace sy::cuda {

// Call right after a <<<...>>> launch: a bad configuration (too many threads, too much
// shared memory, a grid past the limits) only shows up in cudaGetLastError.
inline void launch_check(const char* kernel) {
  cudaError_t err = cudaGetLastError();
  SY_CHECK(err == cudaSuccess) << kernel << " launch: " << cudaGetErrorName(err) << " ("
                               << cudaGetErrorString(err) << ")";
}

// stream(): the stream every op runs on (kernels/cuda/stream_state.h). CUDA tensors are
// allocated and freed on the per-thread default stream (kernels/tensor.cc); a side stream
// only ever runs work between a fork from it and a join back into it.

// Makes the tensor's GPU current (a no-op when it already is) and returns its index, so an
// op runs where its tensors live whichever device the thread used last.
inline int use_device(const Tensor& t) {
  set_device(t.device().index);
  return t.device().index;
}

constexpr int kThreads = 256;
// 1-D grids for grid-stride loops: enough blocks to fill the GPU, never past gridDim.x's
// limit, so any n (including n > 2^31) is covered by the stride loop.
constexpr int64_t kMaxBlocks = 65535LL * 16;
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, kMaxBlocks));
}
// Row-wise kernels launch one block per row on grid.x (limit 2^31-1); rows beyond that
// are walked by a row-stride loop inside the kernel.
constexpr int64_t kMaxRowBlocks = (1LL << 31) - 1;
inline unsigned row_grid(int64_t rows) {
  return static_cast<unsigned>(std::clamp<int64_t>(rows, 1, kMaxRowBlocks));
}

// f32 / bf16 element access with fp32 arithmetic.
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Four bf16 values for one 8-byte load or store.
struct alignas(8) Bf16x4 {
  __nv_bfloat162 lo, hi;
};

// Four consecutive elements, widened to f32 on loading and rounded to nearest even on storing:
// one 16-byte access for f32, one 8-byte access for bf16 (the pointer aligned to it).
__device__ __forceinline__ float4 load4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
  const Bf16x4 b = *reinterpret_cast<const Bf16x4*>(p);
  return float4{__low2float(b.lo), __high2float(b.lo), __low2float(b.hi), __high2float(b.hi)};
}
__device__ __forceinline__ void store4(float* p, float4 x) { *reinterpret_cast<float4*>(p) = x; }
__device__ __forceinline__ void store4(__nv_bfloat16* p, float4 x) {
  *reinterpret_cast<Bf16x4*>(p) =
      Bf16x4{__nv_bfloat162(__float2bfloat16_rn(x.x), __float2bfloat16_rn(x.y)),
             __nv_bfloat162(__float2bfloat16_rn(x.z), __float2bfloat16_rn(x.w))};
}

// Eight bf16 or four f32 in one 16-byte word: one 128-bit load or store moves a vector. A
// memory-bound kernel moving 2-byte scalars leaves most of the bandwidth unused.
template <typename T>
union Vec {
  static constexpr int kWidth = 16 / sizeof(T);
  uint4 raw;
  T x[kWidth];
};

// Whether p is a multiple of `bytes` (the width of the accesses a kernel makes from it).
inline bool aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Whether every base is 16-byte aligned, so that Vec loads and stores at whole-vector
// offsets from it are legal.
inline bool aligned16(std::initializer_list<const void*> bases) {
  for (const void* p : bases)
    if (!aligned(p, 16)) return false;
  return true;
}

// Whether rows of `width` elements can be moved as whole vectors: width a whole number of
// vectors and every base 16-byte aligned (row strides are then multiples of 16 bytes too).
template <typename T>
bool vectorizable(int64_t width, std::initializer_list<const void*> bases) {
  return width % Vec<T>::kWidth == 0 && aligned16(bases);
}

// Typed device pointer of a tensor: float for f32, __nv_bfloat16 for bf16 (sy::bf16 is
// bit-compatible with __nv_bfloat16).
template <typename T>
T* ptr(const Tensor& t);
template <>
inline float* ptr<float>(const Tensor& t) {
  return t.data<float>();
}
template <>
inline __nv_bfloat16* ptr<__nv_bfloat16>(const Tensor& t) {
  return reinterpret_cast<__nv_bfloat16*>(t.data<bf16>());
}
template <>
inline int32_t* ptr<int32_t>(const Tensor& t) {
  return t.data<int32_t>();
}

// Calls f(T{}) with T = float for f32 tensors and __nv_bfloat16 for bf16 ones, so a host
// launcher picks its kernel's element type once: dispatch_float(x.dtype(), "op", [&](auto t) {
// using T = decltype(t); ... }).
template <typename F>
void dispatch_float(DType dtype, const char* what, F&& f) {
  switch (dtype) {
    case DType::kF32:
      return f(float{});
    case DType::kBF16:
      return f(__nv_bfloat16{});
    default:
      SY_CHECK(false) << what << " takes f32 or bf16, got " << dtype_name(dtype);
  }
}

// Stream-ordered scratch memory for a launcher (reductions' partial sums, sort buffers,
// tables), costing no synchronisation. On the per-thread stream it is a tensor block from the
// allocator's cache of freed blocks (kernels/block_cache.h: scratch sizes repeat every step,
// and a pool call costs the host microseconds); on a side stream it comes from the
// cudaMallocAsync pool, ordered on that stream.
class Scratch {
 public:
  explicit Scratch(size_t bytes) {
    if (bytes == 0) return;
    if (stream() == cudaStreamPerThread) {
      block_ = Tensor::empty({static_cast<int64_t>((bytes + 3) / 4)}, DType::kI32,
                             Device::cuda(current_device()));
      ptr_ = block_.raw();
    } else {
      side_ = stream();
      SY_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, side_));
    }
  }
  ~Scratch() {
    if (side_) cudaFreeAsync(ptr_, side_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  Tensor block_;                 // the per-thread stream's case
  cudaStream_t side_ = nullptr;  // the side stream's case
  void* ptr_ = nullptr;
};

// Streaming multiprocessors of the current device: sizes grids of partial reductions.
// Asked of the runtime once per device.
inline int sm_count() {
  static std::array<std::atomic<int>, kMaxDevices> counts{};
  const int device = current_device();
  SY_CHECK(device < kMaxDevices) << "device " << device;
  int count = counts[device].load(std::memory_order_relaxed);
  if (count == 0) {
    SY_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    counts[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

// Block-wide reductions over fp32 (blockDim.x a multiple of 32, at most 1024). Every
// thread gets the result. `shared` needs 32 floats; the call syncs before reuse.
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float block_sum(float v, float* shared) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // shared may still be read by a previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : 0.0f;
  return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* shared) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : -INFINITY;
  return warp_max(v);
}

}  // namespace sy::cuda
