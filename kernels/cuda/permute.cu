// Token permutation by expert on the GPU; the contract is the CPU reference's
// (kernels/cpu/permute.cc). Activations are f32 or bf16 (one type per call), gate weights f32,
// and every sum accumulates in fp32.
//
// The plan is a stable counting sort of the N*k slots by expert, deterministic and without
// atomics on the ranks:
//   1. rank: one warp per chunk of kPlanChunk slots walks its chunk in order, 32 slots at a
//      time; __match_any_sync finds the lanes with the same expert, so each slot gets its
//      rank among the chunk's earlier slots of that expert. The chunk's per-expert counts go
//      to a [chunks, E] table.
//   2. offsets: one warp per expert turns its column of the table into chunk bases (an
//      exclusive scan over chunks) and its total, capped at the capacity; then one thread
//      scans the capped totals over experts.
//   3. place: slot s of expert e has rank base[chunk, e] + local rank; it is kept when the
//      rank is below the capacity, at row offset[e] + rank;
//   4. the host collects the E + 1 offsets, copied back after step 2 (finish_dispatch_plan
//      waits for that copy alone, so the GPU can run the place and what follows meanwhile).
// Indices outside [0, E) are counted in step 1, dropped in step 3 and reported by the host in
// step 4.
//
// permute gathers token rows into plan order; permute's backward sums, per token, its kept
// rows in slot order j = 0..k-1 (the CPU's order, no atomics, so results repeat bit for bit).
// unpermute sums w * y over a token's kept slots in the same order; its backward writes
// dy = w * dout per row and dweights = <dout, y> per slot (a fixed-shape warp reduction).
// Where the rows are whole 16-byte vectors (common.cuh's vectorizable), the four row kernels
// run one warp per row moving vectors: the same sums in the same order per element (the
// dweights dot is split over the lanes differently, still in a fixed order).
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/permute.h"

