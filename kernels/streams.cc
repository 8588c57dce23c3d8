#include "kernels/streams.h"

#include <algorithm>

#ifdef SWITCHYARD_HAVE_CUDA
#include <array>
#include <mutex>
#include <vector>

#include "kernels/cuda/stream_state.h"
#endif

namespace sy {

#ifdef SWITCHYARD_HAVE_CUDA
namespace {
constexpr int kMaxWays = 8;
constexpr int kMaxDevices = 64;

// Side streams per device, made on first use and kept for the process.
cudaStream_t side_stream(int device, int i) {
  static std::mutex mutex;
  static std::array<std::array<cudaStream_t, kMaxWays>, kMaxDevices> streams{};
  std::lock_guard<std::mutex> lock(mutex);
  cudaStream_t& s = streams[device][i];
  if (!s) SY_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}

// Records an event on `from` and makes `to` wait for it.
void order(cudaStream_t from, cudaStream_t to) {
  cudaEvent_t event;
  SY_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  SY_CUDA_CHECK(cudaEventRecord(event, from));
  SY_CUDA_CHECK(cudaStreamWaitEvent(to, event, 0));
  SY_CUDA_CHECK(cudaEventDestroy(event));  // released once the wait has consumed it
}
}  // namespace

StreamFanout::StreamFanout(Device device, int ways) {
  if (!device.is_cuda() || ways <= 1) return;
  SY_CHECK(device.index < kMaxDevices) << "device " << device.index;
  SY_CHECK(cuda::t_side_stream == nullptr) << "StreamFanout inside another StreamFanout";
  device_ = device.index;
  ways_ = std::min(ways, kMaxWays);
  SY_CUDA_CHECK(cudaSetDevice(device_));
  for (int i = 0; i < ways_; ++i) order(cudaStreamPerThread, side_stream(device_, i));
}

void StreamFanout::select(int piece) {
  if (device_ < 0) return;
  cuda::t_side_stream = side_stream(device_, piece % ways_);
}

StreamFanout::~StreamFanout() {
  if (device_ < 0) return;
  cuda::t_side_stream = nullptr;
  for (int i = 0; i < ways_; ++i) order(side_stream(device_, i), cudaStreamPerThread);
}
#else
StreamFanout::StreamFanout(Device, int) {}
StreamFanout::~StreamFanout() = default;
void StreamFanout::select(int) {}
#endif

}  // namespace sy
