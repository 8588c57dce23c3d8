#include "kernels/tensor.h"

#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <new>
#include <sstream>
#include <string>

#include "kernels/graph.h"
#include "kernels/profile.h"

#ifdef SWITCHYARD_HAVE_CUDA
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/block_cache.h"
#include "kernels/cuda/pinned_block.h"
#include "kernels/cuda/stream_state.h"
#endif

namespace sy {
namespace {
// A failed allocation is the user's sizes meeting the machine, not a bug: it is thrown, as
// std::bad_alloc so every handler of that sees it, with a message that says how much and
// what to lower. The command line's last catch prints it as one line and exits 1.
class OutOfMemory : public std::bad_alloc {
 public:
  explicit OutOfMemory(std::string what) : what_(std::move(what)) {}
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  std::string what_;
};

[[noreturn]] void throw_out_of_memory(std::string what) { throw OutOfMemory(std::move(what)); }
}  // namespace

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
      return 2;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kI32:
      return "i32";
    case DType::kI64:
      return "i64";
  }
  return "?";
}

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

bool cuda_available() {
#ifdef SWITCHYARD_HAVE_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return count > 0;
#else
  return false;
#endif
}

std::string shape_str(const Shape& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

#ifdef SWITCHYARD_HAVE_CUDA
using detail::GraphPool;
namespace {
// The stream-ordered pool's release threshold defaults to 0: every synchronisation hands
// the pool's free memory back to the driver, and the next allocations map it again (a MoE
// layer synchronises twice per step, so a step paid that many times over). Keep what the
// pool has grown to for the process, as a caching allocator does.
void keep_pool_memory(int device) {
  using cuda::kMaxDevices;
  static std::array<std::atomic<bool>, kMaxDevices> done{};
  SY_CHECK(device >= 0 && device < kMaxDevices) << "device " << device;
  if (done[device].load(std::memory_order_acquire)) return;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  if (done[device].load(std::memory_order_relaxed)) return;
  cudaMemPool_t pool;
  SY_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t keep = UINT64_MAX;
  SY_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  done[device].store(true, std::memory_order_release);
}

// Per device: the cache of freed blocks and the bytes in use, behind one mutex (tensors may
// be dropped on any thread). The cached bytes are the cache's own count.
struct DeviceBlocks {
  std::mutex mutex;
  BlockCache cache;
  std::map<void*, GraphPool*> graph_owned;  // blocks that captured graphs hold
  int64_t in_use = 0, peak_in_use = 0;
  void count(int64_t in_use_change) {  // with the mutex held
    in_use += in_use_change;
    peak_in_use = std::max(peak_in_use, in_use);
  }
};

}  // namespace

namespace detail {
// The memory of a captured CUDA graph (kernels/graph.h). While a capture runs on this thread
// (t_graph_pool), allocations on its device come from the pool's blocks and stay with it: a
// replay writes the captured addresses again, so no tensor outside the graph may be given
// them. Blocks the capture drops go to the pool's free list, reusable by the same capture's
// later allocations (the graph keeps the capture's stream order). A block a tensor still holds
// when the graph goes is released to the general cache when that tensor drops it.
struct GraphPool {
  int device = 0;
  BlockCache free;
  struct Block {
    size_t bytes = 0;
    bool live = false;  // a tensor holds it
  };
  std::map<void*, Block> blocks;
};
}  // namespace detail

namespace {
thread_local GraphPool* t_graph_pool = nullptr;

DeviceBlocks& device_blocks(int device) {
  static std::array<DeviceBlocks, cuda::kMaxDevices> all;
  SY_CHECK(device >= 0 && device < cuda::kMaxDevices) << "device " << device;
  return all[device];
}

// A block for the capturing graph's pool: one it dropped earlier in the capture, else one
// from the general cache or CUDA's pool, which then belongs to the graph. The pool's memory
// comes from a stream that is not capturing (a cudaMallocAsync on the capturing stream would
// become a node of the graph), made ready before the capture goes on.
void* graph_alloc(DeviceBlocks& blocks, GraphPool& pool, size_t want, size_t* block_bytes) {
  std::unique_lock<std::mutex> lock(blocks.mutex);
  auto [block, size] = pool.free.take(want);
  if (block == nullptr) std::tie(block, size) = blocks.cache.take(want);
  if (block == nullptr) {
    lock.unlock();
    cuda::set_device(pool.device);
    keep_pool_memory(pool.device);
    static std::array<cudaStream_t, cuda::kMaxDevices> side{};
    static std::mutex side_mutex;
    cudaStream_t stream;
    {
      std::lock_guard<std::mutex> side_lock(side_mutex);
      if (side[pool.device] == nullptr) {
        SY_CUDA_CHECK(cudaStreamCreateWithFlags(&side[pool.device], cudaStreamNonBlocking));
      }
      stream = side[pool.device];
    }
    const cudaError_t err = cudaMallocAsync(&block, want, stream);
    if (err != cudaSuccess) {
      cudaGetLastError();
      std::ostringstream what;
      what << "cannot allocate " << want / double(1 << 20) << " MiB on cuda:" << pool.device
           << " for a captured CUDA graph: " << cudaGetErrorString(err)
           << ". Lower the rollout batch (the engine's max_rows).";
      throw_out_of_memory(what.str());
    }
    SY_CUDA_CHECK(cudaStreamSynchronize(stream));
    size = want;
    lock.lock();
  }
  pool.blocks[block] = {.bytes = size, .live = true};
  blocks.graph_owned[block] = &pool;
  blocks.count(static_cast<int64_t>(size));
  *block_bytes = size;
  return block;
}

// A block of at least `bytes` on `device`, usable by work queued on the per-thread stream
// from now on; *block_bytes gets its size (give it back to gpu_free).
void* gpu_alloc(int device, size_t bytes, size_t* block_bytes) {
  const size_t want = allocation_size(bytes);
  DeviceBlocks& blocks = device_blocks(device);
  if (t_graph_pool != nullptr && t_graph_pool->device == device) {
    return graph_alloc(blocks, *t_graph_pool, want, block_bytes);
  }
  {
    std::lock_guard<std::mutex> lock(blocks.mutex);
    auto [block, size] = blocks.cache.take(want);
    if (block) {
      *block_bytes = size;
      blocks.count(static_cast<int64_t>(size));
      return block;
    }
  }
  cuda::set_device(device);
  keep_pool_memory(device);
  void* block = nullptr;
  cudaError_t err;
  {
    profile::HostTimer timer("cudaMallocAsync (a size the block cache did not hold)");
    err = cudaMallocAsync(&block, want, cudaStreamPerThread);
  }
  if (err == cudaErrorMemoryAllocation) {
    // The cache's idle blocks may be what the pool lacks: give them back and try again.
    cudaGetLastError();
    std::vector<std::pair<void*, size_t>> idle;
    {
      std::lock_guard<std::mutex> lock(blocks.mutex);
      idle = blocks.cache.drain();
    }
    for (const auto& [p, size] : idle) SY_CUDA_CHECK(cudaFreeAsync(p, cudaStreamPerThread));
    err = cudaMallocAsync(&block, want, cudaStreamPerThread);
  }
  if (err != cudaSuccess) {
    cudaGetLastError();
    int64_t in_use = 0;
    {
      std::lock_guard<std::mutex> lock(blocks.mutex);
      in_use = blocks.in_use;
    }
    std::ostringstream what;
    what << "cannot allocate " << want / double(1 << 20) << " MiB on cuda:" << device << " ("
         << in_use / double(1 << 30) << " GiB held by tensors): " << cudaGetErrorString(err)
         << ". Lower train.micro_batch or model.seq_len, or use more GPUs "
            "(parallel.expert_parallel_size).";
    throw_out_of_memory(what.str());
  }
  std::lock_guard<std::mutex> lock(blocks.mutex);
  *block_bytes = want;
  blocks.count(static_cast<int64_t>(want));
  return block;
}

void gpu_free(int device, void* block, size_t block_bytes) {
  DeviceBlocks& blocks = device_blocks(device);
  std::lock_guard<std::mutex> lock(blocks.mutex);
  if (auto owned = blocks.graph_owned.find(block); owned != blocks.graph_owned.end()) {
    GraphPool* pool = owned->second;
    pool->blocks[block].live = false;
    // Reusable within the capture that dropped it; after the capture it stays the graph's.
    if (pool == t_graph_pool) pool->free.put(block, block_bytes);
    blocks.count(-static_cast<int64_t>(block_bytes));
    return;
  }
  blocks.cache.put(block, block_bytes);
  blocks.count(-static_cast<int64_t>(block_bytes));
}
}  // namespace

namespace detail {
GraphPool* graph_pool_create(int device) {
  auto* pool = new GraphPool;
  pool->device = device;
  return pool;
}

void graph_pool_destroy(GraphPool* pool) {
  if (pool == nullptr) return;
  SY_CHECK(t_graph_pool != pool) << "a graph's memory released while its capture runs";
  DeviceBlocks& blocks = device_blocks(pool->device);
  {
    std::lock_guard<std::mutex> lock(blocks.mutex);
    for (const auto& [block, b] : pool->blocks) {
      blocks.graph_owned.erase(block);
      // A held block goes to the cache when its tensor drops it (gpu_free finds no owner).
      if (!b.live) blocks.cache.put(block, b.bytes);
    }
  }
  delete pool;
}

void graph_pool_enter(GraphPool* pool) {
  SY_CHECK(t_graph_pool == nullptr) << "captures do not nest";
  t_graph_pool = pool;
}

void graph_pool_exit() { t_graph_pool = nullptr; }

int64_t graph_pool_bytes(const GraphPool* pool) {
  DeviceBlocks& blocks = device_blocks(pool->device);
  std::lock_guard<std::mutex> lock(blocks.mutex);
  int64_t total = 0;
  for (const auto& [block, b] : pool->blocks) total += static_cast<int64_t>(b.bytes);
  return total;
}
}  // namespace detail
#endif

MemoryStats memory_stats(Device device) {
#ifdef SWITCHYARD_HAVE_CUDA
  if (device.is_cuda()) {
    DeviceBlocks& blocks = device_blocks(device.index);
    std::lock_guard<std::mutex> lock(blocks.mutex);
    return {.in_use = blocks.in_use,
            .peak_in_use = blocks.peak_in_use,
            .cached = static_cast<int64_t>(blocks.cache.cached_bytes())};
  }
#endif
  (void)device;
  return {};
}

class Storage {
 public:
  Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
    if (device.is_cpu()) {
      // 64-byte alignment keeps vector loads aligned; aligned_alloc needs a multiple size.
      size_t rounded = (bytes + 63) / 64 * 64;
      ptr_ = rounded ? std::aligned_alloc(64, rounded) : nullptr;
      if (rounded != 0 && ptr_ == nullptr) {
        std::ostringstream what;
        what << "out of host memory allocating " << std::fixed << std::setprecision(1)
             << bytes / double(int64_t{1} << 30)
             << " GiB for one tensor; lower the model's sizes (model.d_model, vocab_size, "
                "dense_ffn_hidden, moe.expert_hidden) or train.micro_batch";
        throw_out_of_memory(what.str());
      }
    } else {
#ifdef SWITCHYARD_HAVE_CUDA
      if (bytes) ptr_ = gpu_alloc(device.index, bytes, &block_bytes_);
#else
      SY_CHECK(false) << "this build has no CUDA; cannot allocate on " << device.str();
#endif
    }
  }
  ~Storage() {
    if (!ptr_) return;
    if (device_.is_cpu()) {
      std::free(ptr_);
    } else {
#ifdef SWITCHYARD_HAVE_CUDA
      gpu_free(device_.index, ptr_, block_bytes_);
#endif
    }
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* ptr() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_;
  size_t block_bytes_ = 0;  // a GPU block's allocated size (bytes_ rounded up)
  Device device_;
};

namespace {

int64_t count(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    SY_CHECK(d >= 0) << "negative dimension in shape " << shape_str(shape);
    n *= d;
  }
  return n;
}

#ifdef SWITCHYARD_HAVE_CUDA
using cuda::PinnedBlock;

// This thread's staging for uploads to `device`: a ring of blocks, each reused after the
// ring has gone round (its copy is then long done; if not, the reuse waits for it).
PinnedBlock& next_upload_block(int device) {
  constexpr size_t kRing = 16;
  struct Ring {
    std::array<PinnedBlock, kRing> blocks;
    size_t next = 0;
  };
  thread_local std::map<int, Ring> rings;
  Ring& ring = rings[device];
  return ring.blocks[ring.next++ % kRing];
}

// This thread's spare blocks for readbacks to the host from `device`.
std::vector<std::unique_ptr<PinnedBlock>>& readback_blocks(int device) {
  thread_local std::map<int, std::vector<std::unique_ptr<PinnedBlock>>> spare;
  return spare[device];
}
#endif

void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  if (bytes == 0) return;
  if (dst_dev.is_cpu() && src_dev.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef SWITCHYARD_HAVE_CUDA
  SY_CHECK(!(dst_dev.is_cpu() || src_dev.is_cpu()) || !cuda::capturing())
      << "a copy between host and GPU (" << bytes << " bytes, " << src_dev.str() << " -> "
      << dst_dev.str() << ") inside a captured CUDA graph: a captured step must keep its data "
         "on the device (kernels/graph.h)";
  if (dst_dev.is_cuda() && src_dev.is_cpu() && bytes <= kStagedUploadBytes) {
    // Through pinned memory, ordered on the destination's stream like an op: the GPU keeps
    // running what is queued (token ids, the balancing gradient, parameter updates).
    profile::HostTimer timer("copy to the GPU (staged, no wait)");
    cuda::set_device(dst_dev.index);
    const cudaStream_t stream = cuda::stream();
    PinnedBlock& block = next_upload_block(dst_dev.index);
    block.prepare(bytes);
    std::memcpy(block.host, src, bytes);
    SY_CUDA_CHECK(cudaMemcpyAsync(dst, block.host, bytes, cudaMemcpyHostToDevice, stream));
    block.record(stream);
    return;
  }
  // On the ops' stream (a StreamFanout piece's copy is ordered with that piece's work).
  const cudaStream_t stream = cuda::stream();
  if (dst_dev.is_cuda() && dst_dev == src_dev) {
    // Within one GPU: stream-ordered like any op; nothing on the host waits for it.
    SY_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream));
    return;
  }
  // A host side (the host reads the result, or may free or reuse its buffer, on return) or
  // two GPUs (ordered by the wait, not by one stream). Each of these waits for all the work
  // queued before it: a profiled step counts them as its host waits.
  profile::HostTimer timer(dst_dev.is_cpu() ? "copy to host (waits for the GPU)"
                                            : "copy to the GPU (waits for the GPU)");
  SY_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream));
  SY_CUDA_CHECK(cudaStreamSynchronize(stream));