namespace sy::cuda {
namespace {

constexpr int kPlanChunk = 256;        // slots one warp ranks in order
constexpr int kMaxPlanExperts = 8192;  // one warp's running counts fit in 32 KB of shared memory
constexpr int kRowThreads = 128;       // threads per row in the gather / scatter kernels
constexpr int kSlotWarps = 8;          // slots (warps) per block in the dweights kernel
constexpr int kVecRowWarps = 8;        // rows (warps) per block in the vector row kernels

__global__ void plan_rank_kernel(const int32_t* expert, int64_t slots, int experts, int32_t* rank,
                                 int32_t* chunk_counts, unsigned long long* invalid) {
  extern __shared__ int32_t running[];  // [experts]: slots of each expert seen so far
  const int lane = threadIdx.x;         // one warp per block
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kPlanChunk;
  const int64_t end = min(begin + kPlanChunk, slots);
  for (int e = lane; e < experts; e += 32) running[e] = 0;
  __syncwarp();
  for (int64_t first = begin; first < end; first += 32) {
    const int64_t s = first + lane;
    const int e = s < end ? expert[s] : -1;
    const bool valid = e >= 0 && e < experts;
    if (s < end && !valid) atomicAdd(invalid, 1ull);
    const unsigned peers = __match_any_sync(0xffffffffu, valid ? e : -1);
    const int before = __popc(peers & ((1u << lane) - 1u));  // earlier lanes, same expert
    const int seen = valid ? running[e] : 0;
    __syncwarp();  // all peers have read running[e]
    if (valid) {
      rank[s] = seen + before;
      if (before == 0) running[e] = seen + __popc(peers);
    }
    __syncwarp();
  }
  for (int e = lane; e < experts; e += 32) {
    chunk_counts[static_cast<int64_t>(blockIdx.x) * experts + e] = running[e];
  }
}

// One block. chunk_counts [chunks, E] becomes each chunk's base rank per expert;
// offsets [E + 1] gets the exclusive prefix sum of the capped per-expert totals. One warp per
// expert scans its column 32 chunks at a time (integer sums: exact, in any order), then one
// thread scans the capped totals over experts.
__global__ void plan_offsets_kernel(int32_t* chunk_counts, int64_t chunks, int experts,
                                    int64_t capacity, int64_t* offsets, int32_t* row_slot,
                                    int64_t slots) {
  const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  // Rows of slots whose index was outside [0, E) are never placed: slot 0 stands in for them
  // until finish_dispatch_plan reports the indices.
  for (int64_t r = threadIdx.x; r < slots; r += blockDim.x) row_slot[r] = 0;
  for (int e = threadIdx.x / 32; e < experts; e += warps) {
    int64_t total = 0;  // the column's sum over the chunks before this piece
    for (int64_t c0 = 0; c0 < chunks; c0 += 32) {
      const int64_t c = c0 + lane;
      int32_t* count = chunk_counts + c * experts + e;
      const int64_t n = c < chunks ? *count : 0;
      int64_t inclusive = n;
      for (int o = 1; o < 32; o <<= 1) {
        const int64_t up = __shfl_up_sync(0xffffffffu, inclusive, o);
        if (lane >= o) inclusive += up;
      }
      if (c < chunks) *count = static_cast<int32_t>(total + inclusive - n);
      total += __shfl_sync(0xffffffffu, inclusive, 31);
    }
    if (lane == 0) offsets[e + 1] = capacity < 0 ? total : min(total, capacity);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    offsets[0] = 0;
    for (int e = 0; e < experts; ++e) offsets[e + 1] += offsets[e];
  }
}

__global__ void plan_place_kernel(const int32_t* expert, int64_t slots, int experts,
                                  int64_t capacity, const int32_t* rank, const int32_t* chunk_base,
                                  const int64_t* offsets, int32_t* slot_row, int32_t* row_slot) {
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < slots;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int e = expert[s];
    if (e < 0 || e >= experts) {  // counted by plan_rank_kernel, reported by the host
      slot_row[s] = -1;
      continue;
    }
    const int64_t r = chunk_base[s / kPlanChunk * experts + e] + rank[s];
    const bool kept = capacity < 0 || r < capacity;
    const int32_t row = kept ? static_cast<int32_t>(offsets[e] + r) : -1;
    slot_row[s] = row;
    if (kept) row_slot[row] = static_cast<int32_t>(s);
  }
}

// out[r, :] = x[row_slot[r] / k, :]; one block per row (a row-stride loop past the grid).
template <typename T>
__global__ void permute_forward_kernel(T* out, const T* x, const int32_t* row_slot, int64_t rows,
                                       int64_t d, int k) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* src = x + static_cast<int64_t>(row_slot[r] / k) * d;
    T* dst = out + r * d;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) dst[c] = src[c];
  }
}

// dx[n, :] = sum over j of dout[slot_row[n k + j], :], kept slots only, in j order.
template <typename T>
__global__ void permute_backward_kernel(T* dx, const T* dout, const int32_t* slot_row,
                                        int64_t tokens, int64_t d, int k) {
  for (int64_t n = blockIdx.x; n < tokens; n += gridDim.x) {
    const int32_t* rows = slot_row + n * k;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      float acc = 0.0f;
      for (int j = 0; j < k; ++j) {
        if (rows[j] >= 0) acc += to_f32(dout[static_cast<int64_t>(rows[j]) * d + c]);
      }
      dx[n * d + c] = from_f32<T>(acc);
    }
  }
}

// out[n, :] = sum over kept j of w[n k + j] * y[slot_row[n k + j], :], in j order. The
// products are rounded before the sum (no fused multiply-add), as the CPU does.
template <typename T>
__global__ void unpermute_forward_kernel(T* out, const T* y, const float* weights,
                                         const int32_t* slot_row, int64_t tokens, int64_t d,
                                         int k) {
  for (int64_t n = blockIdx.x; n < tokens; n += gridDim.x) {
    const int32_t* rows = slot_row + n * k;
    const float* w = weights + n * k;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      float acc = 0.0f;
      for (int j = 0; j < k; ++j) {
        if (rows[j] < 0) continue;
        acc = __fadd_rn(acc, __fmul_rn(w[j], to_f32(y[static_cast<int64_t>(rows[j]) * d + c])));
      }
      out[n * d + c] = from_f32<T>(acc);
    }
  }
}

