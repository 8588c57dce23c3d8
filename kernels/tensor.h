#pragma once
// Tensor: a shape, a dtype and a device over contiguous storage. A view (rows(), view())
// shares the storage of its base; a copy is only ever explicit (clone(), to()).
// CUDA memory comes from a cache of freed blocks (kernels/block_cache.h) in front of the
// stream-ordered allocator (cudaMallocAsync pools).
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "kernels/check.h"

namespace sy {

enum class DType : uint8_t { kF32, kBF16, kI32, kI64 };
size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);

enum class DeviceType : uint8_t { kCpu, kCuda };
struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = 0;
  static Device cpu() { return {DeviceType::kCpu, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::kCuda, index}; }
  bool is_cpu() const { return type == DeviceType::kCpu; }
  bool is_cuda() const { return type == DeviceType::kCuda; }
  std::string str() const;
  bool operator==(const Device&) const = default;
};

// True when this build has CUDA and at least one GPU is visible.
bool cuda_available();

// Bytes of tensor storage on a GPU, in allocated block sizes: in use now, the most ever in
// use at once (a run's peak activation + weight + optimizer memory; cuBLASLt's workspaces
// and the CUDA context are outside), and the freed blocks the allocator keeps for reuse.
// All zero for the CPU.
struct MemoryStats {
  int64_t in_use = 0;
  int64_t peak_in_use = 0;
  int64_t cached = 0;
};
MemoryStats memory_stats(Device device);

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& shape);

class Storage;

class Tensor {
 public:
  Tensor() = default;  // undefined: holds nothing
  static Tensor empty(Shape shape, DType dtype = DType::kF32, Device device = Device::cpu());
  static Tensor zeros(Shape shape, DType dtype = DType::kF32, Device device = Device::cpu());
  static Tensor from_f32(const std::vector<float>& values, Shape shape);
  static Tensor from_i32(const std::vector<int32_t>& values, Shape shape);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

  void* raw() const;
  template <typename T>
  T* data() const;

  // A view of rows [begin, end) along dim 0, sharing storage.
  Tensor rows(int64_t begin, int64_t end) const;
  // A view with a new shape of the same element count, sharing storage.
  Tensor view(Shape shape) const;
  Tensor clone() const;
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;  // CPU only: f32 <-> bf16 with round-to-nearest-even

  void zero_() const;
  void fill_(float value) const;  // f32 only
  // Same shape and dtype, any devices. Within one GPU the copy is queued on the ops' stream
  // like any op. Host to GPU: up to kStagedUploadBytes go through pinned memory and are
  // queued the same way (the source may be reused at once; nothing waits for the GPU); more
  // has completed when this returns, as has a copy to the host or between two GPUs.
  void copy_from(const Tensor& src) const;

  std::vector<float> to_f32_vector() const;  // any float dtype, any device
  std::vector<int32_t> to_i32_vector() const;

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes into storage
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::kF32;
  Device device_;
};

// The largest host-to-GPU copy that is staged in pinned memory rather than waited for.
inline constexpr size_t kStagedUploadBytes = size_t{4} << 20;

// A copy of a tensor to the host that is queued now and collected later: on a GPU it goes on
// the ops' stream into pinned memory, and wait() blocks until that copy has landed, not until
// the whole queue has drained, so work queued after it keeps the GPU busy while the host
// waits. A CPU tensor is copied at once. Collect it on the thread that queued it.
class HostReadback {
 public:
  HostReadback();
  explicit HostReadback(const Tensor& src);
  HostReadback(HostReadback&&) noexcept;
  HostReadback& operator=(HostReadback&&) noexcept;
  ~HostReadback();
  // The copy (a CPU tensor of the source's shape and dtype); once only.
  Tensor wait();

 private:
  struct Staged;
  Tensor host_;
  Shape shape_;
  DType dtype_ = DType::kF32;
  bool collected_ = true;  // false from queueing until wait()
  std::unique_ptr<Staged> staged_;
};

// bf16 storage type, bit-compatible with __nv_bfloat16.
struct bf16 {
  uint16_t bits;
};
bf16 f32_to_bf16(float x);
float bf16_to_f32(bf16 x);

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::kF32;
}
template <>
constexpr DType dtype_of<bf16>() {
  return DType::kBF16;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::kI32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::kI64;
}

template <typename T>
T* Tensor::data() const {
  SY_CHECK(dtype_ == dtype_of<T>())
      << "tensor is " << dtype_name(dtype_) << ", asked for " << dtype_name(dtype_of<T>());
  return static_cast<T*>(raw());
}

// Argument checks shared by every op: device, dtype and shape agreement.
void check_shape(const Tensor& t, const Shape& expected, const char* what);
void check_dtype(const Tensor& t, DType expected, const char* what);
void check_same_device(std::initializer_list<const Tensor*> tensors, const char* op);

}  // namespace sy
