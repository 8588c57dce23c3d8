// AdamW on the GPU, elementwise over f32 param / grad / m / v (and the optional bf16 copy): m, v
// updated from g, bias-corrected by 1 - beta^step (formed on the host in double, as the CPU
// reference does), then p -= lr (m_hat / (sqrt(v_hat) + eps) + wd p), the decay applied to the
// parameter before this step's update (decoupled). Both launchers update each element with the
// same function (adamw_element), so one tensor alone and the same tensor among many come out
// bit for bit the same.
//
// adamw_step_many covers a whole model in one launch: the optimizer step is pure memory traffic
// (28 bytes per element, 30 with the copy), and one launch per tensor left the GPU idle between
// ~160 small kernels. The host writes a table of per-tensor descriptors and a list of chunks
// (tensor, chunk index) into pinned memory, uploads it with one asynchronous copy, and each
// block of the kernel updates chunks of kChunk elements with 16-byte loads and stores where the
// tensor's pointers allow them.
//
// The clip scale can come from device memory (AdamWParams::grad_scale_device), written by
// clip_scale_kernel from the gradients' squares: the optimizer then queues the squares, the
// scale and the update back to back, and builds and uploads the update's table while the GPU
// sums the squares, instead of waiting for the norm on the host first.
#include <cmath>
#include <cstddef>
#include <map>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/cuda/common.cuh"