// One warp per slot: dweights[s] = <dout[s / k], y[row]> (0 when dropped), and
// dy[row, :] = w[s] * dout[s / k, :].
template <typename T>
__global__ void unpermute_backward_kernel(T* dy, float* dweights, const T* dout, const T* y,
                                          const float* weights, const int32_t* slot_row,
                                          int64_t slots, int64_t d, int k) {
  const int lane = threadIdx.x % 32;
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * kSlotWarps + threadIdx.x / 32; s < slots;
       s += static_cast<int64_t>(gridDim.x) * kSlotWarps) {
    const int32_t r = slot_row[s];
    float dot = 0.0f;
    if (r >= 0) {
      const T* g = dout + s / k * d;
      const T* yr = y + static_cast<int64_t>(r) * d;
      T* dyr = dy + static_cast<int64_t>(r) * d;
      const float w = weights[s];
      for (int64_t c = lane; c < d; c += 32) {
        const float gc = to_f32(g[c]);
        dot = fmaf(gc, to_f32(yr[c]), dot);
        dyr[c] = from_f32<T>(w * gc);
      }
    }
    dot = warp_sum(dot);
    if (lane == 0) dweights[s] = dot;
  }
}

// The vector row kernels: warp w of the grid takes rows w, w + warps, ...; lane l moves
// vectors l, l + 32, ... of a row of dv vectors.
#define SY_WARP_ROWS(r, rows)                                                                      \
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kVecRowWarps + threadIdx.x / 32; r < (rows); \
       r += static_cast<int64_t>(gridDim.x) * kVecRowWarps)

template <typename T>
__global__ void permute_forward_vec_kernel(T* out, const T* x, const int32_t* row_slot,
                                           int64_t rows, int64_t d, int k) {
  const int64_t dv = d / Vec<T>::kWidth;
  SY_WARP_ROWS(r, rows) {
    const uint4* src =
        reinterpret_cast<const uint4*>(x + static_cast<int64_t>(row_slot[r] / k) * d);
    uint4* dst = reinterpret_cast<uint4*>(out + r * d);
    for (int64_t c = threadIdx.x % 32; c < dv; c += 32) dst[c] = src[c];
  }
}

// out[n] = the sum over j < k of weight_j * src[slot_row[n * k + j]] (rows < 0 skipped), a
// weight of 1 where `weights` is null, each product and sum rounded on its own (so an
// unweighted row is added as it is): the gather of the permute's backward and of the
// unpermute's forward, one warp per token row in 16-byte vectors.
template <typename T>
__device__ __forceinline__ void gather_rows_vec(T* out, const T* src, const float* weights,
                                                const int32_t* slot_row, int64_t tokens, int64_t d,
                                                int k) {
  constexpr int W = Vec<T>::kWidth;
  const int64_t dv = d / W;
  SY_WARP_ROWS(n, tokens) {
    const int32_t* rows = slot_row + n * k;
    for (int64_t c = threadIdx.x % 32; c < dv; c += 32) {
      float acc[W] = {};
      for (int j = 0; j < k; ++j) {
        if (rows[j] < 0) continue;
        const float wj = weights ? weights[n * k + j] : 1.0f;
        Vec<T> v;
        v.raw = reinterpret_cast<const uint4*>(src + static_cast<int64_t>(rows[j]) * d)[c];
#pragma unroll
        for (int w = 0; w < W; ++w) acc[w] = __fadd_rn(acc[w], __fmul_rn(wj, to_f32(v.x[w])));
      }
      Vec<T> o;
#pragma unroll
      for (int w = 0; w < W; ++w) o.x[w] = from_f32<T>(acc[w]);
      reinterpret_cast<uint4*>(out + n * d)[c] = o.raw;
    }
  }
}

