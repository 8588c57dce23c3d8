// Embedding lookup on the GPU: out[n, :] = table[ids[n], :] (table and out each f32 or
// bf16), and its backward dtable[ids[n], :] += dout[n, :] into an f32 parameter gradient.
// The backward is deterministic: a stable radix sort groups the token positions by id, and
// one block per distinct id adds that id's rows in increasing position order, the same
// summation order as the CPU loop (so f32 results match it exactly). An id outside
// [0, V) is a programming error: the kernel prints it and traps.
#include <bit>
#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/common.cuh"
#include "kernels/embedding.h"

namespace sy::cuda {
namespace {

__device__ void check_id(int32_t id, int64_t vocab, int64_t n) {
  if (id < 0 || id >= vocab) {
    printf("embedding: token id %d at position %lld outside vocab %lld\n", id,
           static_cast<long long>(n), static_cast<long long>(vocab));
    __trap();
  }
}

template <typename TOut, typename TTable>
__global__ void embedding_forward_kernel(TOut* out, const int32_t* ids, const TTable* table,
                                         int64_t n, int64_t d, int64_t vocab) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n * d;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / d, col = i % d;
    const int32_t id = ids[row];
    check_id(id, vocab, row);
    out[i] = from_f32<TOut>(to_f32(table[static_cast<int64_t>(id) * d + col]));
  }
}

__global__ void iota_kernel(int32_t* p, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    p[i] = static_cast<int32_t>(i);
  }
}

// Block b starts at sorted slot b; it works only when the slot opens a run of equal ids,
// and then adds all the run's rows (positions ascending) to that id's gradient row.
template <typename T>
__global__ void embedding_backward_kernel(float* dtable, const T* dout, const int32_t* sorted_ids,
                                          const int32_t* sorted_pos, int64_t n, int64_t d,
                                          int64_t vocab) {
  for (int64_t slot = blockIdx.x; slot < n; slot += gridDim.x) {
    const int32_t id = sorted_ids[slot];
    if (slot > 0 && sorted_ids[slot - 1] == id) continue;
    check_id(id, vocab, sorted_pos[slot]);
    int64_t end = slot + 1;
    while (end < n && sorted_ids[end] == id) ++end;
    float* row = dtable + static_cast<int64_t>(id) * d;
    for (int64_t col = threadIdx.x; col < d; col += blockDim.x) {
      float acc = row[col];
      for (int64_t s = slot; s < end; ++s) acc += to_f32(dout[sorted_pos[s] * d + col]);
      row[col] = acc;
    }
  }
}

}  // namespace

void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table) {
  const int64_t n = ids.numel(), vocab = table.dim(0), d = table.dim(1);
  if (n == 0 || d == 0) return;
  use_device(out);
  dispatch_float(out.dtype(), "embedding out", [&](auto out_tag) {
    dispatch_float(table.dtype(), "embedding table", [&](auto table_tag) {
      using TOut = decltype(out_tag);
      using TTable = decltype(table_tag);
      embedding_forward_kernel<TOut, TTable><<<grid_for(n * d), kThreads, 0, stream()>>>(
          ptr<TOut>(out), ptr<int32_t>(ids), ptr<TTable>(table), n, d, vocab);
      launch_check("embedding_forward_kernel");
    });
  });
}

void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& ids) {
  const int64_t n = ids.numel(), vocab = dtable.dim(0), d = dtable.dim(1);
  if (n == 0 || d == 0) return;
  SY_CHECK(n <= INT32_MAX) << "embedding_backward over " << n << " tokens (positions are i32)";
  use_device(dtable);
  // Ids in [0, vocab) fit in this many bits; anything else is caught after the sort.
  const int end_bit = std::min(32, static_cast<int>(std::bit_width(static_cast<uint64_t>(vocab))));
  Scratch positions(n * sizeof(int32_t)), sorted_ids(n * sizeof(int32_t)),
      sorted_pos(n * sizeof(int32_t));
  iota_kernel<<<grid_for(n), kThreads, 0, stream()>>>(positions.as<int32_t>(), n);
  launch_check("iota_kernel");
  size_t temp_bytes = 0;
  SY_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, ptr<int32_t>(ids),
                                                sorted_ids.as<int32_t>(), positions.as<int32_t>(),
                                                sorted_pos.as<int32_t>(), n, 0, end_bit, stream()));
  Scratch temp(temp_bytes);
  SY_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.as<void>(), temp_bytes, ptr<int32_t>(ids),
                                                sorted_ids.as<int32_t>(), positions.as<int32_t>(),
                                                sorted_pos.as<int32_t>(), n, 0, end_bit, stream()));
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, (d + 31) / 32 * 32));
  dispatch_float(dout.dtype(), "embedding dout", [&](auto tag) {
    using T = decltype(tag);
    embedding_backward_kernel<T><<<row_grid(n), threads, 0, stream()>>>(
        ptr<float>(dtable), ptr<T>(dout), sorted_ids.as<int32_t>(), sorted_pos.as<int32_t>(), n, d,
        vocab);
    launch_check("embedding_backward_kernel");
  });
}

}  // namespace sy::cuda