namespace sy::cuda {
namespace {

// What every element of one step shares.
struct StepConstants {
  float lr, beta1, beta2, eps, correction1, correction2, grad_scale;
  const float* grad_scale_device;  // when set, grad_scale is read from here (with_scale)
};

StepConstants step_constants(const AdamWParams& p) {
  return {p.lr,
          p.beta1,
          p.beta2,
          p.eps,
          static_cast<float>(1.0 - std::pow(double{p.beta1}, p.step)),
          static_cast<float>(1.0 - std::pow(double{p.beta2}, p.step)),
          p.grad_scale,
          p.grad_scale_device};
}

// The constants with the scale in place: the one a kernel was given, or the one earlier work
// on the stream wrote to device memory (the same float either way, so the same update).
__device__ __forceinline__ StepConstants with_scale(StepConstants c) {
  if (c.grad_scale_device) c.grad_scale = *c.grad_scale_device;
  return c;
}

// One element: updates m and v in place and returns the new parameter. The expression and its
// order are the CPU reference's (kernels/cpu/adamw.cc).
__device__ __forceinline__ float adamw_element(float w, float g, float& m, float& v,
                                               float weight_decay, const StepConstants& c) {
  const float gi = g * c.grad_scale;
  m = c.beta1 * m + (1.0f - c.beta1) * gi;
  v = c.beta2 * v + (1.0f - c.beta2) * gi * gi;
  const float m_hat = m / c.correction1, v_hat = v / c.correction2;
  return w - c.lr * (m_hat / (sqrtf(v_hat) + c.eps) + weight_decay * w);
}

__device__ __forceinline__ void adamw_at(int64_t i, float* w, const float* g, float* m, float* v,
                                         __nv_bfloat16* copy, float weight_decay,
                                         const StepConstants& c) {
  float mi = m[i], vi = v[i];
  const float wi = adamw_element(w[i], g[i], mi, vi, weight_decay, c);
  m[i] = mi;
  v[i] = vi;
  w[i] = wi;
  if (copy) copy[i] = __float2bfloat16_rn(wi);
}

__global__ void adamw_kernel(float* w, const float* g, float* m, float* v, __nv_bfloat16* copy,
                             int64_t n, float weight_decay, StepConstants constants) {
  const StepConstants c = with_scale(constants);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    adamw_at(i, w, g, m, v, copy, weight_decay, c);
}

// --- many tensors -------------------------------------------------------------------------------

// Elements per chunk, one block's work: a multiple of 4, so a chunk of a tensor whose pointers
// are 16-byte aligned starts 16-byte aligned. 64K elements (1.8 MB of traffic) keep a block busy
// long enough to hide its start, and a 1.2B-parameter model still makes ~18K chunks to spread.
constexpr int64_t kChunk = int64_t{1} << 16;

struct TensorEntry {
  float* w;
  const float* g;
  float* m;
  float* v;
  __nv_bfloat16* copy;  // null: no compute copy
  int64_t n;
  float weight_decay;
  int32_t vectorized;  // w, g, m, v 16-byte and copy 8-byte aligned: float4 loads and stores
};
struct ChunkEntry {
  int32_t tensor;
  int32_t chunk;  // elements [chunk * kChunk, min(n, (chunk + 1) * kChunk))
};

// Four bf16 values for one 8-byte store.
struct alignas(8) Bf16x4 {
  __nv_bfloat162 lo, hi;
};

__global__ void adamw_many_kernel(const TensorEntry* tensors, const ChunkEntry* chunks,
                                  int64_t num_chunks, StepConstants constants) {
  const StepConstants c = with_scale(constants);
  for (int64_t k = blockIdx.x; k < num_chunks; k += gridDim.x) {
    const ChunkEntry chunk = chunks[k];
    const TensorEntry t = tensors[chunk.tensor];
    const int64_t begin = static_cast<int64_t>(chunk.chunk) * kChunk;
    const int64_t end = min(t.n, begin + kChunk);
    int64_t scalar_begin = begin;
    if (t.vectorized) {
      scalar_begin = end - (end - begin) % 4;
      for (int64_t i = begin + 4 * static_cast<int64_t>(threadIdx.x); i < scalar_begin;
           i += 4 * static_cast<int64_t>(blockDim.x)) {
        float4 w = *reinterpret_cast<const float4*>(t.w + i);
        const float4 g = *reinterpret_cast<const float4*>(t.g + i);
        float4 m = *reinterpret_cast<const float4*>(t.m + i);
        float4 v = *reinterpret_cast<const float4*>(t.v + i);
        w.x = adamw_element(w.x, g.x, m.x, v.x, t.weight_decay, c);
        w.y = adamw_element(w.y, g.y, m.y, v.y, t.weight_decay, c);
        w.z = adamw_element(w.z, g.z, m.z, v.z, t.weight_decay, c);
        w.w = adamw_element(w.w, g.w, m.w, v.w, t.weight_decay, c);
        *reinterpret_cast<float4*>(t.m + i) = m;
        *reinterpret_cast<float4*>(t.v + i) = v;
        *reinterpret_cast<float4*>(t.w + i) = w;
        if (t.copy) {
          *reinterpret_cast<Bf16x4*>(t.copy + i) =
              Bf16x4{__nv_bfloat162(__float2bfloat16_rn(w.x), __float2bfloat16_rn(w.y)),
                     __nv_bfloat162(__float2bfloat16_rn(w.z), __float2bfloat16_rn(w.w))};
        }
      }
    }
    // The tail of a vectorized chunk (fewer than 4), or all of a chunk that is not aligned.
    for (int64_t i = scalar_begin + threadIdx.x; i < end; i += blockDim.x)
      adamw_at(i, t.w, t.g, t.m, t.v, t.copy, t.weight_decay, c);
  }
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Pinned host memory the table is written into, one per thread and device. Its upload runs
// asynchronously, so a call waits for the previous call's upload (an event recorded after it)
// before rewriting the memory; that upload is long done by then, a whole step earlier.
class TableStaging {
 public:
  TableStaging() = default;
  TableStaging(const TableStaging&) = delete;
  TableStaging& operator=(const TableStaging&) = delete;
  ~TableStaging() {
    // At thread exit; nothing is waiting on either any more.
    if (uploaded_) cudaEventDestroy(uploaded_);
    if (host_) cudaFreeHost(host_);
  }
  // Host memory for `bytes`, free to write.
  std::byte* reserve(size_t bytes) {
    if (uploaded_) SY_CUDA_CHECK(cudaEventSynchronize(uploaded_));
    if (bytes > capacity_) {
      if (host_) SY_CUDA_CHECK(cudaFreeHost(host_));
      host_ = nullptr;
      SY_CUDA_CHECK(cudaMallocHost(&host_, bytes));
      capacity_ = bytes;
    }
    return static_cast<std::byte*>(host_);
  }
  // Copies the first `bytes` to `device_dst` on stream(), after the work already queued there.
  void upload(void* device_dst, size_t bytes) {
    SY_CUDA_CHECK(cudaMemcpyAsync(device_dst, host_, bytes, cudaMemcpyHostToDevice, stream()));
    if (!uploaded_) SY_CUDA_CHECK(cudaEventCreateWithFlags(&uploaded_, cudaEventDisableTiming));
    SY_CUDA_CHECK(cudaEventRecord(uploaded_, stream()));
  }

 private:
  void* host_ = nullptr;
  size_t capacity_ = 0;
  cudaEvent_t uploaded_ = nullptr;  // created on, and recorded on streams of, this device
};

TableStaging& table_staging(int device) {
  thread_local std::map<int, TableStaging> staging;
  return staging[device];
}

// --- the clip scale -----------------------------------------------------------------------------

// clip_scale (kernels/adamw.cc) from the squares, with the host's operations in the host's
// order: each part added up in index order, then the sqrt, the comparison and the division in
// double (IEEE-rounded on the GPU too; no multiply to contract) and one rounding to float.
// One block: its threads stage the squares in shared memory, thread 0 adds them.
__global__ void clip_scale_kernel(const double* squares, int64_t n, int64_t split, float clip,
                                  float* scale) {
  __shared__ double staged[kThreads];
  double a = 0.0, b = 0.0;
  for (int64_t base = 0; base < n; base += kThreads) {
    if (base + threadIdx.x < n) staged[threadIdx.x] = squares[base + threadIdx.x];
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int64_t i = base; i < min(n, base + kThreads); ++i)
        (i < split ? a : b) += staged[i - base];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double norm = sqrt(a + b);
    *scale = clip > 0 && norm > clip ? static_cast<float>(clip / (norm + 1e-6)) : 1.0f;
  }
}

}  // namespace

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const AdamWParams& p, const Tensor& copy) {
  const int64_t n = param.numel();
  if (n == 0) return;
  use_device(param);
  adamw_kernel<<<grid_for(n), kThreads, 0, stream()>>>(
      ptr<float>(param), ptr<float>(grad), ptr<float>(m), ptr<float>(v),
      copy.defined() ? ptr<__nv_bfloat16>(copy) : nullptr, n, p.weight_decay, step_constants(p));
  launch_check("adamw_kernel");
}

