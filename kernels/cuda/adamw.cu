// AdamW on the GPU, elementwise over f32 param / grad, f32 or bf16 m / v (and the optional bf16
// copy): m, v updated from g, bias-corrected by 1 - beta^step (formed on the host in double, as
// the CPU reference does), then p -= lr (m_hat / (sqrt(v_hat) + eps) + wd p), the decay applied
// to the parameter before this step's update (decoupled). bf16 moments are widened on loading
// and rounded to nearest even on storing, the update in between the f32 one, as on the CPU. Both
// launchers update each element with the same function (adamw_element), so one tensor alone and
// the same tensor among many come out bit for bit the same.
//
// adamw_step_many covers a whole model in one launch: the optimizer step is pure memory traffic
// (28 bytes per element with f32 moments, 20 with bf16 ones, 2 more with the copy), and one
// launch per tensor left the GPU idle between ~160 small kernels. The host writes a table of
// per-tensor descriptors and a list of chunks (tensor, chunk index) into pinned memory, uploads
// it with one asynchronous copy, and each block of the kernel updates chunks of kChunk elements
// four at a time (16-byte loads and stores of f32, 8-byte ones of bf16) where the tensor's
// pointers allow them.
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
#include "kernels/cuda/pinned_block.h"

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
// order are the CPU reference's (kernels/cpu/adamw.cc), each product and sum rounded on its own:
// __fmul_rn / __fadd_rn are never contracted into fused multiply-adds, which the compiler
// otherwise forms differently in the two kernels' contexts (on the H200 a bf16-moment step then
// differed by an ulp between adamw_kernel and adamw_many_kernel, and a moment landed on the
// other side of a bf16 rounding boundary). Unfused, every launcher computes the same roundings,
// and the same as the CPU, which does not fuse either.
__device__ __forceinline__ float adamw_element(float w, float g, float& m, float& v,
                                               float weight_decay, const StepConstants& c) {
  const float gi = __fmul_rn(g, c.grad_scale);
  m = __fadd_rn(__fmul_rn(c.beta1, m), __fmul_rn(1.0f - c.beta1, gi));
  v = __fadd_rn(__fmul_rn(c.beta2, v), __fmul_rn(__fmul_rn(1.0f - c.beta2, gi), gi));
  const float m_hat = __fdiv_rn(m, c.correction1), v_hat = __fdiv_rn(v, c.correction2);
  const float step =
      __fadd_rn(__fdiv_rn(m_hat, __fadd_rn(__fsqrt_rn(v_hat), c.eps)), __fmul_rn(weight_decay, w));
  return __fsub_rn(w, __fmul_rn(c.lr, step));
}

// M: the moments' storage, float or __nv_bfloat16.
template <typename M>
__device__ __forceinline__ void adamw_at(int64_t i, float* w, const float* g, M* m, M* v,
                                         __nv_bfloat16* copy, float weight_decay,
                                         const StepConstants& c) {
  float mi = to_f32(m[i]), vi = to_f32(v[i]);
  const float wi = adamw_element(w[i], g[i], mi, vi, weight_decay, c);
  m[i] = from_f32<M>(mi);
  v[i] = from_f32<M>(vi);
  w[i] = wi;
  if (copy) copy[i] = __float2bfloat16_rn(wi);
}

template <typename M>
__global__ void adamw_kernel(float* w, const float* g, M* m, M* v, __nv_bfloat16* copy, int64_t n,
                             float weight_decay, StepConstants constants) {
  const StepConstants c = with_scale(constants);
  if (!isfinite(c.grad_scale)) return;  // a diverged step (clip scale of a non-finite norm)
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    adamw_at(i, w, g, m, v, copy, weight_decay, c);
}

// --- many tensors -------------------------------------------------------------------------------

// Elements per chunk, one block's work: a multiple of 4, so a chunk of a tensor whose pointers
// are 16-byte aligned starts 16-byte aligned. 64K elements (1.8 MB of traffic) keep a block busy
// long enough to hide its start, and a 1.2B-parameter model still makes ~18K chunks to spread.
constexpr int64_t kChunk = int64_t{1} << 16;

template <typename M>
struct TensorEntry {
  float* w;
  const float* g;
  M* m;
  M* v;
  __nv_bfloat16* copy;  // null: no compute copy
  int64_t n;
  float weight_decay;
  // w, g 16-byte aligned, m, v aligned to four moments (16 bytes f32, 8 bf16), copy 8-byte
  // aligned: four elements per load and store.
  int32_t vectorized;
};
struct ChunkEntry {
  int32_t tensor;
  int32_t chunk;  // elements [chunk * kChunk, min(n, (chunk + 1) * kChunk))
};

