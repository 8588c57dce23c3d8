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
using cuda::kMaxDevices;

// Per device, made on first use and kept for the process: the side streams, one event for
// the fork and one per side stream for the join. Reusing an event is safe: a stream wait
// takes the event's most recent record at the time of the wait call, so recording it again
// for the next fork or join does not disturb the waits already queued.
struct DeviceStreams {
  std::array<cudaStream_t, kMaxWays> side{};
  cudaEvent_t fork = nullptr;
  std::array<cudaEvent_t, kMaxWays> join{};
};

DeviceStreams& device_streams(int device) {
  static std::mutex mutex;
  static std::array<DeviceStreams, kMaxDevices> all{};
  std::lock_guard<std::mutex> lock(mutex);
  DeviceStreams& d = all[device];
  if (!d.fork) {
    for (int i = 0; i < kMaxWays; ++i) {
      SY_CUDA_CHECK(cudaStreamCreateWithFlags(&d.side[i], cudaStreamNonBlocking));
      SY_CUDA_CHECK(cudaEventCreateWithFlags(&d.join[i], cudaEventDisableTiming));
    }
    SY_CUDA_CHECK(cudaEventCreateWithFlags(&d.fork, cudaEventDisableTiming));
  }
  return d;
}
}  // namespace

StreamFanout::StreamFanout(Device device, int ways) {
  if (!device.is_cuda() || ways <= 1) return;
  SY_CHECK(device.index < kMaxDevices) << "device " << device.index;
  SY_CHECK(cuda::t_side_stream == nullptr) << "StreamFanout inside another StreamFanout";
  device_ = device.index;
  ways_ = std::min(ways, kMaxWays);
  cuda::set_device(device_);
  DeviceStreams& d = device_streams(device_);
  // Fork: every side stream waits for the work queued so far on the thread's stream.
  SY_CUDA_CHECK(cudaEventRecord(d.fork, cudaStreamPerThread));
  for (int i = 0; i < ways_; ++i) SY_CUDA_CHECK(cudaStreamWaitEvent(d.side[i], d.fork, 0));
}

void StreamFanout::select(int piece) {
  if (device_ < 0) return;
  cuda::t_side_stream = device_streams(device_).side[piece % ways_];
}

StreamFanout::~StreamFanout() {
  if (device_ < 0) return;
  cuda::t_side_stream = nullptr;
  // Join: the thread's stream waits for everything queued on each side stream.
  DeviceStreams& d = device_streams(device_);
  for (int i = 0; i < ways_; ++i) {
    SY_CUDA_CHECK(cudaEventRecord(d.join[i], d.side[i]));
    SY_CUDA_CHECK(cudaStreamWaitEvent(cudaStreamPerThread, d.join[i], 0));
  }
}
#else
StreamFanout::StreamFanout(Device, int) {}
StreamFanout::~StreamFanout() = default;
void StreamFanout::select(int) {}
#endif

}  // namespace sy