void adamw_step_many(const std::vector<AdamWTensors>& tensors, const AdamWParams& p) {
  int64_t num_chunks = 0;
  for (const AdamWTensors& t : tensors) num_chunks += (t.param.numel() + kChunk - 1) / kChunk;
  if (num_chunks == 0) return;
  SY_CHECK(tensors.size() <= INT32_MAX) << tensors.size() << " tensors in one adamw_step_many";
  const int device = use_device(tensors[0].param);

  // One buffer: the tensor entries, then the chunk entries (both 8-byte aligned).
  static_assert(sizeof(TensorEntry) % alignof(ChunkEntry) == 0);
  const size_t tensor_bytes = tensors.size() * sizeof(TensorEntry);
  const size_t bytes = tensor_bytes + static_cast<size_t>(num_chunks) * sizeof(ChunkEntry);
  TableStaging& staging = table_staging(device);
  std::byte* host = staging.reserve(bytes);
  auto* entries = reinterpret_cast<TensorEntry*>(host);
  auto* chunks = reinterpret_cast<ChunkEntry*>(host + tensor_bytes);
  int64_t k = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const AdamWTensors& t = tensors[i];
    const int64_t n = t.param.numel();
    TensorEntry e{};  // an empty tensor's entry stays zero: no chunk refers to it
    if (n > 0) {
      e = TensorEntry{ptr<float>(t.param),
                      ptr<float>(t.grad),
                      ptr<float>(t.m),
                      ptr<float>(t.v),
                      t.copy.defined() ? ptr<__nv_bfloat16>(t.copy) : nullptr,
                      n,
                      t.weight_decay,
                      0};
      e.vectorized = aligned(e.w, 16) && aligned(e.g, 16) && aligned(e.m, 16) && aligned(e.v, 16) &&
                     aligned(e.copy, 8);
    }
    entries[i] = e;
    const int64_t n_chunks = (n + kChunk - 1) / kChunk;
    SY_CHECK(n_chunks <= INT32_MAX)
        << "adamw_step_many tensors[" << i << "] has " << n << " elements, more than 2^31 chunks";
    for (int64_t j = 0; j < n_chunks; ++j)
      chunks[k++] = ChunkEntry{static_cast<int32_t>(i), static_cast<int32_t>(j)};
  }

  // Stream-ordered on stream(), as the launch: freed after the kernel has read it.
  Scratch table(bytes);
  staging.upload(table.as<std::byte>(), bytes);
  const auto* device_entries = table.as<const TensorEntry>();
  const auto* device_chunks =
      reinterpret_cast<const ChunkEntry*>(table.as<std::byte>() + tensor_bytes);
  adamw_many_kernel<<<row_grid(num_chunks), kThreads, 0, stream()>>>(device_entries, device_chunks,
                                                                     num_chunks, step_constants(p));
  launch_check("adamw_many_kernel");
}

void clip_scale_from_squares(const double* squares, int64_t n, int64_t split, float clip,
                             float* scale) {
  SY_CHECK(0 <= split && split <= n) << "clip_scale_from_squares split " << split << " of " << n;
  clip_scale_kernel<<<1, kThreads, 0, stream()>>>(squares, n, split, clip, scale);
  launch_check("clip_scale_kernel");
}

}  // namespace sy::cuda