template <typename T>
__global__ void permute_backward_vec_kernel(T* dx, const T* dout, const int32_t* slot_row,
                                            int64_t tokens, int64_t d, int k) {
  gather_rows_vec(dx, dout, nullptr, slot_row, tokens, d, k);
}

template <typename T>
__global__ void unpermute_forward_vec_kernel(T* out, const T* y, const float* weights,
                                             const int32_t* slot_row, int64_t tokens, int64_t d,
                                             int k) {
  gather_rows_vec(out, y, weights, slot_row, tokens, d, k);
}

template <typename T>
__global__ void unpermute_backward_vec_kernel(T* dy, float* dweights, const T* dout, const T* y,
                                              const float* weights, const int32_t* slot_row,
                                              int64_t slots, int64_t d, int k) {
  constexpr int W = Vec<T>::kWidth;
  const int64_t dv = d / W;
  SY_WARP_ROWS(s, slots) {
    const int32_t r = slot_row[s];
    float dot = 0.0f;
    if (r >= 0) {
      const uint4* g = reinterpret_cast<const uint4*>(dout + s / k * d);
      const uint4* yr = reinterpret_cast<const uint4*>(y + static_cast<int64_t>(r) * d);
      uint4* dyr = reinterpret_cast<uint4*>(dy + static_cast<int64_t>(r) * d);
      const float w = weights[s];
      for (int64_t c = threadIdx.x % 32; c < dv; c += 32) {
        Vec<T> gv, yv, o;
        gv.raw = g[c];
        yv.raw = yr[c];
#pragma unroll
        for (int i = 0; i < W; ++i) {
          const float gc = to_f32(gv.x[i]);
          dot = fmaf(gc, to_f32(yv.x[i]), dot);
          o.x[i] = from_f32<T>(w * gc);
        }
        dyr[c] = o.raw;
      }
    }
    dot = warp_sum(dot);
    if (threadIdx.x % 32 == 0) dweights[s] = dot;
  }
}

#undef SY_WARP_ROWS

unsigned vec_row_grid(int64_t rows) {
  return static_cast<unsigned>(
      std::clamp<int64_t>((rows + kVecRowWarps - 1) / kVecRowWarps, 1, kMaxRowBlocks));
}

int row_threads(int64_t d) {
  return static_cast<int>(std::clamp<int64_t>((d + 31) / 32 * 32, 32, kRowThreads));
}

}  // namespace