#else
  SY_CHECK(false) << "this build has no CUDA";
#endif
}

}  // namespace

Tensor Tensor::empty(Shape shape, DType dtype, Device device) {
  Tensor t;
  t.numel_ = count(shape);
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::make_shared<Storage>(t.nbytes(), device);
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device device) {
  Tensor t = empty(std::move(shape), dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::from_f32(const std::vector<float>& values, Shape shape) {
  Tensor t = empty(std::move(shape), DType::kF32);
  SY_CHECK(static_cast<int64_t>(values.size()) == t.numel())
      << values.size() << " values for shape " << shape_str(t.shape());
  std::memcpy(t.raw(), values.data(), t.nbytes());
  return t;
}

Tensor Tensor::from_i32(const std::vector<int32_t>& values, Shape shape) {
  Tensor t = empty(std::move(shape), DType::kI32);
  SY_CHECK(static_cast<int64_t>(values.size()) == t.numel())
      << values.size() << " values for shape " << shape_str(t.shape());
  std::memcpy(t.raw(), values.data(), t.nbytes());
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  if (i < 0) i += n;
  SY_CHECK(i >= 0 && i < n) << "dim " << i << " of a tensor with shape " << shape_str(shape_);
  return shape_[i];
}

void* Tensor::raw() const {
  SY_CHECK(defined()) << "use of an undefined tensor";
  return static_cast<char*>(storage_->ptr()) + offset_;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  SY_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0])
      << "rows [" << begin << ", " << end << ") of shape " << shape_str(shape_);
  Tensor t = *this;
  int64_t row = shape_[0] ? numel_ / shape_[0] : 0;
  t.offset_ += static_cast<size_t>(begin * row) * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  t.numel_ = (end - begin) * row;
  return t;
}