template <typename M>
__global__ void adamw_many_kernel(const TensorEntry<M>* tensors, const ChunkEntry* chunks,
                                  int64_t num_chunks, StepConstants constants) {
  const StepConstants c = with_scale(constants);
  if (!isfinite(c.grad_scale)) return;  // a diverged step (clip scale of a non-finite norm)
  for (int64_t k = blockIdx.x; k < num_chunks; k += gridDim.x) {
    const ChunkEntry chunk = chunks[k];
    const TensorEntry<M> t = tensors[chunk.tensor];
    const int64_t begin = static_cast<int64_t>(chunk.chunk) * kChunk;
    const int64_t end = min(t.n, begin + kChunk);
    int64_t scalar_begin = begin;
    if (t.vectorized) {
      scalar_begin = end - (end - begin) % 4;
      for (int64_t i = begin + 4 * static_cast<int64_t>(threadIdx.x); i < scalar_begin;
           i += 4 * static_cast<int64_t>(blockDim.x)) {
        float4 w = load4(t.w + i);
        const float4 g = load4(t.g + i);
        float4 m = load4(t.m + i);
        float4 v = load4(t.v + i);
        w.x = adamw_element(w.x, g.x, m.x, v.x, t.weight_decay, c);
        w.y = adamw_element(w.y, g.y, m.y, v.y, t.weight_decay, c);
        w.z = adamw_element(w.z, g.z, m.z, v.z, t.weight_decay, c);
        w.w = adamw_element(w.w, g.w, m.w, v.w, t.weight_decay, c);
        store4(t.m + i, m);
        store4(t.v + i, v);
        store4(t.w + i, w);
        if (t.copy) store4(t.copy + i, w);
      }
    }
    // The tail of a vectorized chunk (fewer than 4), or all of a chunk that is not aligned.
    for (int64_t i = scalar_begin + threadIdx.x; i < end; i += blockDim.x)
      adamw_at(i, t.w, t.g, t.m, t.v, t.copy, t.weight_decay, c);
  }
}

// Pinned host memory the table is written into, one per thread and device. Its upload runs
// asynchronously, so a call waits for the previous call's upload before rewriting the memory
// (PinnedBlock::prepare); that upload is long done by then, a whole step earlier.
PinnedBlock& table_staging(int device) {
  thread_local std::map<int, PinnedBlock> staging;
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
    *scale = !isfinite(norm)            ? static_cast<float>(NAN)
             : clip > 0 && norm > clip ? static_cast<float>(clip / (norm + 1e-6)) : 1.0f;
  }
}

}  // namespace

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const AdamWParams& p, const Tensor& copy) {
  const int64_t n = param.numel();
  if (n == 0) return;
  use_device(param);
  dispatch_float(m.dtype(), "adamw moments", [&](auto moment) {
    using M = decltype(moment);
    adamw_kernel<M><<<grid_for(n), kThreads, 0, stream()>>>(
        ptr<float>(param), ptr<float>(grad), ptr<M>(m), ptr<M>(v),
        copy.defined() ? ptr<__nv_bfloat16>(copy) : nullptr, n, p.weight_decay, step_constants(p));
  });
  launch_check("adamw_kernel");
}

namespace {

// adamw_step_many with moments of type M (all entries': adamw_step_many checks them).
template <typename M>
void adamw_many(const std::vector<AdamWTensors>& tensors, const AdamWParams& p) {
  using Entry = TensorEntry<M>;
  int64_t num_chunks = 0;
  for (const AdamWTensors& t : tensors) num_chunks += (t.param.numel() + kChunk - 1) / kChunk;
  if (num_chunks == 0) return;
  SY_CHECK(tensors.size() <= INT32_MAX) << tensors.size() << " tensors in one adamw_step_many";
  const int device = use_device(tensors[0].param);

  // One buffer: the tensor entries, then the chunk entries (both 8-byte aligned).
  static_assert(sizeof(Entry) % alignof(ChunkEntry) == 0);
  const size_t tensor_bytes = tensors.size() * sizeof(Entry);
  const size_t bytes = tensor_bytes + static_cast<size_t>(num_chunks) * sizeof(ChunkEntry);
  PinnedBlock& staging = table_staging(device);
  auto* host = static_cast<std::byte*>(staging.prepare(bytes));
  auto* entries = reinterpret_cast<Entry*>(host);
  auto* chunks = reinterpret_cast<ChunkEntry*>(host + tensor_bytes);
  int64_t k = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const AdamWTensors& t = tensors[i];
    const int64_t n = t.param.numel();
    Entry e{};  // an empty tensor's entry stays zero: no chunk refers to it
    if (n > 0) {
      e = Entry{ptr<float>(t.param),
                ptr<float>(t.grad),
                ptr<M>(t.m),
                ptr<M>(t.v),
                t.copy.defined() ? ptr<__nv_bfloat16>(t.copy) : nullptr,
                n,
                t.weight_decay,
                0};
      e.vectorized = aligned(e.w, 16) && aligned(e.g, 16) && aligned(e.m, 4 * sizeof(M)) &&
                     aligned(e.v, 4 * sizeof(M)) && aligned(e.copy, 8);
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
  SY_CUDA_CHECK(cudaMemcpyAsync(table.as<std::byte>(), staging.host, bytes, cudaMemcpyHostToDevice,
                                stream()));
  staging.record(stream());
  const auto* device_entries = table.as<const Entry>();
  const auto* device_chunks =
      reinterpret_cast<const ChunkEntry*>(table.as<std::byte>() + tensor_bytes);
  adamw_many_kernel<M><<<row_grid(num_chunks), kThreads, 0, stream()>>>(
      device_entries, device_chunks, num_chunks, step_constants(p));
  launch_check("adamw_many_kernel");
}

}  // namespace

void adamw_step_many(const std::vector<AdamWTensors>& tensors, const AdamWParams& p) {
  if (tensors.empty()) return;
  dispatch_float(tensors[0].m.dtype(), "adamw_step_many moments",
                 [&](auto moment) { adamw_many<decltype(moment)>(tensors, p); });
}

void clip_scale_from_squares(const double* squares, int64_t n, int64_t split, float clip,
                             float* scale) {
  SY_CHECK(0 <= split && split <= n) << "clip_scale_from_squares split " << split << " of " << n;
  clip_scale_kernel<<<1, kThreads, 0, stream()>>>(squares, n, split, clip, scale);
  launch_check("clip_scale_kernel");
}

}  // namespace sy::cuda