DispatchPlan start_dispatch_plan(const Tensor& indices, int num_experts, int64_t capacity,
                                 PlanReadback readback) {
  SY_CHECK(num_experts <= kMaxPlanExperts) << "make_dispatch_plan on CUDA takes at most "
                                           << kMaxPlanExperts << " experts, got " << num_experts;
  SY_CHECK(indices.numel() < (1LL << 31))
      << "make_dispatch_plan: " << indices.numel() << " slots do not fit i32 rows";
  DispatchPlan plan;
  plan.num_tokens = indices.dim(0);
  plan.top_k = static_cast<int>(indices.dim(1));
  plan.num_experts = num_experts;
  const int64_t slots = indices.numel();
  const Device device = indices.device();
  use_device(indices);

  const int64_t chunks = (slots + kPlanChunk - 1) / kPlanChunk;
  Scratch rank(static_cast<size_t>(slots) * sizeof(int32_t));
  Scratch chunk_counts(static_cast<size_t>(chunks * num_experts) * sizeof(int32_t));
  // offsets [E + 1], then the count of indices outside [0, E).
  Tensor summary = Tensor::empty({num_experts + 2}, DType::kI64, device);
  int64_t* offsets = summary.data<int64_t>();
  SY_CUDA_CHECK(cudaMemsetAsync(offsets, 0, (num_experts + 2) * sizeof(int64_t), stream()));
  if (chunks > 0) {
    plan_rank_kernel<<<static_cast<unsigned>(chunks), 32, num_experts * sizeof(int32_t),
                       stream()>>>(
        ptr<int32_t>(indices), slots, num_experts, rank.as<int32_t>(), chunk_counts.as<int32_t>(),
        reinterpret_cast<unsigned long long*>(offsets + num_experts + 1));
    launch_check("plan_rank_kernel");
  }
  // row_slot is sized for every slot kept; finish_dispatch_plan trims it to the kept rows.
  plan.slot_row = Tensor::empty({slots}, DType::kI32, device);
  plan.row_slot = Tensor::empty({slots}, DType::kI32, device);
  plan_offsets_kernel<<<1, 1024, 0, stream()>>>(chunk_counts.as<int32_t>(), chunks, num_experts,
                                                capacity, offsets, ptr<int32_t>(plan.row_slot),
                                                slots);
  launch_check("plan_offsets_kernel");
  if (readback == PlanReadback::kHost) {
    plan.pending = std::make_shared<HostReadback>(summary);
  } else {
    plan.device_only = true;
  }
  plan.device_offsets = summary.rows(0, num_experts + 1);
  if (slots > 0) {
    plan_place_kernel<<<grid_for(slots), kThreads, 0, stream()>>>(
        ptr<int32_t>(indices), slots, num_experts, capacity, rank.as<int32_t>(),
        chunk_counts.as<int32_t>(), offsets, ptr<int32_t>(plan.slot_row),
        ptr<int32_t>(plan.row_slot));
    launch_check("plan_place_kernel");
  }
  plan.num_rows = capacity < 0 ? slots : -1;
  return plan;
}

void finish_dispatch_plan(DispatchPlan& plan) {
  const Tensor summary = plan.pending->wait();
  plan.pending.reset();
  const int num_experts = plan.num_experts;
  const int64_t* host = summary.data<int64_t>();
  const int64_t slots = plan.num_tokens * plan.top_k;
  SY_CHECK(host[num_experts + 1] == 0)
      << "make_dispatch_plan: " << host[num_experts + 1] << " of " << slots
      << " expert indices are outside [0, " << num_experts << ")";
  plan.expert_offsets.assign(host, host + num_experts + 1);
  plan.expert_counts.resize(num_experts);
  for (int e = 0; e < num_experts; ++e) {
    plan.expert_counts[e] = plan.expert_offsets[e + 1] - plan.expert_offsets[e];
  }
  plan.num_rows = plan.expert_offsets[num_experts];
  plan.row_slot = plan.row_slot.rows(0, plan.num_rows);
}

void permute_forward(const Tensor& out, const Tensor& x, const DispatchPlan& plan) {
  const int64_t d = x.dim(1);
  if (plan.num_rows == 0 || d == 0) return;
  use_device(x);
  dispatch_float(x.dtype(), "permute x", [&](auto tag) {
    using T = decltype(tag);
    if (vectorizable<T>(d, {out.raw(), x.raw()})) {
      permute_forward_vec_kernel<T>
          <<<vec_row_grid(plan.num_rows), 32 * kVecRowWarps, 0, stream()>>>(
              ptr<T>(out), ptr<T>(x), ptr<int32_t>(plan.row_slot), plan.num_rows, d, plan.top_k);
      launch_check("permute_forward_vec_kernel");
      return;
    }
    permute_forward_kernel<T><<<row_grid(plan.num_rows), row_threads(d), 0, stream()>>>(
        ptr<T>(out), ptr<T>(x), ptr<int32_t>(plan.row_slot), plan.num_rows, d, plan.top_k);
    launch_check("permute_forward_kernel");
  });
}