Tensor Tensor::view(Shape shape) const {
  SY_CHECK(count(shape) == numel_)
      << "view " << shape_str(shape) << " of shape " << shape_str(shape_);
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device_);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(Device device) const {
  if (device == device_) return *this;
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  SY_CHECK(device_.is_cpu()) << "dtype conversion of a " << device_.str() << " tensor";
  Tensor t = empty(shape_, dtype, device_);
  if (dtype_ == DType::kF32 && dtype == DType::kBF16) {
    const float* s = data<float>();
    bf16* d = t.data<bf16>();
    for (int64_t i = 0; i < numel_; ++i) d[i] = f32_to_bf16(s[i]);
  } else if (dtype_ == DType::kBF16 && dtype == DType::kF32) {
    const bf16* s = data<bf16>();
    float* d = t.data<float>();
    for (int64_t i = 0; i < numel_; ++i) d[i] = bf16_to_f32(s[i]);
  } else if (dtype_ == DType::kI32 && dtype == DType::kI64) {
    const int32_t* s = data<int32_t>();
    int64_t* d = t.data<int64_t>();
    for (int64_t i = 0; i < numel_; ++i) d[i] = s[i];
  } else {
    SY_CHECK(false) << "no conversion " << dtype_name(dtype_) << " -> " << dtype_name(dtype);
  }
  return t;
}

