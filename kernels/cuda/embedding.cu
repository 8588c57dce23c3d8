// Embedding lookup on the GPU: out[n, :] = table[ids[n], :] (table and out each f32 or
// bf16), and its backward dtable[ids[n], :] += dout[n, :] into an f32 parameter gradient.
// The backward is deterministic: a stable radix sort groups the token positions by id, and
// each id's rows are added in increasing position order, in pieces of kChunk slots (see
// below), so results are bitwise stable run to run (and agree with the CPU loop up to f32
// regrouping). An id outside
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

// One block per row (a row-stride loop past the grid), four elements a thread: the id is read
// and checked once per thread and row, not once per element, and no division per element.
template <typename TOut, typename TTable>
__global__ void embedding_forward_vec_kernel(TOut* out, const int32_t* ids, const TTable* table,
                                             int64_t n, int64_t d, int64_t vocab) {
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const int32_t id = ids[row];
    check_id(id, vocab, row);
    const TTable* src = table + static_cast<int64_t>(id) * d;
    TOut* dst = out + row * d;
    for (int64_t c = 4 * static_cast<int64_t>(threadIdx.x); c < d; c += 4 * blockDim.x)
      store4(dst + c, load4(src + c));
  }
}

__global__ void iota_kernel(int32_t* p, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    p[i] = static_cast<int32_t>(i);
  }
}

// Backward in two deterministic passes over the id-sorted slots, so that one very frequent
// id (a space, "the", or the few symbols of the arithmetic task) is not one block's serial
// walk over thousands of rows:
//   1. a block owns a chunk of kChunk consecutive sorted slots and sums each run of equal ids
//      inside it (in slot order) into partial[first slot of that run piece];
//   2. a block per id run adds its pieces (one per chunk it touches, in order) to the row.
constexpr int64_t kChunk = 32;

template <typename T>
__global__ void embedding_partial_kernel(float* partial, const T* dout, const int32_t* sorted_ids,
                                         const int32_t* sorted_pos, int64_t n, int64_t d) {
  for (int64_t chunk = blockIdx.x; chunk * kChunk < n; chunk += gridDim.x) {
    const int64_t begin = chunk * kChunk, end = std::min(n, begin + kChunk);
    for (int64_t col = threadIdx.x; col < d; col += blockDim.x) {
      float acc = 0.0f;
      int64_t piece = begin;
      for (int64_t s = begin; s < end; ++s) {
        if (s > begin && sorted_ids[s] != sorted_ids[s - 1]) {
          partial[piece * d + col] = acc;
          acc = 0.0f;
          piece = s;
        }
        acc += to_f32(dout[static_cast<int64_t>(sorted_pos[s]) * d + col]);
      }
      partial[piece * d + col] = acc;
    }
  }
}

__global__ void embedding_backward_kernel(float* dtable, const float* partial,
                                          const int32_t* sorted_ids, const int32_t* sorted_pos,
                                          int64_t n, int64_t d, int64_t vocab) {
  for (int64_t slot = blockIdx.x; slot < n; slot += gridDim.x) {
    const int32_t id = sorted_ids[slot];
    if (slot > 0 && sorted_ids[slot - 1] == id) continue;
    check_id(id, vocab, sorted_pos[slot]);
    int64_t end = slot + 1;
    while (end < n && sorted_ids[end] == id) ++end;
    float* row = dtable + static_cast<int64_t>(id) * d;
    for (int64_t col = threadIdx.x; col < d; col += blockDim.x) {
      float acc = row[col];
      // Pieces start at the run's first slot and at every chunk boundary inside the run.
      for (int64_t s = slot; s < end; s = (s / kChunk + 1) * kChunk) acc += partial[s * d + col];
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
      // Rows of whole groups of four with every group aligned for its vector access.
      if (d % 4 == 0 && aligned(out.raw(), 4 * sizeof(TOut)) &&
          aligned(table.raw(), 4 * sizeof(TTable))) {
        const int threads = static_cast<int>(std::min<int64_t>(kThreads, (d / 4 + 31) / 32 * 32));
        embedding_forward_vec_kernel<TOut, TTable><<<row_grid(n), threads, 0, stream()>>>(
            ptr<TOut>(out), ptr<int32_t>(ids), ptr<TTable>(table), n, d, vocab);
        launch_check("embedding_forward_vec_kernel");
        return;
      }
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
  Scratch partial(static_cast<size_t>(n) * d * sizeof(float));
  dispatch_float(dout.dtype(), "embedding dout", [&](auto tag) {
    using T = decltype(tag);
    embedding_partial_kernel<T><<<row_grid((n + kChunk - 1) / kChunk), threads, 0, stream()>>>(
        partial.as<float>(), ptr<T>(dout), sorted_ids.as<int32_t>(), sorted_pos.as<int32_t>(), n,
        d);
    launch_check("embedding_partial_kernel");
  });
  embedding_backward_kernel<<<row_grid(n), threads, 0, stream()>>>(
      ptr<float>(dtable), partial.as<float>(), sorted_ids.as<int32_t>(), sorted_pos.as<int32_t>(),
      n, d, vocab);
  launch_check("embedding_backward_kernel");
}

}  // namespace sy::cuda