void permute_backward(const Tensor& dx, const Tensor& dout, const DispatchPlan& plan) {
  const int64_t d = dx.dim(1);
  if (plan.num_tokens == 0 || d == 0) return;
  use_device(dx);
  dispatch_float(dx.dtype(), "permute dx", [&](auto tag) {
    using T = decltype(tag);
    if (vectorizable<T>(d, {dx.raw(), dout.raw()})) {
      permute_backward_vec_kernel<T>
          <<<vec_row_grid(plan.num_tokens), 32 * kVecRowWarps, 0, stream()>>>(
              ptr<T>(dx), ptr<T>(dout), ptr<int32_t>(plan.slot_row), plan.num_tokens, d,
              plan.top_k);
      launch_check("permute_backward_vec_kernel");
      return;
    }
    permute_backward_kernel<T><<<row_grid(plan.num_tokens), row_threads(d), 0, stream()>>>(
        ptr<T>(dx), ptr<T>(dout), ptr<int32_t>(plan.slot_row), plan.num_tokens, d, plan.top_k);
    launch_check("permute_backward_kernel");
  });
}

void unpermute_forward(const Tensor& out, const Tensor& y, const Tensor& weights,
                       const DispatchPlan& plan) {
  check_dtype(weights, DType::kF32, "unpermute weights");
  const int64_t d = y.dim(1);
  if (plan.num_tokens == 0 || d == 0) return;
  use_device(y);
  dispatch_float(y.dtype(), "unpermute y", [&](auto tag) {
    using T = decltype(tag);
    if (vectorizable<T>(d, {out.raw(), y.raw()})) {
      unpermute_forward_vec_kernel<T>
          <<<vec_row_grid(plan.num_tokens), 32 * kVecRowWarps, 0, stream()>>>(
              ptr<T>(out), ptr<T>(y), ptr<float>(weights), ptr<int32_t>(plan.slot_row),
              plan.num_tokens, d, plan.top_k);
      launch_check("unpermute_forward_vec_kernel");
      return;
    }
    unpermute_forward_kernel<T><<<row_grid(plan.num_tokens), row_threads(d), 0, stream()>>>(
        ptr<T>(out), ptr<T>(y), ptr<float>(weights), ptr<int32_t>(plan.slot_row), plan.num_tokens,
        d, plan.top_k);
    launch_check("unpermute_forward_kernel");
  });
}

void unpermute_backward(const Tensor& dy, const Tensor& dweights, const Tensor& dout,
                        const Tensor& y, const Tensor& weights, const DispatchPlan& plan) {
  check_dtype(weights, DType::kF32, "unpermute weights");
  check_dtype(dweights, DType::kF32, "unpermute dweights");
  const int64_t slots = plan.num_tokens * plan.top_k;
  if (slots == 0) return;
  use_device(y);
  dispatch_float(y.dtype(), "unpermute y", [&](auto tag) {
    using T = decltype(tag);
    const int64_t d = y.dim(1);
    if (vectorizable<T>(d, {dy.raw(), dout.raw(), y.raw()})) {
      unpermute_backward_vec_kernel<T><<<vec_row_grid(slots), 32 * kVecRowWarps, 0, stream()>>>(
          ptr<T>(dy), ptr<float>(dweights), ptr<T>(dout), ptr<T>(y), ptr<float>(weights),
          ptr<int32_t>(plan.slot_row), slots, d, plan.top_k);
      launch_check("unpermute_backward_vec_kernel");
      return;
    }
    const int64_t blocks = std::min<int64_t>((slots + kSlotWarps - 1) / kSlotWarps, kMaxRowBlocks);
    unpermute_backward_kernel<T><<<static_cast<unsigned>(blocks), 32 * kSlotWarps, 0, stream()>>>(
        ptr<T>(dy), ptr<float>(dweights), ptr<T>(dout), ptr<T>(y), ptr<float>(weights),
        ptr<int32_t>(plan.slot_row), slots, y.dim(1), plan.top_k);
    launch_check("unpermute_backward_kernel");
  });
}

}  // namespace sy::cuda