void Tensor::zero_() const {
  if (!numel_) return;
  if (device_.is_cpu()) {
    std::memset(raw(), 0, nbytes());
  } else {
#ifdef SWITCHYARD_HAVE_CUDA
    cuda::set_device(device_.index);  // its stream: a StreamFanout piece's own, like any op
    SY_CUDA_CHECK(cudaMemsetAsync(raw(), 0, nbytes(), cuda::stream()));
#endif
  }
}

void Tensor::fill_(float value) const {
  SY_CHECK(device_.is_cpu()) << "fill_ on " << device_.str();
  float* p = data<float>();
  for (int64_t i = 0; i < numel_; ++i) p[i] = value;
}

void Tensor::copy_from(const Tensor& src) const {
  SY_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_)
      << "copy " << shape_str(src.shape_) << " " << dtype_name(src.dtype_) << " into "
      << shape_str(shape_) << " " << dtype_name(dtype_);
  copy_bytes(raw(), device_, src.raw(), src.device_, nbytes());
}

std::vector<float> Tensor::to_f32_vector() const {
  Tensor host = to(Device::cpu());
  if (dtype_ == DType::kBF16) host = host.to(DType::kF32);
  const float* p = host.data<float>();
  return std::vector<float>(p, p + numel_);
}

std::vector<int32_t> Tensor::to_i32_vector() const {
  Tensor host = to(Device::cpu());
  const int32_t* p = host.data<int32_t>();
  return std::vector<int32_t>(p, p + numel_);
}

// --- HostReadback ---------------------------------------------------------------------------

struct HostReadback::Staged {
#ifdef SWITCHYARD_HAVE_CUDA
  std::unique_ptr<PinnedBlock> block;
  int device = 0;
  size_t bytes = 0;
#endif
};

HostReadback::HostReadback(const Tensor& src)
    : shape_(src.shape()), dtype_(src.dtype()), collected_(false) {
  if (src.device().is_cpu()) {
    host_ = src.clone();
    return;
  }
#ifdef SWITCHYARD_HAVE_CUDA
  staged_ = std::make_unique<Staged>();
  staged_->device = src.device().index;
  staged_->bytes = src.nbytes();
  cuda::set_device(staged_->device);
  SY_CHECK(!cuda::capturing())
      << "a copy to the host (HostReadback of " << staged_->bytes
      << " bytes) inside a captured CUDA graph: a captured step must not read back to the host "
         "(kernels/graph.h)";
  auto& spare = readback_blocks(staged_->device);
  if (spare.empty()) {
    staged_->block = std::make_unique<PinnedBlock>();
  } else {
    staged_->block = std::move(spare.back());
    spare.pop_back();
  }
  staged_->block->prepare(staged_->bytes);
  if (staged_->bytes > 0) {
    SY_CUDA_CHECK(cudaMemcpyAsync(staged_->block->host, src.raw(), staged_->bytes,
                                  cudaMemcpyDeviceToHost, cuda::stream()));
  }
  staged_->block->record(cuda::stream());
#else
  SY_CHECK(false) << "this build has no CUDA";
#endif
}

HostReadback::HostReadback() = default;
HostReadback::HostReadback(HostReadback&&) noexcept = default;
HostReadback& HostReadback::operator=(HostReadback&&) noexcept = default;

HostReadback::~HostReadback() {
#ifdef SWITCHYARD_HAVE_CUDA
  // Never collected: the block goes back with its event (the next user waits on it).
  if (staged_ && staged_->block)
    readback_blocks(staged_->device).push_back(std::move(staged_->block));
#endif
}

Tensor HostReadback::wait() {
  SY_CHECK(!collected_) << "HostReadback collected twice (or never queued)";
  collected_ = true;
  if (!staged_) return std::move(host_);
#ifdef SWITCHYARD_HAVE_CUDA
  Tensor out = Tensor::empty(shape_, dtype_, Device::cpu());
  {
    profile::HostTimer timer("copy to host (waits for its copy only)");
    SY_CUDA_CHECK(cudaEventSynchronize(staged_->block->done));
  }
  staged_->block->recorded = false;
  if (staged_->bytes > 0) std::memcpy(out.raw(), staged_->block->host, staged_->bytes);
  readback_blocks(staged_->device).push_back(std::move(staged_->block));
  staged_.reset();
  return out;
#else
  SY_CHECK(false) << "this build has no CUDA";
  return Tensor();
#endif
}

bf16 f32_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};  // NaN
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>((u + rounding) >> 16)};
}

float bf16_to_f32(bf16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void check_shape(const Tensor& t, const Shape& expected, const char* what) {
  SY_CHECK(t.defined()) << what << " is undefined";
  SY_CHECK(t.shape() == expected) << what << " has shape " << shape_str(t.shape()) << ", expected "
                                  << shape_str(expected);
}

void check_dtype(const Tensor& t, DType expected, const char* what) {
  SY_CHECK(t.dtype() == expected) << what << " is " << dtype_name(t.dtype()) << ", expected "
                                  << dtype_name(expected);
}

void check_same_device(std::initializer_list<const Tensor*> tensors, const char* op) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (!t->defined()) continue;
    if (!first) {
      first = t;
      continue;
    }
    SY_CHECK(t->device() == first->device())
        << op << ": tensors on " << first->device().str() << " and " << t->device().str();
  }
}

}  // namespace sy
